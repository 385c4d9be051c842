"""The job file schema. Every field is described; unknown keys are refused.

Paths are kept as written here; :mod:`geoseg.config.load` resolves them against
the job file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from geoseg.config.base import InputLocation, Strict
from geoseg.config.impact_spec import ImpactSpec
from geoseg.config.label_values import unknown_label_classes
from geoseg.config.locations import is_uri
from geoseg.config.model_spec import ModelSpec
from geoseg.config.panoptic_spec import PanopticSpec
from geoseg.config.predict_spec import PredictSpec
from geoseg.config.stages import STAGE_NAMES, STAGES, StageName
from geoseg.config.train_spec import LOSS_NAMES, TrainScene, TrainSpec

__all__ = [
    "LOSS_NAMES",
    "EvaluateSpec",
    "ImpactSpec",
    "InstanceSpec",
    "Job",
    "ModelSpec",
    "PredictSpec",
    "RuntimeSpec",
    "Tiling",
    "TrainScene",
    "TrainSpec",
    "VectorizeSpec",
]


class Tiling(Strict):
    tile_size: int | Literal["auto"] = Field(
        default=512,
        description="Pixels a side the model sees per prediction tile (core + 2*halo), or `auto`: the tile and "
        "halo chosen from the seams the train stage measured (`tiling: auto` for short).",
    )
    halo: int | Literal["auto"] = Field(
        default=32,
        description="Context pixels on every side of a tile's core (only the core is written); a multiple of "
        "the model's stride, >= 0, or `auto`: the model's measured receptive-field radius, "
        "which makes crop-mode tiles equal whole-image prediction for convolutional models.",
    )
    stitch: Literal["crop", "blend"] = Field(
        default="crop",
        description="crop: keep each tile's core (exact when the halo covers the model's context); "
        "blend: Hann-weighted average of the overlapping windows (for wide-context models).",
    )
    max_seam_error: float = Field(
        default=0.01,
        ge=0,
        le=100,
        description="With tile_size auto: the most labels, in percent, that may differ from whole-image "
        "prediction (as measured on the validation strip after training).",
    )
    max_tile_memory_gb: float = Field(
        default=4.0,
        gt=0,
        description="With tile_size auto: memory a batch of tiles may take in the model (GiB), by the model "
        "card's measured activation bytes per pixel; bounds the tile size.",
    )

    @model_validator(mode="before")
    @classmethod
    def _auto_shorthand(cls, value: object) -> object:
        return {"tile_size": "auto"} if value == "auto" else value

    @field_validator("tile_size")
    @classmethod
    def _tile_positive(cls, value: int | Literal["auto"]) -> int | Literal["auto"]:
        if value != "auto" and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("halo")
    @classmethod
    def _halo_not_negative(cls, value: int | Literal["auto"]) -> int | Literal["auto"]:
        if value != "auto" and value < 0:
            raise ValueError("must be >= 0")
        return value

    @model_validator(mode="after")
    def _core_positive(self) -> Tiling:
        if self.tile_size == "auto":
            if "halo" in self.model_fields_set:
                raise ValueError("tile_size auto chooses the halo too; remove `halo`")
            if self.stitch != "crop":
                raise ValueError("tile_size auto chooses by crop-mode seams; use stitch: crop")
            return self
        if self.halo != "auto" and self.tile_size - 2 * self.halo <= 0:
            raise ValueError(
                f"tile_size {self.tile_size} leaves no core with halo {self.halo}; "
                f"use tile_size > 2*halo (e.g. {2 * self.halo + 256})"
            )
        return self

    @property
    def auto(self) -> bool:
        """The tile size and halo are chosen at prediction from the model card's seam figures."""
        return self.tile_size == "auto"

    @property
    def size(self) -> int:
        """``tile_size`` in pixels (ValueError while it is still ``auto``)."""
        if self.tile_size == "auto":
            raise ValueError("tiling.tile_size 'auto' must be chosen (the predict stage does) before it is used")
        return self.tile_size

    @property
    def core(self) -> int:
        """Core pixels a side: the part of each tile written, and the Zarr chunk size."""
        if self.halo == "auto":
            raise ValueError("tiling.halo 'auto' must be resolved (load_job does) before the core is known")
        return self.size - 2 * self.halo


