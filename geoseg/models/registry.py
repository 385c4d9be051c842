"""One registry, one signature: ``build_model(arch, *, in_channels, num_classes, **options)``.

Architectures come from segmentation-models-pytorch, never re-typed here, and
always start from random weights (``encoder_weights=None``): nothing is
downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch

from geoseg.errors import ModelError

__all__ = ["ARCHITECTURES", "build_model", "output_stride", "ModelInfo"]

# geoseg name → segmentation-models-pytorch architecture name
ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    encoder: str
    parameters: int
    stride: int


def _check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ModelError(f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_model(arch: str, *, in_channels: int, num_classes: int, encoder: str = "resnet18", **options) -> torch.nn.Module:
    """Build a randomly initialised segmentation model returning logits (N, classes, H, W)."""
    smp_name = _check_arch(arch)
    try:
        return smp.create_model(smp_name, encoder_name=encoder, encoder_weights=None,
                                in_channels=in_channels, classes=num_classes, **options)
    except KeyError as exc:
        raise ModelError(f"model.encoder: unknown encoder {encoder!r} for {arch} ({exc}); "
                         "see segmentation-models-pytorch's encoder list") from None
    except TypeError as exc:
        raise ModelError(f"model: option not accepted by {arch}: {exc}") from None


def output_stride(model: torch.nn.Module) -> int:
    """Tile sides (and halos) must be multiples of this.

    Usually the encoder's stride; PAN pools its deepest features 8× further
    (its FPA block), so it needs 8× that.
    """
    encoder = getattr(model, "encoder", None)
    stride = int(getattr(encoder, "output_stride", 32))
    return stride * 8 if type(model).__name__ == "PAN" else stride
