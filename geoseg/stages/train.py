"""Train stage: rasterize labels, hold out validation strips, compute band statistics, fit through Ray Train."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

from geoseg._version import __version__
from geoseg.config import Job
from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.models import is_instance_arch, output_stride
from geoseg.runtime import fit_model, ray_session
from geoseg.config.paths import JobPaths
from geoseg.errors import GeosegError
from geoseg.models.checkpoint import build_model_from_card, read_card
from geoseg.io.normalization import band_statistics
from geoseg.train.history import plot_history
from geoseg.train.instances import instance_centres
from geoseg.train.sampler import LabelIndex, split_area

__all__ = ["run_train"]

_CLASS_WEIGHTED = {"weighted_ce", "border_ce"}


def run_train(job: Job, *, address: str | None = None, log=print, force: bool = False) -> dict:
    """Train the job's model into ``checkpoint/``; skip it when the checkpoint already holds this job's model.

    ``force`` trains again from the start: the "already trained" shortcut is skipped and Ray Train's
    folder for this run is dropped, so nothing resumes from its checkpoints.
    """
    paths = JobPaths.of(job)
    spec = job.train
    started = time.perf_counter()
    scenes = [inspect_scene(pair.image, field=f"train.scenes[{i}].image", bands=job.bands)
              for i, pair in enumerate(spec.scenes)]
    instance_model = is_instance_arch(job.model.arch)
    pairs, instances, train_areas, val_areas, cells = [], [], [], [], []
    id_classes, centres = [], []
    counts = None
    for i, (pair, scene) in enumerate(zip(spec.scenes, scenes)):
        labels = load_labels(pair.labels, scene=scene, classes=job.classes, field=spec.label_field,
                             source=f"train.scenes[{i}].labels", ignore=spec.ignore_classes)
        if instance_model:  # one id per polygon: each polygon is one instance
            ids = rasterize_labels(labels, scene, paths.train_instances(i), instances=True)
            train_area, val_area = split_area(scene.height, scene.width, spec.validation_fraction,
                                              spec.validation_side)
            pairs.append((str(scene.path), str(ids)))
            id_classes.append([0] + labels.class_id.astype(int).tolist())
            centres.append(instance_centres(ids, train_area))
            train_areas.append(_box(train_area))
            val_areas.append(_box(val_area))
            log(f"train: {len(labels)} instances in {pair.labels.name}, {len(centres[-1])} of them in the "
                f"training area of {scene.path.name}")
            continue
        out = rasterize_labels(labels, scene, paths.train_labels(i))
        if "border_ce" in spec.loss:  # U-Net's separation borders need each object's own id
            instances.append(str(rasterize_labels(labels, scene, paths.train_instances(i), instances=True)))
        log(f"train: rasterized {len(labels)} label polygons of {pair.labels.name} onto {scene.width}x{scene.height} px")
        pairs.append((str(scene.path), str(out)))
        train_area, val_area = split_area(scene.height, scene.width, spec.validation_fraction, spec.validation_side)
        index = LabelIndex.build(out, train_area, len(job.classes))
        counts = index.counts if counts is None else counts + index.counts
        train_areas.append(_box(train_area))
        val_areas.append(_box(val_area))
        cells.append(index.cells)
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
        "loss": {"maskrcnn": 1.0} if instance_model else dict(spec.loss),
    }
    class_weights = None
    if _CLASS_WEIGHTED & set(spec.loss) and not instance_model:
        from geoseg.train.losses import median_frequency_weights

        class_weights = [float(w) for w in median_frequency_weights(counts)]
        log("train: median-frequency class weights " + ", ".join(
            f"{name} {w:.2f}" for name, w in zip(job.classes, class_weights)))
    config = {
        "card": card, "pairs": pairs, "train_areas": train_areas, "val_areas": val_areas, "cells": cells,
        "instances": instances or None, "class_weights": class_weights, "loss": dict(spec.loss),
        "schedule": spec.schedule, "tile_size": spec.tile_size, "batch_size": spec.batch_size,
        "epochs": spec.epochs, "steps_per_epoch": spec.steps_per_epoch, "learning_rate": spec.learning_rate,
        "weight_decay": spec.weight_decay, "seed": spec.seed, "oversample": spec.oversample,
        "jitter": spec.jitter, "patience": spec.early_stopping,
        "stride": output_stride(build_model_from_card(card)),
        "initial_weights": str(job.model.weights) if job.model.weights else None,
    }
    if instance_model:
        config.update(id_classes=id_classes, centres=centres, empty_ratio=spec.empty_ratio, loss=None,
                      oversample=0.0)
    run = _run_name(job, config)
    config["card"] = {**card, "run": run}  # a rerun of the same job finds its checkpoint by this
    if force:
        shutil.rmtree(paths.ray_storage / run, ignore_errors=True)  # else Ray Train resumes its last checkpoint
    elif _already_trained(paths, run):
        log(f"train: {paths.checkpoint} already holds this job's model (run {run}); nothing to do")
        return {"seconds": 0.0, "checkpoint": str(paths.checkpoint), "skipped": True}
    held_out = f", {spec.validation_fraction:.0%} held out along the {spec.validation_side}" \
        if spec.validation_fraction else ", no validation"
    losses = ("Mask R-CNN's own (RPN + box + class + mask), "
              f"{spec.empty_ratio:.0%} of crops without instances" if instance_model
              else ' + '.join(f'{w:g} {name}' for name, w in spec.loss.items()))
    log(f"train: {job.model.arch}/{job.model.encoder}, {spec.epochs} epochs x {spec.steps_per_epoch} steps "
        f"x {spec.batch_size} crops of {spec.tile_size} px on {job.runtime.workers} worker(s){held_out}; "
        f"loss {losses}")
    # Ray Train V2 watches its controller through the dashboard's state API (without it, it logs a
    # warning every second), so training always starts the dashboard of an embedded Ray.
    with ray_session(address or job.runtime.address, dashboard=True):
        metrics = fit_model(config, name=run, storage=paths.ray_storage,
                            checkpoint_out=paths.checkpoint, workers=job.runtime.workers,
                            cpus_per_worker=job.runtime.cpus_per_worker, use_gpu=job.runtime.use_gpu,
                            max_failures=spec.max_failures)
    history = metrics.pop("history", [])
    _write_history(paths, history, metrics)
    seconds = time.perf_counter() - started
    key, name = ("val_f1", "F1") if instance_model else ("val_miou", "mIoU")
    best = f", best validation {name} {max(h[key] or 0 for h in history):.3f} (epoch {metrics['best_epoch']})" \
        if history and key in history[-1] else ""
    log(f"train: done in {seconds:.0f} s, final loss {metrics.get('loss', float('nan')):.4f}{best}; "
        f"wrote {paths.checkpoint}, {paths.training_plot}")
    return {"seconds": round(seconds, 1), **metrics, "checkpoint": str(paths.checkpoint)}


def _box(window) -> list[int] | None:
    return None if window is None else [int(window.col_off), int(window.row_off), int(window.width), int(window.height)]


def _run_name(job: Job, config: dict) -> str:
    """Ray Train run name: the same job and data resume their run; a changed job starts a new one."""
    plain = {k: v for k, v in config.items() if k not in ("cells", "centres")}
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{job.name}-{digest}"


def _already_trained(paths: JobPaths, run: str) -> bool:
    try:
        return read_card(paths.checkpoint).get("run") == run
    except GeosegError:  # no checkpoint yet, or an unreadable one: train
        return False


def _write_history(paths: JobPaths, history: list[dict], metrics: dict) -> None:
    """Loss and validation mIoU per epoch: ``train/history.json`` and a PNG plot."""
    record = {"epochs": history, "best_epoch": metrics.get("best_epoch"),
              "stopped_early": bool(metrics.get("stopped_early"))}
    tmp = paths.training_history.with_name(paths.training_history.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(paths.training_history)
    plot_history(history, paths.training_plot)
