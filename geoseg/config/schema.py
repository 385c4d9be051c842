"""The job file schema. Every field is described; unknown keys are refused.

Paths are kept as written here; :mod:`geoseg.config.load` resolves them against
the job file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator

from geoseg.config.label_values import label_text, unknown_label_classes
from geoseg.config.locations import RemotePath, is_uri
from geoseg.config.stages import STAGE_NAMES, STAGES, StageName

__all__ = [
    "EvaluateSpec",
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


def _input_location(value: object) -> Path | RemotePath:
    """A local path (relative to the job file) or an object-storage URI such as ``s3://bucket/key``."""
    if is_uri(value):
        return RemotePath(value)
    if isinstance(value, (str, Path)) and str(value):
        return Path(value)
    raise ValueError("must be a file path or an s3:// URI")


# Inputs may live in object storage (read through GDAL); outputs are local or shared folders.
InputLocation = Annotated[Path, PlainValidator(_input_location)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Strict):
    arch: str = Field(default="unet", description="Architecture name from `geoseg models` (e.g. unet, deeplabv3plus).")
    encoder: str = Field(default="resnet18", description="segmentation-models-pytorch encoder name (random init).")
    weights: Path | None = Field(
        default=None, description="Optional local .safetensors file to start from; never downloaded."
    )
    options: dict[str, int | float | str | bool | list[int]] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the architecture (e.g. encoder_depth, decoder_channels).",
    )

    @field_validator("options")
    @classmethod
    def _no_reserved_options(
        cls, value: dict[str, int | float | str | bool | list[int]]
    ) -> dict[str, int | float | str | bool | list[int]]:
        # geoseg sets these itself from the job (bands, classes, model.encoder).
        reserved = sorted({"in_channels", "classes", "num_classes", "encoder", "encoder_name"} & set(value))
        if reserved:
            raise ValueError(
                f"{reserved[0]!r} is set by geoseg (from bands:, classes: or model.encoder); "
                "remove it from model.options"
            )
        return value


