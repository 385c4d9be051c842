"""The stage table: every stage's name, the job sections it needs, what it does, and where its runner lives.

One table that the job schema (which names ``stages:`` may hold), the command
line (one subcommand per stage) and the orchestrator (:mod:`geoseg.job.run`)
all read. Runners are named, not imported: the stages sit above the job
schema, and validating a job must not import torch or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["STAGES", "STAGE_NAMES", "StageInfo", "StageName", "stage_info"]

StageName = Literal["train", "predict", "vectorize", "panoptic", "impact", "evaluate"]


@dataclass(frozen=True)
class StageInfo:
    """One stage of the pipeline.

    Attributes:
        name: the stage's name in ``stages:``, ``--stages`` and the command line.
        sections: the job sections it cannot run without.
        help: what it does, in a few words (the command line's help).
        runner: ``module:function`` of its runner, called as ``runner(job, address=..., log=..., force=...)``.
        uses_ray_address: whether ``--address`` means anything to it.
    """

    name: StageName
    sections: tuple[Literal["train", "predict", "panoptic", "impact", "evaluate"], ...]
    help: str
    runner: str
    uses_ray_address: bool = True


STAGES: tuple[StageInfo, ...] = (
    StageInfo("train", ("train",), "train the model", "geoseg.stages.train:run_train"),
    StageInfo("predict", ("predict",), "predict the scene into the Zarr mosaic", "geoseg.stages.predict:run_predict"),
    StageInfo(
        "vectorize",
        ("predict",),
        "turn the mosaic into polygons",
        "geoseg.stages.vectorize:run_vectorize",
    ),
    StageInfo(
        "panoptic",
        ("panoptic", "predict"),
        "one class and instance id per pixel: an instance mosaic's things over the stuff",
        "geoseg.stages.panoptic:run_panoptic",
    ),
    StageInfo(
        "impact",
        ("impact", "predict"),
        "flood extent against before, and the buildings and roads it reaches",
        "geoseg.stages.impact:run_impact",
    ),
    StageInfo(
        "evaluate",
        ("evaluate", "predict"),
        "score the mosaic against labels",
        "geoseg.stages.evaluate:run_evaluate",
    ),
)
STAGE_NAMES: tuple[StageName, ...] = tuple(stage.name for stage in STAGES)
if get_args(StageName) != STAGE_NAMES:  # pragma: no cover - a programming error, caught on import
    raise RuntimeError(f"StageName {get_args(StageName)} and STAGES {STAGE_NAMES} disagree")


def stage_info(name: str) -> StageInfo:
    """The table row of stage ``name`` (KeyError for an unknown name)."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(name)
