"""The job file's `predict:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from geoseg.config.base import InputLocation, Strict

__all__ = ["PredictSpec"]


class PredictSpec(Strict):
    scene: InputLocation | list[InputLocation] = Field(
        description=(
            "What to map, read tile by tile: a GeoTIFF (a path or an s3:// URI), a list of them, a glob "
            "(`tiles/*.tif`), a GDAL .vrt, or a STAC item or collection (.json). Several files are mapped as one "
            "survey on one grid (README: Surveys of many files)."
        )
    )
    crs: str | None = Field(
        default=None,
        description="CRS of the survey grid (e.g. EPSG:32633); default: the first file's. Files in another CRS "
        "are warped to it window by window.",
    )
    resolution: float | None = Field(
        default=None, gt=0, description="Pixel size of the survey grid in CRS units; default: the first file's."
    )
    resample: Literal["native", "model"] = Field(
        default="native",
        description="model: read the scene resampled (bilinear) to the model card's pixel size, window by window; "
        "the mosaic is on that grid.",
    )
    stac_asset: str | None = Field(
        default=None,
        description="STAC asset key to map (e.g. visual); default: the first GeoTIFF asset with the `data` role.",
    )
    on_read_error: Literal["stop", "skip"] = Field(
        default="stop",
        description="stop: a tile that cannot be read stops the run (exit 2; finished chunks are kept, so a rerun "
        "once the file is repaired resumes). skip: its core is left invalid (as nodata) and listed, with GDAL's "
        "reason, in the run record and the mosaic's `geoseg.unread_tiles`; such tiles never count as finished, so "
        "the next run after the file changes (e.g. repaired) reads only them. Needs `tiling.stitch: crop`.",
    )
    batch_size: int = Field(default=4, gt=0, description="Tiles per forward pass.")
    checkpoint: Path | None = Field(
        default=None, description="Checkpoint folder; default: <output_dir>/checkpoint from the train stage."
    )
    scores: bool = Field(default=False, description="Also write per-class probabilities (uint8, p*255) to the mosaic.")
    zarr_format: Literal[2, 3] = Field(
        default=2, description="2: read by GDAL >= 3.4 and xarray; 3: sharded (one shard per tile core)."
    )

    @model_validator(mode="after")
    def _one_pixel_size(self) -> PredictSpec:
        if self.resample == "model" and self.resolution is not None:
            raise ValueError("resample: model reads at the model's pixel size; remove resolution, or resample")
        return self