class VectorizeSpec(Strict):
    classes: list[str] | None = Field(
        default=None, description="Class names to turn into polygons; default: all but the first."
    )
    simplify_m: float = Field(
        default=0.0, ge=0, description="Simplification tolerance in metres (0: exact pixel edges)."
    )
    min_area_m2: float = Field(default=0.0, ge=0, description="Drop polygons smaller than this.")
    format: Literal["gpkg", "parquet"] = Field(
        default="gpkg",
        description=(
            "Vectors in the mosaic CRS: gpkg (GeoPackage) or parquet (GeoParquet); "
            "a GeoJSON in EPSG:4326 is always written."
        ),
    )
    instances: bool = Field(
        default=False,
        description=(
            "Semantic models: also number every connected region of the vectorized classes across the whole mosaic "
            "(mosaic.zarr/instances + instances.parquet; a region spanning many chunks is one id). "
            "Instance models always write them at prediction."
        ),
    )


class InstanceSpec(Strict):
    score_threshold: float = Field(default=0.5, ge=0, le=1, description="Keep detections at least this confident.")
    mask_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Mask probability above which a pixel is in the instance."
    )
    merge_iou: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Two detections from overlapping tiles are one object when their masks' IoU, counted where both tiles "
            "saw, reaches this."
        ),
    )
    merge_ios: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description=("Or when the intersection over the smaller of the two masks (where both tiles saw) reaches this."),
    )
    min_area_px: int = Field(default=16, ge=1, description="Drop instances smaller than this many pixels.")


class EvaluateSpec(Strict):
    labels: InputLocation = Field(
        description="Reference labels of the predicted scene: polygons (like train labels) "
        "or a label GeoTIFF; a path or an s3:// URI."
    )
    colour_baseline: bool = Field(
        default=False, description="Also score a per-pixel colour classifier trained on the train scenes."
    )
    flood_truth: InputLocation | None = Field(
        default=None,
        description="With impact: the true flood codes on the scene's grid (GeoTIFF, uint8: 0 dry, 1 permanent "
        "water, 2 flood water, 255 unknown): flood-extent IoU and how much permanent water was taken for flood.",
    )
    flooded_buildings: InputLocation | None = Field(
        default=None,
        description="With impact: building footprints with a boolean `flooded` field: affected-building "
        "precision, recall and F1 (a predicted building matches the true ones it overlaps).",
    )


class RuntimeSpec(Strict):
    address: str | None = Field(
        default=None, description="Ray address; null starts the embedded local Ray (or uses RAY_ADDRESS)."
    )
    workers: int = Field(
        default=1, gt=0, description="Training workers (Ray Train) and prediction model actors (Ray actors)."
    )
    cpus_per_worker: int = Field(
        default=2, gt=0, description="CPU cores each worker or actor reserves (and torch threads it uses)."
    )
    use_gpu: bool = Field(default=False, description="Give each worker one GPU.")
    dashboard: bool = Field(
        default=False,
        description="Start the embedded Ray's dashboard (http://127.0.0.1:8265) with Ray for "
        "every stage; off by default, as it costs ~1% of a 2-core laptop's CPU. Training "
        "always starts it (Ray Train needs its state API), and a job keeps its Ray, dashboard included, "
        "for the stages after (a restart costs ~7 s). A cluster's own dashboard is not affected.",
    )


