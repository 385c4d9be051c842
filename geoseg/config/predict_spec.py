"""The job file's `predict:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from geoseg.config.base import InputLocation, Strict

__all__ = ["CrfSpec", "PredictSpec"]


class CrfSpec(Strict):
    """``predict.crf``: a fully connected CRF on each tile's scores before the argmax (geoseg.infer.crf).

    Defaults: DeepLab's w1 = 4, w2 = 3, θγ = 3 px; Krähenbühl's and ConvCRF's θα = 80 px, θβ = 13; ConvCRF's
    11-px window; 5 mean-field iterations.
    """

    iterations: int = Field(default=5, ge=0, le=100, description="Mean-field iterations (DeepLab ran 10).")
    spatial_sigma: float = Field(default=3.0, gt=0, description="θγ, px: reach of the smoothness kernel.")
    spatial_weight: float = Field(default=3.0, ge=0, description="w2: weight of the smoothness kernel.")
    bilateral_sigma_xy: float = Field(default=80.0, gt=0, description="θα, px: reach of the appearance kernel.")
    bilateral_sigma_rgb: float = Field(
        default=13.0,
        gt=0,
        description="θβ: colour difference (0–255 units over all bands) the appearance kernel tolerates.",
    )
    bilateral_weight: float = Field(default=4.0, ge=0, description="w1: weight of the appearance kernel.")
    window: int = Field(
        default=11, ge=3, le=63, description="Side (odd, px) of the window messages are summed over (ConvCRF)."
    )

    @field_validator("window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd, a window centred on its pixel; use {value + 1}")
        return value

    @property
    def halo(self) -> int:
        """Pixels of context for tiled results to equal whole-image ones: each iteration reaches window // 2."""
        return self.iterations * (self.window // 2)


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
    crf: CrfSpec | None = Field(
        default=None,
        description="true, or a mapping of CrfSpec's fields: refine each tile's scores with a fully connected CRF "
        "(Krähenbühl & Koltun 2011, as DeepLab v1/v2) before the argmax. Its context adds iterations × (window // 2) "
        "px to what the tile's halo must cover for exact seams.",
    )
    zarr_format: Literal[2, 3] = Field(
        default=2, description="2: read by GDAL >= 3.4 and xarray; 3: sharded (one shard per tile core)."
    )

    @field_validator("crf", mode="before")
    @classmethod
    def _crf_switch(cls, value: object) -> object:
        """``crf: true`` is the defaults, ``crf: false`` none."""
        return {} if value is True else None if value is False else value

    @model_validator(mode="after")
    def _one_pixel_size(self) -> PredictSpec:
        if self.resample == "model" and self.resolution is not None:
            raise ValueError("resample: model reads at the model's pixel size; remove resolution, or resample")
        return self
