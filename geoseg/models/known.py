"""What the registry's models are known to be, without building them (and so without importing torch).

``geoseg validate`` checks a job's tile sizes against its model's output stride. Building a model
to read its stride costs importing torch, smp and torchvision (~4 s), which a check that should
answer in a second cannot pay. This table holds the strides of the common cases;
:func:`known_stride` answers from it, and None for anything else: the caller then builds the
model (:func:`geoseg.models.registry.build_model`), which also checks every option.
``tests/models/test_known.py`` builds every case the table answers and compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ARCHITECTURE_NAMES", "DEFAULT_BACKBONES", "INSTANCE_ARCHITECTURE_NAMES", "is_instance_arch", "known_stride"]

# The registry's names, in its order (geoseg.models.registry.ARCHITECTURES; a test keeps them equal).
ARCHITECTURE_NAMES = (
    "unet",
    "unetplusplus",
    "deeplabv3",
    "deeplabv3plus",
    "fpn",
    "pspnet",
    "linknet",
    "manet",
    "pan",
    "upernet",
    "segformer",
    "fcn_resnet50",
    "deeplabv3_resnet50",
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "parsenet",
    "deeplabv1",
    "segnet",
    "deconvnet",
    "fcdensenet56",
    "fcdensenet67",
    "fcdensenet103",
    "deeplabv2",
    "fastfcn",
    "gatedscnn",
    "maskrcnn_resnet18_fpn",
    "maskrcnn_resnet50_fpn",
)
INSTANCE_ARCHITECTURE_NAMES = ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn")

# Output stride with default options (smp 0.6, torchvision 0.29). For smp, with any of
# _SMP_ENCODERS: each halves the resolution at every one of smp's default five stages. PSPNet
# stops at encoder_depth 3, the DeepLabs dilate their last stages, PAN pools 8x below its encoder.
_DEFAULT_STRIDES = {
    "unet": 32,
    "unetplusplus": 32,
    "deeplabv3": 8,
    "deeplabv3plus": 16,
    "fpn": 32,
    "pspnet": 8,
    "linknet": 32,
    "manet": 32,
    "pan": 128,
    "upernet": 32,
    "segformer": 32,
    "fcn_resnet50": 8,
    "deeplabv3_resnet50": 8,
    # geoseg.models.classic, with the paper's backbone (what the registry default "resnet18" means for them)
    **dict.fromkeys(("fcn32s", "fcn16s", "fcn8s", "segnet", "deconvnet", "fastfcn"), 32),
    **dict.fromkeys(("fcdensenet56", "fcdensenet67", "fcdensenet103"), 32),
    **dict.fromkeys(("parsenet", "deeplabv1", "deeplabv2", "gatedscnn"), 8),
    "maskrcnn_resnet18_fpn": 32,
    "maskrcnn_resnet50_fpn": 32,
}
_SMP_ENCODERS = frozenset({"resnet18", "resnet34", "resnet50"})
# The backbone built when a job names none: torchvision's fixed recipes and the classic systems (their paper's)
# take the registry default ("resnet18", meaning "the architecture's own backbone") or this one.
DEFAULT_BACKBONES = {
    "fcn_resnet50": "resnet50",
    "deeplabv3_resnet50": "resnet50",
    "maskrcnn_resnet18_fpn": "resnet18",
    "maskrcnn_resnet50_fpn": "resnet50",
    **dict.fromkeys(("fcn32s", "fcn16s", "fcn8s", "parsenet", "deeplabv1"), "vgg16"),
    **dict.fromkeys(("segnet", "deconvnet"), "vgg16_bn"),
    **dict.fromkeys(("fcdensenet56", "fcdensenet67", "fcdensenet103"), "dense_blocks"),
    "deeplabv2": "resnet101",
    "fastfcn": "resnet50",
    "gatedscnn": "resnet50",
}
# U-Nets whose only geometry option is encoder_depth, with one decoder channel count per stage.
_DEPTH_OPTIONS = frozenset({"unet", "unetplusplus"})
_DEFAULT_DEPTH = 5


def is_instance_arch(arch: str) -> bool:
    """:func:`geoseg.models.instance.is_instance_arch`, without importing torchvision."""
    return arch in INSTANCE_ARCHITECTURE_NAMES


def known_stride(arch: str, encoder: str, options: Mapping[str, Any]) -> int | None:
    """The output stride ``build_model(arch, encoder=encoder, **options)`` reports, or None when not known here.

    None also for every combination the registry might refuse: only models that build are in the table.
    """
    if arch not in _DEFAULT_STRIDES:
        return None
    if arch in DEFAULT_BACKBONES:
        fixed = encoder in ("resnet18", DEFAULT_BACKBONES[arch]) and not options
        return _DEFAULT_STRIDES[arch] if fixed else None
    if encoder not in _SMP_ENCODERS:
        return None
    if not options:
        return _DEFAULT_STRIDES[arch]
    if arch in _DEPTH_OPTIONS and set(options) <= {"encoder_depth", "decoder_channels"}:
        depth = options.get("encoder_depth", _DEFAULT_DEPTH)
        channels = options.get("decoder_channels")
        if _whole(depth) and 1 <= depth <= _DEFAULT_DEPTH and _channels_per_stage(channels, depth):
            return 2**depth
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _channels_per_stage(channels: object, depth: int) -> bool:
    """Positive whole channel counts, one per stage (left out: smp's five defaults, so only at depth 5)."""
    if channels is None:
        return depth == _DEFAULT_DEPTH
    return (
        isinstance(channels, (list, tuple))
        and len(channels) == depth
        and all(_whole(count) and count > 0 for count in channels)
    )
