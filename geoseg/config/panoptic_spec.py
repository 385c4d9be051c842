"""The job file's `panoptic:` section: things from an instance job's mosaic, stuff from this job's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from geoseg.config.base import Strict

__all__ = ["PanopticSpec"]


class PanopticSpec(Strict):
    things: Path = Field(
        description="The mosaic.zarr of an instance job (model.arch maskrcnn_*) predicted from the same scene; "
        "its instances.parquet beside it. Its classes (but background) are the things, and must be among classes."
    )
    min_score: float = Field(
        default=0.5, ge=0, le=1, description="Detections at least this confident are things; others leave void."
    )
