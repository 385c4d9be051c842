"""Train stage: rasterize labels, compute band statistics, fit through Ray Train."""

from __future__ import annotations

import time

from geoseg import __version__
from geoseg.config import Job
from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.runtime import fit_model, ray_session
from geoseg.stages.paths import JobPaths
from geoseg.train.data import band_statistics

__all__ = ["run_train"]


def run_train(job: Job, *, address: str | None = None, log=print) -> dict:
    paths = JobPaths.of(job)
    spec = job.train
    started = time.perf_counter()
    scenes = [inspect_scene(pair.image, field=f"train.scenes[{i}].image", bands=job.bands)
              for i, pair in enumerate(spec.scenes)]
    pairs = []
    for i, (pair, scene) in enumerate(zip(spec.scenes, scenes)):
        labels = load_labels(pair.labels, scene=scene, classes=job.classes, field=spec.label_field,
                             source=f"train.scenes[{i}].labels")
        out = rasterize_labels(labels, scene, paths.train_labels(i))
        log(f"train: rasterized {len(labels)} label polygons of {pair.labels.name} onto {scene.width}x{scene.height} px")
        pairs.append((str(scene.path), str(out)))
    mean, std = band_statistics([s.path for s in scenes], scenes[0].bands)
    card = {
        "format": "geoseg-model-card/1",
        "geoseg_version": __version__,
        "arch": job.model.arch,
        "encoder": job.model.encoder,
        "options": dict(job.model.options),
        "classes": list(job.classes),
        "bands": list(scenes[0].bands),
        "dtype": scenes[0].dtype,
        "normalization": {"mean": mean, "std": std},
        "train_tile_size": spec.tile_size,
        "tile_size": job.tiling.tile_size,
        "halo": job.tiling.halo,
        "crs": scenes[0].crs.to_string(),
        "pixel_size": [abs(scenes[0].transform.a), abs(scenes[0].transform.e)],
    }
    config = {
        "card": card, "pairs": pairs, "tile_size": spec.tile_size, "batch_size": spec.batch_size,
        "epochs": spec.epochs, "steps_per_epoch": spec.steps_per_epoch, "learning_rate": spec.learning_rate,
        "weight_decay": spec.weight_decay, "seed": spec.seed,
        "initial_weights": str(job.model.weights) if job.model.weights else None,
    }
    log(f"train: {job.model.arch}/{job.model.encoder}, {spec.epochs} epochs x {spec.steps_per_epoch} steps "
        f"x {spec.batch_size} crops of {spec.tile_size} px on {job.runtime.workers} worker(s)")
    with ray_session(address or job.runtime.address, dashboard=job.runtime.dashboard):
        metrics = fit_model(config, name=job.name, storage=paths.ray_storage, checkpoint_out=paths.checkpoint,
                            workers=job.runtime.workers, cpus_per_worker=job.runtime.cpus_per_worker,
                            use_gpu=job.runtime.use_gpu, max_failures=spec.max_failures)
    seconds = time.perf_counter() - started
    log(f"train: done in {seconds:.0f} s, final loss {metrics.get('loss', float('nan')):.4f}; wrote {paths.checkpoint}")
    return {"seconds": round(seconds, 1), **metrics, "checkpoint": str(paths.checkpoint)}
