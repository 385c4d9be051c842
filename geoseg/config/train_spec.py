"""The job file's `train:` section: scenes, their labels and the training settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema

from geoseg.config.base import InputLocation, Strict
from geoseg.config.label_values import label_kind, label_text

__all__ = ["LOSS_NAMES", "LabelOptions", "LabelSource", "LabelSources", "TrainScene", "TrainSpec"]


class LabelOptions(Strict):
    """How the features (or pixels, or boxes) of one label source name their class."""

    label_field: str | None = Field(
        default=None,
        description="Attribute (box tables: column) holding the class; default: the scene's, then "
        "train.label_field (box tables: `label`).",
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Attribute value (label rasters: pixel value, or category name) -> class name, compared as "
        "text (README: Labels); other attribute values are class names.",
    )
    label_class: str | None = Field(
        default=None, description="One class for every feature of the layer (labels without a class attribute)."
    )
    box_coords: Literal["pixel", "map"] | None = Field(
        default=None,
        description="Box tables (.csv of xmin, ymin, xmax, ymax, label) only, and required there: `pixel` "
        "(columns and rows of the image from its top-left corner) or `map` (coordinates in the image's CRS).",
    )

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        return {label_text(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_way_to_name_classes(self) -> LabelOptions:
        if self.label_class is not None and (self.label_map or self.label_field is not None):
            raise ValueError("label_class gives every feature one class; remove label_field and label_map, or it")
        return self

    def _fits(self, location: Path) -> None:
        """Refuse options the kind of file at ``location`` has no use for (or lacks)."""
        kind = label_kind(location)
        if kind == "boxes" and self.box_coords is None:
            raise ValueError(
                f"{location.name} is a box table: add box_coords: pixel (xmin..ymax in columns and rows of "
                "the image) or box_coords: map (in the image's CRS)"
            )
        if kind != "boxes" and self.box_coords is not None:
            raise ValueError(f"box_coords is for box tables (.csv) and {location.name} is not one; remove it")
        if kind == "raster" and (self.label_field is not None or self.label_class is not None):
            raise ValueError(
                f"{location.name} is a label raster: its pixel values name classes through label_map or its "
                "category names; remove label_field and label_class"
            )


class LabelSource(LabelOptions):
    path: InputLocation = Field(
        description="Label polygons/lines/points (GeoPackage, GeoJSON, Shapefile), a label raster (.tif) or a "
        "box table (.csv); a path or an s3:// URI."
    )

    @model_validator(mode="after")
    def _options_fit_the_file(self) -> LabelSource:
        self._fits(self.path)
        return self


class LabelSources(list[LabelSource]):
    """A scene's label sources in paint order: where they overlap, a later source paints over earlier ones."""

    @property
    def name(self) -> str:
        """The file names, for messages (``roads.geojson + buildings.gpkg``)."""
        return " + ".join(source.path.name for source in self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(cls, handler.generate_schema(list[LabelSource]))


_SOURCE_LIST = TypeAdapter(list[LabelSource])
_LOCATION = TypeAdapter(InputLocation)


def _labels(value: object, _: ValidatorFunctionWrapHandler) -> Path | LabelSources:
    """One label file (a path or URI), or a list of sources each with its own options.

    A wrap validator that never calls pydantic's own (a plain one would lose the field's serializer):
    a URI must stay a :class:`RemotePath`, which pydantic's ``Path`` would fold.
    """
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list names no labels; give a path or at least one {path: ...}")
        return LabelSources(_SOURCE_LIST.validate_python(value))  # errors keep their place: labels.1.path
    if isinstance(value, (str, Path)):
        return _LOCATION.validate_python(value)
    raise ValueError("must be a file path, an s3:// URI or a list of sources ({path: ..., label_field: ...})")


class TrainScene(LabelOptions):
    image: InputLocation | list[InputLocation] = Field(
        description="Training GeoTIFF (a path or an s3:// URI), or many files as one image: a list, a glob "
        "(`tiles/*.tif`) or a STAC item or collection, mosaicked on the first file's grid."
    )
    labels: Annotated[Path | LabelSources, WrapValidator(_labels)] = Field(
        description="Label features (GeoPackage/GeoJSON/Shapefile: polygons, or lines and points given a width "
        "with train.buffer_m), a label raster (.tif) or a box table (.csv); a path or an s3:// URI. Or a list of "
        "such sources, each {path, label_field, label_map, label_class, box_coords}: later sources paint over "
        "earlier ones where they overlap."
    )

    @model_validator(mode="after")
    def _options_fit_the_labels(self) -> TrainScene:
        if not isinstance(self.labels, LabelSources):
            self._fits(self.labels)
        elif self.label_map or self.label_class is not None or self.box_coords is not None:
            raise ValueError(
                "labels is a list of sources: give label_map, label_class and box_coords on each source "
                "(a scene's label_field is the default of its sources)"
            )
        return self

    def label_paths(self) -> list[tuple[str, Path]]:
        """``(field path, location)`` of each label file: ``labels``, or ``labels[i]`` of a list."""
        if isinstance(self.labels, LabelSources):
            return [(f"labels[{i}]", source.path) for i, source in enumerate(self.labels)]
        return [("labels", self.labels)]

    def label_sources(self) -> list[tuple[str, LabelOptions]]:
        """``(field path, options)`` of each label source: ``labels`` itself, or ``labels[i]`` of a list."""
        if isinstance(self.labels, LabelSources):
            return [(f"labels[{i}]", source) for i, source in enumerate(self.labels)]
        return [("labels", self)]


# The names geoseg.train.losses builds (kept here so validating a job does not import torch).
LOSS_NAMES = (
    "ce",
    "weighted_ce",
    "border_ce",
    "dice",
    "focal",
    "lovasz",
    "jaccard",
    "tversky",
    "topk",
    "boundary",
    "hausdorff",
    "sensitivity_specificity",
    "iou_balanced",
    "distance_ce",
    "gscnn_edge",
)


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
            "(U-Net border weights; needs label polygons), dice, focal, lovasz, jaccard, tversky, topk (hardest 10% of "
            "pixels), boundary (Kervadec 2019), hausdorff (Karimi 2019), sensitivity_specificity (Brosch 2015), "
            "iou_balanced (Wu 2019), distance_ce (Calivà 2019), gscnn_edge (Gated-SCNN's boundary and dual-task "
            "losses, Takikawa 2019; model.arch gatedscnn)."
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
    measure_seams: bool = Field(
        default=True,
        description=(
            "Semantic models: after training, measure how far crop-mode tiles differ from whole-image prediction "
            "on the validation strip (~25 s on a 2-core CPU for the demo) and record it per candidate tiling in "
            "the model card; `tiling: auto` chooses by it."
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

    def label_namings(self) -> list[tuple[str, dict[str, str], str | None]]:
        """``(where, label_map, label_class)`` of every label source of every scene, for checking class names."""
        return [
            (f"train.scenes[{i}]" + ("" if options is scene else f".{where}"), options.label_map, options.label_class)
            for i, scene in enumerate(self.scenes)
            for where, options in scene.label_sources()
        ]

    @field_validator("loss")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r}; choose from {', '.join(LOSS_NAMES)}")
        if any(w < 0 for w in value.values()) or not sum(value.values()) > 0:
            raise ValueError(f"loss weights must be >= 0 with a positive sum (got {value})")
        return value
