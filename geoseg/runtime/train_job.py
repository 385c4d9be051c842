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
    """Quiet Ray Train's per-report INFO lines, which drown geoseg's own progress.

    Ray Train logs every report at INFO, to a logger named by its file path, not its module.
    """
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
        train_model(
            config["plan"],
            rank=context.get_world_rank(),
            world=context.get_world_size(),
            device=ray.train.torch.get_device(),
            prepare_model=ray.train.torch.prepare_model,
            report=report,
            resume_from=Path(resume) if resume else None,
        )


def fit_model(
    plan: TrainingPlan,
    *,
    name: str,
    storage: Path,
    checkpoint_out: Path,
    workers: int,
    cpus_per_worker: int,
    use_gpu: bool,
    max_failures: int,
) -> dict:
    """Train across ``workers`` Ray Train workers; publish the final checkpoint; return last metrics."""
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"plan": plan, "cpus_per_worker": cpus_per_worker},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        # ray.train exports Train V2's RunConfig (with logging_config) only at run time; mypy sees V1's.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="ERROR"),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:  # fit() raises the error it would leave in result.error
        raise _training_failure(error)  # noqa: B904 - the cause is chained, or dropped, on purpose
    if result.error is not None:
        raise _training_failure(result.error)
    if result.checkpoint is None:
        raise StageError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        publish_checkpoint(folder, checkpoint_out)
    return dict(result.metrics or {})


def _training_failure(error: Exception) -> BaseException:
    """What to raise for a failed ``trainer.fit()``; ``error`` is Ray Train's ``TrainingFailedError``.

    A ``WorkerGroupError`` holds each failed worker's exception (by world rank), a
    ``ControllerError`` the one that stopped the worker group as a whole. Of those:

    - anything but the known failures below is a bug: that exception is raised again (the
      worker's rank in a note), chained to Ray's error, whose message holds the worker's
      traceback (Ray keeps its first and last 500 characters; the worker's own log line,
      forwarded to the run's ray.log, or to this console with --verbose, has all of it);
    - a geoseg error is the user's: raised as itself;
    - a lost worker or node, a worker group that could not start, a failed read or write
      (``OSError``): one line, :class:`StageError`, with Ray's error as its cause.
    """
    from geoseg.errors import GeosegError

    failures = getattr(error, "worker_failures", None)
    if failures:
        ranked = [(rank, _unwrap(failure)) for rank, failure in sorted(failures.items())]
    else:
        ranked = [(None, _unwrap(getattr(error, "controller_failure", None) or error))]
    for rank, failure in ranked:
        if not isinstance(failure, GeosegError) and not _known_failure(failure):
            if failure is error:
                return error
            if rank is not None:
                failure.add_note(f"(raised on Ray Train worker rank {rank}; its traceback is in the error above)")
            return _chained(failure, error)
    for _, failure in ranked:
        if isinstance(failure, GeosegError):
            return _chained(failure, None)
    rank, failure = ranked[0]
    where = "" if rank is None else f"worker rank {rank}"
    if isinstance(failure, ray.exceptions.RayActorError):
        return _chained(StageError(f"training failed: {where or 'a worker'} was lost: {_one_line(failure)}"), error)
    return _chained(StageError(f"training failed: {where + ': ' if where else ''}{_one_line(failure)}"), error)


def _unwrap(failure: BaseException) -> BaseException:
    # A failed health check wraps what the check met (the worker's actor died, ...); a RayTaskError
    # (a task the worker waited on raised) holds the exception itself as its cause.
    failure = getattr(failure, "health_check_failure", None) or failure
    while isinstance(failure, ray.exceptions.RayTaskError) and isinstance(failure.cause, BaseException):
        failure = failure.cause
    return failure


def _known_failure(failure: BaseException) -> bool:
    """A failure of the machinery, not of geoseg's code: Ray's own errors, and reads or writes that failed."""
    known: tuple[type[BaseException], ...] = (OSError, ray.exceptions.RayError, ray.train.TrainingFailedError)
    try:  # Ray Train's own errors: a health check that timed out, a worker group that could not start, ...
        from ray.train.v2._internal.exceptions import RayTrainError

        known += (RayTrainError,)
    except ImportError:  # a Ray without Train V2 internals
        pass
    return isinstance(failure, known) and not isinstance(failure, ray.exceptions.RayTaskError)


def _chained(exc: BaseException, cause: BaseException | None) -> BaseException:
    """``exc`` as ``raise exc from cause`` would leave it (``cause`` None: as ``from None``)."""
    exc.__cause__ = cause
    exc.__suppress_context__ = True
    return exc


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
