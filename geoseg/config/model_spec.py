"""The job file's `model:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from geoseg.config.base import Strict

__all__ = ["WEIGHTS_FILE_SUFFIXES", "EncoderWeights", "ModelSpec"]

# A value ending in one of these (or holding a path separator) names a local file, anything else a library's weights.
WEIGHTS_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class EncoderWeights(Strict):
    """Pretrained weights for the encoder: a name the model library knows, or a local file.

    Written in the job as one value (``encoder_weights: imagenet`` or ``encoder_weights: weights/enc.safetensors``);
    the mapping form (``{name: imagenet}`` / ``{file: ...}``) is accepted too. The file is a mapping of its own so
    that a relative path is resolved against the job file while a name is never taken for a path.
    """

    name: str | None = Field(
        default=None,
        min_length=1,
        description="Weights the library names for this encoder: e.g. imagenet (smp encoders and torchvision "
        "backbones), ssl/swsl (smp resnets), timm (tu- encoders: timm's weights for the model name's tag).",
    )
    file: Path | None = Field(
        default=None, description="A local .safetensors file or torch state dict (.pth/.pt/.bin) of the encoder."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_one_value(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return {"file": value}
        if isinstance(value, str):
            names_a_file = "/" in value or "\\" in value or value.lower().endswith(WEIGHTS_FILE_SUFFIXES)
            return {"file": value} if names_a_file else {"name": value}
        return value

    @model_validator(mode="after")
    def _name_or_file(self) -> EncoderWeights:
        if (self.name is None) == (self.file is None):
            raise ValueError("give either the name of a library's weights (e.g. imagenet) or a local file, not both")
        if self.file is not None and self.file.suffix.lower() not in WEIGHTS_FILE_SUFFIXES:
            raise ValueError(
                f"a weights file ends in {', '.join(WEIGHTS_FILE_SUFFIXES)} (got {str(self.file)!r}); "
                "save the encoder's state dict with safetensors or torch.save"
            )
        return self

    @property
    def source(self) -> str | Path:
        """The name, or the file: what :func:`geoseg.models.pretrained.build_pretrained_model` takes."""
        return self.file if self.file is not None else str(self.name)


class ModelSpec(Strict):
    arch: str = Field(default="unet", description="Architecture name from `geoseg models` (e.g. unet, deeplabv3plus).")
    encoder: str = Field(default="resnet18", description="segmentation-models-pytorch encoder name.")
    encoder_weights: EncoderWeights | None = Field(
        default=None,
        description="Pretrained encoder weights training starts from: a name smp/timm/torchvision know (imagenet), "
        "read from their own cache (Hugging Face HF_HOME, torch hub TORCH_HOME) and never downloaded while a job "
        "runs (`geoseg weights fetch JOB` downloads them), or a local encoder state dict. Default: random init.",
    )
    weights: Path | None = Field(
        default=None, description="Optional local .safetensors file of the whole model to start from; never downloaded."
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

    @model_validator(mode="after")
    def _one_starting_point(self) -> ModelSpec:
        if self.weights is not None and self.encoder_weights is not None:
            raise ValueError(
                "model.weights sets every weight of the model, model.encoder_weights only the encoder's; "
                "remove one of them"
            )
        return self
