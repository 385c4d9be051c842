"""The only module that imports Ray.

``ray.init()`` with no address starts the embedded local cluster; an address
(job file, ``--address`` or ``RAY_ADDRESS``) attaches to a real one. Training
runs through Ray Train's ``TorchTrainer``; prediction through Ray Data
``map_batches`` with a pool of model actors, passing tile descriptors (not
pixels) between stages.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from geoseg.errors import StageError
from geoseg.infer import TileBlender, TilePredictor
from geoseg.tiling import Tile
from geoseg.train.checkpoint import publish_checkpoint
from geoseg.train.loop import train_model

__all__ = ["ray_session", "fit_model", "predict_tiles", "blend_tiles"]


@contextmanager
def ray_session(address: str | None = None):
    """Start (or attach to) Ray for the duration of a stage; reuse it if already up."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Keep the console to geoseg's own progress lines: Ray Train's patched print
    # would echo every worker line twice, and its INFO logs bury the progress.
    options = {"logging_level": logging.WARNING, "log_to_driver": True,
               "runtime_env": {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}}
    ray.init(address=address, **options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_report_logs() -> None:
    """Ray Train logs every report at INFO (to a logger named by its file path,
    not its module); those lines drown geoseg's own progress."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray without Train V2 internals: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _train_worker(config: dict) -> None:
    """Ray Train entry point on every worker: thin glue around :func:`train_model`."""
    torch.set_num_threads(int(config["cpus_per_worker"]))
    _quiet_report_logs()
    context = ray.train.get_context()

    def report(metrics: dict, folder: Path | None) -> None:
        checkpoint = Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)

    previous = ray.train.get_checkpoint()
    with previous.as_directory() if previous else nullcontext() as resume:
        train_model(config, rank=context.get_world_rank(), device=ray.train.torch.get_device(),
                    prepare_model=ray.train.torch.prepare_model, report=report,
                    resume_from=Path(resume) if resume else None)


def fit_model(config: dict, *, name: str, storage: Path, checkpoint_out: Path, workers: int,
              cpus_per_worker: int, use_gpu: bool, max_failures: int) -> dict:
    """Train across ``workers`` Ray Train workers; publish the final checkpoint; return last metrics."""
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={**config, "cpus_per_worker": cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level="ERROR")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise StageError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise StageError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        publish_checkpoint(folder, checkpoint_out)
    return dict(result.metrics or {})


class _PredictActor:
    """Ray Data callable class: one model + open scene + open mosaic per actor."""

    def __init__(self, checkpoint: str, scene: str, mosaic: str, device: str, threads: int, stitch: str):
        self.predictor = TilePredictor(checkpoint, scene, mosaic, device=device, threads=threads, stitch=stitch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"index": np.asarray(self.predictor(_tiles_of(batch)), dtype=np.int64)}


class _BlendActor:
    """Ray Data callable class for blend mode's second pass (no model)."""

    def __init__(self, scene: str, mosaic: str):
        self.blender = TileBlender(scene, mosaic)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"index": np.asarray(self.blender(_tiles_of(batch)), dtype=np.int64)}


def _tiles_of(batch: dict[str, np.ndarray]) -> list[Tile]:
    return [Tile.from_row({key: values[i] for key, values in batch.items()}) for i in range(len(batch["index"]))]


def _run_pool(tiles: list[Tile], actor, constructor: dict, *, batch_size: int, workers: int, cpus: int,
              gpus: int, progress: Callable[[int], None] | None) -> int:
    """Stream tile descriptors through a pool of ``workers`` actors; return how many were processed."""
    if not tiles:
        return 0
    dataset = ray.data.from_items([tile.as_row() for tile in tiles],
                                  override_num_blocks=max(1, len(tiles) // max(1, batch_size)))
    results = dataset.map_batches(actor, fn_constructor_kwargs=constructor, batch_size=batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus)
    done = 0
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        done += len(batch["index"])
        if progress:
            progress(len(batch["index"]))
    return done


def predict_tiles(tiles: list[Tile], *, checkpoint: Path, scene: Path, mosaic: Path, batch_size: int,
                  workers: int, cpus_per_worker: int, use_gpu: bool, stitch: str = "crop",
                  progress: Callable[[int], None] | None = None) -> int:
    """Run tiles through a pool of model actors; return the number of tiles processed.

    In crop mode each tile writes its core; in blend mode (first pass) its window's probabilities.
    """
    constructor = {"checkpoint": str(checkpoint), "scene": str(scene), "mosaic": str(mosaic),
                   "device": "cuda" if use_gpu else "cpu", "threads": cpus_per_worker, "stitch": stitch}
    return _run_pool(tiles, _PredictActor, constructor, batch_size=batch_size, workers=workers,
                     cpus=cpus_per_worker, gpus=1 if use_gpu else 0, progress=progress)


def blend_tiles(tiles: list[Tile], *, scene: Path, mosaic: Path, workers: int,
                progress: Callable[[int], None] | None = None) -> int:
    """Blend mode's second pass: write each chunk once from the windows covering it."""
    return _run_pool(tiles, _BlendActor, {"scene": str(scene), "mosaic": str(mosaic)}, batch_size=4,
                     workers=workers, cpus=1, gpus=0, progress=progress)
