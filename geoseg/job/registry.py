"""The stages' runners, found through the stage table (:data:`geoseg.config.stages.STAGES`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from geoseg.config import STAGES, Job
from geoseg.config.stages import stage_info
from geoseg.errors import JobConfigError

__all__ = ["StageRunner", "check_stage_sections", "stage_runner"]

StageRunner = Callable[..., dict[str, Any]]  # runner(job, *, address, log, force) -> the stage's summary


def stage_runner(name: str) -> StageRunner:
    """The function that runs stage ``name``, imported on first use (a stage may import torch and Ray)."""
    try:
        module, function = stage_info(name).runner.split(":")
    except KeyError:
        raise JobConfigError(f"unknown stage {name!r}; choose from {', '.join(s.name for s in STAGES)}") from None
    runner: StageRunner = getattr(import_module(module), function)
    return runner


def check_stage_sections(job: Job, stages: list[str] | None, source: str) -> list[str]:
    """The stages to run (default: the job's own); JobConfigError naming every job section they lack."""
    stages = list(stages or job.stages)
    unknown = [name for name in stages if name not in {s.name for s in STAGES}]
    if unknown:
        raise JobConfigError(
            [f"{source}: unknown stage {name!r}; choose from {', '.join(s.name for s in STAGES)}" for name in unknown]
        )
    problems = [
        f"{source}: stage {name!r} needs a `{section}:` section"
        for name in stages
        for section in stage_info(name).sections
        if getattr(job, section) is None
    ]
    if problems:
        raise JobConfigError(problems)
    return stages