class Tiling(Strict):
    tile_size: int = Field(
        default=512, gt=0, description="Pixels a side the model sees per prediction tile (core + 2*halo)."
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

    @field_validator("halo")
    @classmethod
    def _halo_not_negative(cls, value: int | Literal["auto"]) -> int | Literal["auto"]:
        if value != "auto" and value < 0:
            raise ValueError("must be >= 0")
        return value

    @model_validator(mode="after")
    def _core_positive(self) -> Tiling:
        if self.halo != "auto" and self.tile_size - 2 * self.halo <= 0:
            raise ValueError(
                f"tile_size {self.tile_size} leaves no core with halo {self.halo}; "
                f"use tile_size > 2*halo (e.g. {2 * self.halo + 256})"
            )
        return self

    @property
    def core(self) -> int:
        """Core pixels a side: the part of each tile written, and the Zarr chunk size."""
        if self.halo == "auto":
            raise ValueError("tiling.halo 'auto' must be resolved (load_job does) before the core is known")
        return self.tile_size - 2 * self.halo


class TrainScene(Strict):
    image: InputLocation = Field(description="Training GeoTIFF (a path or an s3:// URI).")
    labels: InputLocation = Field(
        description="Label features (GeoPackage/GeoJSON/Shapefile; a path or an s3:// URI): polygons, or lines and "
        "points given a width with train.buffer_m."
    )
    label_field: str | None = Field(
        default=None, description="Attribute holding the class of this scene's labels; default: train.label_field."
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Attribute value -> class name, compared as text (README: Labels); other values are class names.",
    )
    label_class: str | None = Field(
        default=None, description="One class for every feature of the layer (labels without a class attribute)."
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        return {label_text(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_way_to_name_classes(self) -> TrainScene:
        if self.label_class is not None and (self.label_map or self.label_field is not None):
            raise ValueError("label_class gives every feature one class; remove label_field and label_map, or it")
        return self


# The names geoseg.train.losses builds (kept here so validating a job does not import torch).
LOSS_NAMES = ("ce", "weighted_ce", "border_ce", "dice", "focal", "lovasz", "jaccard", "tversky")


class TrainSpec(Strict):
    scenes: list[TrainScene] = Field(min_length=1, description="Training scenes with their label polygons.")
    label_field: str = Field(
        default="class", description="Attribute of the label features holding the class name (scenes may override)."
    )
    buffer_m: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description=(
            "Class name -> half-width in metres given to its line and point labels (e.g. {road: 3.5}), measured "
            "on the ground (a local azimuthal projection where the labels are in degrees or Web Mercator)."
        ),
    )
    ignore_classes: list[str] = Field(
        default_factory=list,
        description=(
            "Label class names to leave out of training and evaluation (e.g. everything but `building` for a "
            "building-instance job on labels that also map roads and water)."
        ),
    )
    tile_size: int = Field(default=256, gt=0, description="Pixels a side of each training crop.")
    batch_size: int = Field(default=8, gt=0, description="Crops per step per worker.")
    epochs: int = Field(default=6, gt=0, description="Training epochs.")
    steps_per_epoch: int = Field(default=60, gt=0, description="Optimizer steps per epoch per worker.")
    learning_rate: float = Field(
        default=2e-3, gt=0, description="Peak learning rate of the one-cycle schedule (AdamW)."
    )
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(default=0, description="Seed for crops, augmentation and initial weights.")
    max_failures: int = Field(
        default=0, ge=-1, description="Worker failures Ray Train retries from the last checkpoint (-1: forever)."
    )
    loss: dict[str, float] = Field(
        default_factory=lambda: {"ce": 1.0, "dice": 1.0},
        description=(
            "Losses and their weights, summed: ce, weighted_ce (median-frequency class weights), border_ce "
            "(U-Net border weights; needs label polygons), dice, focal, lovasz, jaccard, tversky."
        ),
    )
    schedule: Literal["onecycle", "cosine"] = Field(default="onecycle", description="Learning-rate schedule (AdamW).")
    validation_fraction: float = Field(
        default=0.15,
        ge=0,
        lt=0.5,
        description=(
            "Share of every training scene held out as a validation strip (never cropped for training); 0: none."
        ),
    )
    validation_side: Literal["bottom", "top", "left", "right"] = Field(
        default="bottom", description="Side of each scene the validation strip lies along."
    )
    early_stopping: int | None = Field(
        default=None,
        gt=0,
        description="Stop after this many epochs without a better validation mIoU; null: run every epoch.",
    )
    oversample: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of crops centred on a class drawn uniformly among those present (lifts rare classes).",
    )
    jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Photometric jitter: per-band gain 1±jitter and offset ±jitter (in band std); 0: off.",
    )
    empty_ratio: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description=(
            "Instance models (Mask R-CNN): share of training crops drawn where no instance is (teaches what is "
            "not a building); the rest are centred near a random instance."
        ),
    )

    @field_validator("loss")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r}; choose from {', '.join(LOSS_NAMES)}")
        if any(w < 0 for w in value.values()) or not sum(value.values()) > 0:
            raise ValueError(f"loss weights must be >= 0 with a positive sum (got {value})")
        return value


class PredictSpec(Strict):
    scene: InputLocation = Field(description="GeoTIFF to map (a path or an s3:// URI); read tile by tile.")
    batch_size: int = Field(default=4, gt=0, description="Tiles per forward pass.")
    checkpoint: Path | None = Field(
        default=None, description="Checkpoint folder; default: <output_dir>/checkpoint from the train stage."
    )
    scores: bool = Field(default=False, description="Also write per-class probabilities (uint8, p*255) to the mosaic.")
    zarr_format: Literal[2, 3] = Field(
        default=2, description="2: read by GDAL >= 3.4 and xarray; 3: sharded (one shard per tile core)."
    )


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
        description="Start the embedded Ray's dashboard (http://127.0.0.1:8265) for "
        "prediction too; off by default, as it costs a few percent of a laptop's CPU. Training "
        "always starts it (Ray Train needs its state API). A cluster's own dashboard is not affected.",
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
    evaluate: EvaluateSpec | None = Field(default=None, description="Accuracy assessment settings.")
    instances: InstanceSpec = Field(
        default_factory=InstanceSpec,
        description="Instance models (Mask R-CNN): detection thresholds and the cross-tile merge.",
    )
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Where and with what it runs.")

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
        if self.train is not None:
            clash = sorted(set(self.train.ignore_classes) & set(self.classes))
            if clash:
                raise ValueError(
                    f"train.ignore_classes names {clash!r}, which are also in classes:; remove them from one of the two"
                )
            unknown_names = unknown_label_classes(
                ((s.label_map, s.label_class) for s in self.train.scenes),
                self.train.buffer_m,
                self.classes,
                self.train.ignore_classes,
            )
            if unknown_names:
                raise ValueError("; ".join(unknown_names))
        if self.vectorize.classes:
            unknown = [c for c in self.vectorize.classes if c not in self.classes]
            if unknown:
                raise ValueError(f"vectorize.classes names unknown classes {unknown!r}; known: {self.classes!r}")
        return self
