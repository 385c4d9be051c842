"""``geoseg bench train``: training throughput through Ray Train against a plain PyTorch loop.

Three runs of the same model, sampler, batches and loss on a synthetic scene:

- ``plain``: :func:`geoseg.train.loop.train_model` called in this process
  with all the cores as torch threads: no Ray at all;
- ``ray_1``: the same function in one Ray Train worker holding all the cores;
- ``ray_2``: two Ray Train workers (DDP over gloo on CPU, NCCL on GPU), the
  cores split between them.

Rates are samples per second over every epoch but the first (which pays for
allocator warm-up, oneDNN plans and, through Ray, worker start-up), from the
loop's own per-epoch timings, so all three are measured the same way.
``ray_1_efficiency = ray_1 / plain`` is the share of the plain loop's speed
one Ray Train worker keeps; with two workers the global rate is summed over
the workers. ``*_wall_s`` times each run from call to return, start-up included.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geoseg.config.schema import TrainScene, TrainSpec
from geoseg.synthetic.blocks import MEAN, scene_card, write_synthetic_scene
from geoseg.train.plan import TrainingPlan, TrainingScene

__all__ = ["bench_train"]


def _label_raster(scene: Path, out: Path) -> Path:
    """Classes from the synthetic scene's own bands (so the model has something to learn), block by block."""
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 1, "nodata": 255, "predictor": 1}
        with rasterio.open(out, "w", **profile) as dst:
            for _, window in src.block_windows(1):
                pixels = src.read(window=window).astype(np.int16)
                labels = np.zeros(pixels.shape[1:], np.uint8)
                labels[pixels[0] > MEAN[0] + 25] = 1
                labels[pixels[2] < MEAN[2] - 25] = 2
                dst.write(labels, 1, window=window)
    return out


def _plan(
    scene: Path,
    labels: Path,
    *,
    size: int,
    arch: str,
    encoder: str,
    options: dict,
    tile_size: int,
    batch_size: int,
    epochs: int,
    steps: int,
) -> TrainingPlan:
    """The training plan of every run: the whole scene for training, no validation, the same schedule."""
    card = scene_card(arch, encoder, options)
    spec = TrainSpec(
        scenes=[TrainScene(image=scene, labels=labels)],
        tile_size=tile_size,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps,
        learning_rate=1e-3,
        weight_decay=1e-4,
        seed=0,
        oversample=0.0,
        jitter=0.1,
        validation_fraction=0.0,
        loss={"ce": 1.0, "dice": 1.0},
    )
    whole = TrainingScene(image=str(scene), labels=str(labels), train_area=(0, 0, size, size), val_area=None)
    return TrainingPlan(card=card, spec=spec, scenes=(whole,), stride=32)


def _steady_rate(history: list[dict], batch_size: int, steps: int, workers: int) -> float:
    """Samples/s over all epochs but the first, summed over ``workers``."""
    later = history[1:] or history
    return workers * len(later) * steps * batch_size / sum(h["seconds"] for h in later)


def bench_train(
    *,
    size: int = 2048,
    tile_size: int = 256,
    batch_size: int = 8,
    epochs: int = 3,
    steps: int = 10,
    cpus: int | None = None,
    arch: str = "unet",
    encoder: str = "resnet18",
    options: dict | None = None,
    workdir: Path | None = None,
    log=print,
) -> dict:
    """Run the three trainings; return the fields of the JSON line."""
    import torch

    # Imported before anything is written: a Ray (Train) that cannot load fails at once.
    from geoseg.runtime import fit_model, ray_session  # noqa: F401
    from geoseg.train.loop import train_model  # noqa: F401

    options = dict(options or {})
    cpus = cpus or os.cpu_count() or 1
    temporary = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="geoseg-bench-train-")) if workdir is None else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        scene = write_synthetic_scene(workdir / f"train_scene_{size}.tif", size)
        labels = _label_raster(scene, workdir / f"train_labels_{size}.tif")
        plan = _plan(
            scene,
            labels,
            size=size,
            arch=arch,
            encoder=encoder,
            options=options,
            tile_size=tile_size,
            batch_size=batch_size,
            epochs=epochs,
            steps=steps,
        )
        result: dict[str, Any] = {
            "bench": "train",
            "arch": arch,
            "encoder": encoder,
            "options": options,
            "tile": tile_size,
            "batch_size": batch_size,
            "epochs": epochs,
            "steps_per_epoch": steps,
            "cpus": cpus,
        }

        result.update(_plain_run(plan, cpus, batch_size, steps, log))
        result.update(_ray_train_runs(plan, cpus, batch_size, steps, workdir, log))
        result["ray_1_efficiency"] = round(result["ray_1_samples_s"] / result["plain_samples_s"], 4)
        result["ray_2_vs_plain"] = round(result["ray_2_samples_s"] / result["plain_samples_s"], 4)
        result.update(torch=torch.__version__, cpu_count=os.cpu_count(), python=platform.python_version())
        return result
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(workdir / "ray", ignore_errors=True)


def _plain_run(
    plan: TrainingPlan, cpus: int, batch_size: int, steps: int, log: Callable[[str], None]
) -> dict[str, float]:
    """``plain_wall_s`` and ``plain_samples_s``: the training loop in this process, ``cpus`` torch threads."""
    import torch

    from geoseg.train.loop import train_model

    log(f"bench: plain PyTorch loop, {cpus} threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(cpus)
    started = time.perf_counter()
    plain = train_model(plan, log=log, report=lambda metrics, folder: None)
    wall_s = round(time.perf_counter() - started, 2)
    torch.set_num_threads(previous)
    return {"plain_wall_s": wall_s, "plain_samples_s": round(_steady_rate(plain["history"], batch_size, steps, 1), 3)}


def _ray_train_runs(
    plan: TrainingPlan, cpus: int, batch_size: int, steps: int, workdir: Path, log: Callable[[str], None]
) -> dict[str, float]:
    """``ray_<n>_wall_s`` and ``ray_<n>_samples_s`` for Ray Train with 1 and 2 workers sharing the ``cpus``."""
    from geoseg.runtime import fit_model, ray_session

    fields = {}
    with ray_session(None, dashboard=True):  # as the train stage: Ray Train polls the state API
        for workers in (1, 2):
            per_worker = max(1, cpus // workers)
            log(f"bench: Ray Train, {workers} worker(s) x {per_worker} CPU")
            started = time.perf_counter()
            metrics = fit_model(
                plan,
                name=f"bench-{workers}-{os.getpid()}",
                storage=workdir / "ray",
                checkpoint_out=workdir / f"checkpoint_{workers}",
                workers=workers,
                cpus_per_worker=per_worker,
                use_gpu=False,
                max_failures=0,
            )
            fields[f"ray_{workers}_wall_s"] = round(time.perf_counter() - started, 2)
            fields[f"ray_{workers}_samples_s"] = round(_steady_rate(metrics["history"], batch_size, steps, workers), 3)
    return fields
