"""Training as a Ray Train V2 job: ``TorchTrainer`` around :func:`geoseg.train.loop.train_model`."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from geoseg.errors import StageError
from geoseg.models.checkpoint import publish_checkpoint
from geoseg.train.loop import train_model
from geoseg.train.plan import TrainingPlan

__all__ = ["fit_model"]


def _quiet_report_logs() -> None:
    """Ray Train logs every report at INFO (to a logger named by its file path,
    not its module); those lines drown geoseg's own progress."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray without Train V2 internals: nothing to quiet
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _train_worker(config: dict) -> None:
    """Ray Train entry point on every worker: thin glue around :func:`train_model`.

    ``config`` is Ray Train's ``train_loop_config``: ``{"plan": TrainingPlan, "cpus_per_worker": int}``.
    """
    torch.set_num_threads(int(config["cpus_per_worker"]))
    _quiet_report_logs()
    context = ray.train.get_context()

    def report(metrics: dict, folder: Path | None) -> None:
        checkpoint = Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)

    previous = ray.train.get_checkpoint()
    with previous.as_directory() if previous else nullcontext() as resume:
        train_model(config["plan"], rank=context.get_world_rank(), world=context.get_world_size(),
                    device=ray.train.torch.get_device(),
                    prepare_model=ray.train.torch.prepare_model, report=report,
                    resume_from=Path(resume) if resume else None)


def fit_model(plan: TrainingPlan, *, name: str, storage: Path, checkpoint_out: Path, workers: int,
              cpus_per_worker: int, use_gpu: bool, max_failures: int) -> dict:
    """Train across ``workers`` Ray Train workers; publish the final checkpoint; return last metrics."""
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"plan": plan, "cpus_per_worker": cpus_per_worker},
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