class Job(Strict):
    name: str = Field(description="Job name, used in logs and output folders.")
    output_dir: Path = Field(
        description="Folder for checkpoint, mosaic, vectors and metrics (local, or shared by every node of a cluster)."
    )
    publish: str | None = Field(
        default=None,
        description=(
            "Object-storage prefix (s3://bucket/prefix) that each stage's outputs are copied to once the stage is "
            "done; runs/<run id>/run.json goes last. Credentials come from the environment (AWS_*), never from here."
        ),
    )
    classes: list[str] = Field(min_length=2, description="Class names; index 0 is the background class.")
    stages: list[StageName] = Field(
        default_factory=lambda: list(STAGE_NAMES), description="Stages `geoseg run` chains, in this order."
    )
    bands: list[int] | None = Field(
        default=None, description="1-based band indexes fed to the model, in order; default: all non-alpha bands."
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="The segmentation model.")
    tiling: Tiling = Field(default_factory=Tiling, description="Prediction tiling.")
    train: TrainSpec | None = Field(default=None, description="Training settings (needed by the train stage).")
    predict: PredictSpec | None = Field(
        default=None, description="Prediction settings (needed by predict and later stages)."
    )
    vectorize: VectorizeSpec = Field(default_factory=VectorizeSpec, description="Polygon export settings.")
    panoptic: PanopticSpec | None = Field(
        default=None,
        description="Panoptic output: things from an instance job's mosaic over this job's stuff (panoptic stage).",
    )
    impact: ImpactSpec | None = Field(
        default=None, description="Flood impact: the reference of before, buildings, roads, zones (impact stage)."
    )
    evaluate: EvaluateSpec | None = Field(default=None, description="Accuracy assessment settings.")
    instances: InstanceSpec = Field(
        default_factory=InstanceSpec,
        description="Instance models (Mask R-CNN): detection thresholds and the cross-tile merge.",
    )
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Where and with what it runs.")

    @model_validator(mode="before")
    @classmethod
    def _default_stages(cls, value: object) -> object:
        """Without `stages:`, every stage; panoptic and impact only when the job has their sections."""
        if isinstance(value, dict) and "stages" not in value:
            optional = ("panoptic", "impact")
            wanted = [name for name in STAGE_NAMES if name not in optional or value.get(name) is not None]
            return {**value, "stages": wanted}
        return value

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"class names must be unique (repeated: {', '.join(dupes)})")
        if len(value) > 255:
            raise ValueError(f"at most 255 classes fit the uint8 mosaic (got {len(value)})")
        return value

    @field_validator("publish")
    @classmethod
    def _publish_is_a_uri(cls, value: str | None) -> str | None:
        if value is not None and not is_uri(value):
            raise ValueError("must be an s3:// URI, e.g. s3://bucket/surveys/flood")
        return value

    @field_validator("bands")
    @classmethod
    def _bands_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(b < 1 for b in value)):
            raise ValueError(f"band indexes are 1-based and non-empty (got {value!r})")
        return value

    @model_validator(mode="after")
    def _stage_sections(self) -> Job:
        missing = [
            f"{stage.name!r} needs a `{section}:` section"
            for stage in STAGES
            if stage.name in self.stages
            for section in stage.sections
            if getattr(self, section) is None
        ]
        if missing:
            raise ValueError("; ".join(missing))
        if self.train is not None and "gscnn_edge" in self.train.loss and self.model.arch != "gatedscnn":
            raise ValueError(
                f"train.loss.gscnn_edge: supervises the boundary stream of a gatedscnn model, which {self.model.arch} "
                "has not; use model.arch: gatedscnn, or remove gscnn_edge"
            )
        if self.train is not None:
            clash = sorted(set(self.train.ignore_classes) & set(self.classes))
            if clash:
                raise ValueError(
                    f"train.ignore_classes names {clash!r}, which are also in classes:; remove them from one of the two"
                )
            unknown_names = unknown_label_classes(
                self.train.label_namings(),
                self.train.buffer_m,
                self.classes,
                self.train.ignore_classes,
            )
            if unknown_names:
                raise ValueError("; ".join(unknown_names))
        if self.predict and self.predict.on_read_error == "skip" and self.tiling.stitch == "blend":
            raise ValueError(
                "predict.on_read_error: skip leaves unread tiles out, which blending cannot do without; "
                "use tiling.stitch: crop, or on_read_error: stop"
            )
        if self.impact is not None:
            named = {"water_class": self.impact.water_class, "building_class": self.impact.building_class}
            unknown_impact = [f"impact.{k} {v!r}" for k, v in named.items() if v is not None and v not in self.classes]
            if unknown_impact:
                raise ValueError(f"{', '.join(unknown_impact)} not in classes {self.classes!r}")
        if self.vectorize.classes:
            unknown = [c for c in self.vectorize.classes if c not in self.classes]
            if unknown:
                raise ValueError(f"vectorize.classes names unknown classes {unknown!r}; known: {self.classes!r}")
        return self
