"""The model card: what a checkpoint's weights are, typed and versioned.

Written as ``model_card.json`` beside the weights by the train stage and read
back, validated, by everything that uses a checkpoint (prediction, the input
checks, run records, benchmarks). A card from another format version or edited
by hand into something invalid is refused in one line that says how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoseg.errors import CheckpointError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = [
    "CARD_FORMAT",
    "ModelCard",
    "Normalization",
    "PretrainedEncoder",
    "SeamCheck",
    "SeamEdge",
    "TilingFigure",
    "TrainingSummary",
    "card_from_json",
]

CARD_FORMAT: Final = "geoseg-model-card/1"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Frozen):
    """Per-band mean and standard deviation of the training scenes (raw digital numbers)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class TrainingSummary(_Frozen):
    """How the published weights were chosen: the best validation epoch, scored by mIoU or (instances) F1."""

    epochs_run: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    val_miou: float | None = Field(default=None, description="Best validation mIoU (semantic models).")
    val_f1: float | None = Field(default=None, description="Best validation F1 at mask IoU 0.5 (instance models).")


class PretrainedEncoder(_Frozen):
    """The pretrained weights the encoder started training from (``model.encoder_weights``).

    Only a record: a checkpoint holds every weight, so predicting from it never reads this file again.
    """

    weights: str = Field(description="As the job named them: a library's weights (imagenet) or a local file.")
    file: str = Field(description="The file read: in the Hugging Face or torch hub cache, or the local file.")
    sha256: str = Field(description="sha256 of that file.")


class SeamEdge(_Frozen):
    """One crop-mode pass with ``halo`` over the measured region: labels changed against whole-image prediction."""

    halo: int = Field(ge=0)
    changed_px: int = Field(ge=0, description="Pixels whose label differs from whole-image prediction.")
    edge_px: int = Field(gt=0, description="Pixels of core edge inside the region.")


class TilingFigure(_Frozen):
    """A candidate tiling for a large scene: its share of changed labels and its cost."""

    tile_size: int = Field(gt=0)
    halo: int = Field(ge=0)
    changed_percent: float = Field(ge=0, le=100, description="Labels that differ from whole-image prediction, %.")
    cost: float = Field(ge=1, description="Pixels through the model per pixel of the scene: (tile / core)².")


class SeamCheck(_Frozen):
    """Seams measured after training on held-out pixels (geoseg.infer.seams); what `tiling: auto` chooses by."""

    region: str = Field(description="Where it was measured: scene, window and size.")
    stride: int = Field(gt=0, description="The model's output stride: tiles and halos are multiples of it.")
    pixels: int = Field(gt=0)
    edges: tuple[SeamEdge, ...] = Field(min_length=1)
    tilings: tuple[TilingFigure, ...] = Field(description="Candidate tilings on a scene much larger than a tile.")
    activation_bytes_per_pixel: float = Field(
        gt=0, description="Bytes of every layer's output per input pixel (an upper bound of a tile's memory)."
    )


class ModelCard(_Frozen):
    """Everything needed to rebuild a checkpoint's model and feed it the right pixels."""

    format: Literal["geoseg-model-card/1"] = CARD_FORMAT
    geoseg_version: str | None = Field(default=None, description="geoseg version that trained the model.")
    arch: str = Field(description="Architecture name from `geoseg models`.")
    encoder: str = Field(description="Encoder (segmentation-models-pytorch) or backbone name.")
    options: dict[str, int | float | str | bool | list[int]] = Field(default_factory=dict)
    encoder_weights: PretrainedEncoder | None = Field(
        default=None, description="Pretrained encoder weights training started from (None: random init)."
    )
    classes: tuple[str, ...] = Field(min_length=2, description="Class names; index 0 is the background.")
    bands: tuple[int, ...] = Field(min_length=1, description="1-based bands the model reads, in order.")
    dtype: str = Field(description="Data type of the training imagery (e.g. uint8, uint16).")
    normalization: Normalization
    train_tile_size: int | None = Field(default=None, description="Training crop size in pixels.")
    tile_size: int | None = Field(default=None, description="Prediction tile size of the job that trained it.")
    halo: int | None = Field(default=None, description="Prediction halo of the job that trained it.")
    crs: str | None = Field(default=None, description="CRS of the first training scene.")
    pixel_size: tuple[float, float] | None = Field(
        default=None, description="Pixel size (x, y) of the first training scene."
    )
    loss: dict[str, float] | None = Field(default=None, description="Losses and weights it was trained with.")
    run: str | None = Field(
        default=None, description="Ray Train run name: a rerun of the same job finds its model by it."
    )
    training: TrainingSummary | None = None
    seams: SeamCheck | None = Field(
        default=None, description="Seam disagreement per candidate tiling (semantic models with validation)."
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def to_json(self) -> str:
        """The card as written to ``model_card.json`` (fields left unset are left out)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n"


def card_from_json(text: str, source: str | Path) -> ModelCard:
    """Parse and validate a model card.

    Raises CheckpointError (one line, with the fix) when it is not one this geoseg reads.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{source}: model card is not valid JSON ({exc}); retrain with `geoseg train JOB`, "
            "which writes a new checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{source}: a model card is a JSON object (got {type(data).__name__}); retrain with `geoseg train JOB`"
        )
    if data.get("format") != CARD_FORMAT:
        raise CheckpointError(
            f"{source}: format: {data.get('format')!r} is not a model card this geoseg reads "
            f"({CARD_FORMAT!r}); retrain with `geoseg train JOB`, or use the geoseg version that "
            "wrote it"
        )
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise CheckpointError(
            f"{source}: not a valid model card: {problems}; restore the file the train stage wrote "
            "or retrain with `geoseg train JOB`"
        ) from None


def _describe(err: ErrorDetails) -> str:
    field = ".".join(str(part) for part in err["loc"]) or "(top level)"
    message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    got = "" if err["type"] == "missing" or isinstance(err.get("input"), (dict, list)) else f" (got {err['input']!r})"
    return f"{field}: {message}{got}"
