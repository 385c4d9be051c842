"""How far a model looks, measured, and the halo that makes tiling seamless (DESIGN §3.1).

A tile's input is a crop of the mirror-padded scene, so a tiled core equals
whole-image inference exactly when (a) every core pixel's receptive field fits
inside its tile (halo >= context radius) and (b) every tile sees the same
downsampling phase as the whole image (halo and core multiples of the model's
stride), with the model in eval mode (BatchNorm uses running statistics).

Resampling is fine when its grid does not depend on the input size: nearest
upsampling, or bilinear with ``align_corners=False`` by an integer factor
(torchvision's FCN upsamples its stride-8 logits that way), so a shift by a
multiple of the stride shifts the output exactly.

Some architectures break (a) or shift-equivariance for any finite halo:
pooling over the whole input, GroupNorm statistics, attention over all pixels,
or bilinear upsampling with ``align_corners=True`` (its sampling grid stretches
with the input size). For those, a larger halo only shrinks the seams.

The radius is measured, not derived: backpropagate from a stride × stride
block of output pixels at the centre of a large random input and find the
farthest input pixel with a non-zero gradient (or one above ``rel_tol`` × the
largest). Random weights suffice for the *exact* radius, which is structural.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from geoseg.models.classic import CLASSIC_CONTEXT
from geoseg.models.registry import ARCHITECTURES, DEFAULT_ENCODER, build_model, output_stride, resolve_encoder

__all__ = [
    "EXACT_TILING",
    "GLOBAL_CONTEXT",
    "GLOBAL_HALO_CAP",
    "KNOWN_HALOS",
    "NOT_EQUIVARIANT",
    "context_radius",
    "exact_tiling",
    "has_global_context",
    "measure_halo",
    "safe_halo",
    "tiling_stride",
]

# Tiled == whole (to float round-off) once the halo covers the radius: only local
# convolutions, nearest upsampling, no resampling in the segmentation head; or
# (fcn_resnet50) one bilinear ×8 with align_corners=False after the whole network.
# The classic systems say themselves which see only locally (geoseg.models.classic): their upsampling is
# transposed convolutions, max-unpooling or bilinear by an integer factor with align_corners=False.
EXACT_TILING = frozenset({"unet", "unetplusplus", "linknet", "fcn_resnet50"}) | frozenset(
    name for name, context in CLASSIC_CONTEXT.items() if context is None
)

# What lets each other architecture see the whole input (smp 0.6, torchvision 0.29).
GLOBAL_CONTEXT = {
    "deeplabv3": "ASPP image pooling (AdaptiveAvgPool2d(1))",
    "deeplabv3plus": "ASPP image pooling (AdaptiveAvgPool2d(1))",
    "fpn": "GroupNorm statistics over the whole input",
    "pspnet": "pyramid pooling into 1/2/3/6 bins of the input",
    "manet": "position attention over all pixels and SE channel pooling",
    "pan": "global pooling in the FPA and GAU blocks",
    "upernet": "pyramid pooling module (PPM)",
    "deeplabv3_resnet50": "ASPP image pooling (torchvision ASPPPooling, AdaptiveAvgPool2d(1))",
    **{name: context for name, context in CLASSIC_CONTEXT.items() if context is not None},
}
# Local context, but not shift-equivariant: the head upsamples with bilinear
# ``align_corners=True``, whose grid depends on the tile size (up to 3/8 of a
# feature pixel off). Exact if that Upsample is switched to align_corners=False.
NOT_EQUIVARIANT = {"segformer": "head upsampling with bilinear align_corners=True"}

# Global-context models get the local paths' radius, never more than this: past
# it the seams shrink slowly while the halo costs (core + 2·halo)² / core².
GLOBAL_HALO_CAP = 256

# measure_halo(arch) for the default encoder (resnet18; torchvision's fixed resnet50),
# default options, 3 bands (smp 0.6, torchvision 0.29), so that the common case
# costs nothing at run time; tests/models/test_seams.py re-measures them (slow).
# fcn_resnet50: exact receptive-field radius 229 px (1e-6 effective: 225) → 232.
KNOWN_HALOS = {
    "unet": 288,
    "unetplusplus": 288,
    "linknet": 256,
    "segformer": 256,
    "pspnet": 72,
    "deeplabv3": 256,
    "deeplabv3plus": 256,
    "fpn": 256,
    "manet": 256,
    "pan": 256,
    "upernet": 256,
    "fcn_resnet50": 232,
    "deeplabv3_resnet50": 256,
    # The classic systems, with their papers' backbones: exact radii measured along a 64 × 4096 strip (a square
    # probe wide enough for FC-DenseNet103 does not fit in memory): FCN 218, SegNet 186, DeconvNet 378,
    # FC-DenseNet 56/67/103 413/508/930, DeepLab v1 217 (ParseNet's local paths too), v2 685 (resnet101);
    # FastFCN's and Gated-SCNN's local paths reach past the cap.
    **dict.fromkeys(("fcn32s", "fcn16s", "fcn8s", "deeplabv1", "parsenet"), 224),
    "segnet": 192,
    "deconvnet": 384,
    "fcdensenet56": 416,
    "fcdensenet67": 512,
    "fcdensenet103": 960,
    "deeplabv2": 688,
    "fastfcn": 256,
    "gatedscnn": 256,
}


def _options_global(options: dict | None) -> bool:
    options = options or {}
    return (
        options.get("decoder_attention_type") is not None  # scSE pools the whole input
        or "instance" in str(options.get("decoder_use_norm", "")).lower()
    )


def has_global_context(arch: str, options: dict | None = None) -> bool:
    """True if some output depends on every input pixel, so no finite halo is exact."""
    return arch in GLOBAL_CONTEXT or _options_global(options)


def exact_tiling(arch: str, options: dict | None = None) -> bool:
    """True if tiling with a halo >= the context radius reproduces whole-image inference."""
    return arch in EXACT_TILING and not _options_global(options)


def tiling_stride(arch: str, model: torch.nn.Module) -> int:
    """The alignment halo and core need: the encoder's stride, times 8 for PAN's FPA block.

    PAN's FPA block adds three more 2× max pools below the encoder; smaller multiples fail or misalign.
    :func:`geoseg.models.registry.output_stride` already applies PAN's factor.
    """
    return output_stride(model)


class _FreezeGlobal(TorchFunctionMode):
    """Treat operators that mix all pixels as constants, so gradients follow local paths only."""

    DETACH: ClassVar[frozenset[Callable[..., object]]] = frozenset(
        {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.softmax, torch.softmax, torch.matmul, torch.bmm}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.group_norm:  # normalise with the statistics held constant
            x, groups, weight, bias, eps = [*args, None, None, 1e-5][:5]
            eps = kwargs.get("eps", eps)
            xs = x.reshape(x.shape[0], groups, -1)
            mean, var = xs.mean(-1, keepdim=True).detach(), xs.var(-1, unbiased=False, keepdim=True).detach()
            y = ((xs - mean) / torch.sqrt(var + eps)).reshape(x.shape)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            weight, bias = kwargs.get("weight", weight), kwargs.get("bias", bias)
            y = y if weight is None else y * weight.reshape(shape)
            return y if bias is None else y + bias.reshape(shape)
        out = func(*args, **kwargs)
        if func in self.DETACH:
            return tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
        return out


def context_radius(
    model: torch.nn.Module,
    *,
    in_channels: int,
    stride: int,
    probe: int = 512,
    rel_tol: float = 0.0,
    local_only: bool = False,
    seed: int = 0,
) -> int | None:
    """Pixels from an output pixel to the farthest input pixel it depends on (not rounded).

    ``rel_tol=0`` gives the exact receptive field, ``1e-6`` the effective one.
    Returns None when the dependence reaches the edge of the ``probe``-pixel
    input: global context, or a probe too small. ``local_only`` ignores the
    global operators (pooling, softmax/matmul attention, GroupNorm statistics).
    Two random inputs are probed at once, so ReLU or max-pool gaps in one do
    not hide the reach. Runs in the model's dtype: float32 is ~15× faster than
    float64 on CPU, a zero gradient is zero in any precision, and the 1e-6
    radius matched float64's to a pixel.
    """
    probe = math.ceil(probe / stride) * stride
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    x = torch.randn(2, in_channels, probe, probe, generator=gen).to(param).requires_grad_(True)
    centre = probe // 2 // stride * stride  # a whole stride cell: every downsampling phase
    with torch.enable_grad():
        if local_only:
            with _FreezeGlobal():
                out = model(x)
        else:
            out = model(x)
        weights = torch.randn(out.shape[1], generator=gen).to(out)
        block = out[:, :, centre : centre + stride, centre : centre + stride]
        (block * weights[:, None, None]).sum().backward(inputs=[x])
    model.train(was_training)
    assert x.grad is not None  # backward(inputs=[x]) just filled it
    grad = x.grad.abs().sum(dim=(0, 1))
    mask = grad > rel_tol * grad.max()
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if min(rows[0], cols[0]) == 0 or max(rows[-1], cols[-1]) == probe - 1:
        return None
    last = centre + stride - 1
    return int(max(centre - rows[0], rows[-1] - last, centre - cols[0], cols[-1] - last))


def _round_up(value: int, stride: int) -> int:
    return max(stride, math.ceil(value / stride) * stride)


@functools.lru_cache(maxsize=64)
def _measure_halo(arch: str, encoder: str, options_json: str, in_channels: int) -> int:
    options = json.loads(options_json)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, in_channels=in_channels, num_classes=2, encoder=encoder, **options).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    stride = tiling_stride(arch, model)
    glob = has_global_context(arch, options)
    limit = 2 * GLOBAL_HALO_CAP + 2 * stride if glob else 2048
    probe = min(max(256, 16 * stride), limit)
    while True:  # grow the probe until the context fits inside it
        radius = context_radius(model, in_channels=in_channels, stride=stride, probe=probe, local_only=glob)
        if radius is not None or probe >= limit:
            break
        probe = min(2 * probe, limit)
    if glob:
        return min(
            _round_up(radius if radius is not None else GLOBAL_HALO_CAP, stride),
            max(stride, GLOBAL_HALO_CAP // stride * stride),
        )
    if radius is None:
        raise ValueError(f"{arch}/{encoder}: context wider than {limit} px; is the model global?")
    return _round_up(radius, stride)


def measure_halo(
    arch: str, *, encoder: str = DEFAULT_ENCODER, options: dict | None = None, in_channels: int = 3
) -> int:
    """Halo (a multiple of the tiling stride) covering the model's measured context.

    Exact-tiling models: the exact receptive-field radius, rounded up. Global-
    context models: the radius of their local paths, capped at GLOBAL_HALO_CAP.
    Measured on a randomly initialised model (the exact radius is structural),
    once per (arch, encoder, options, in_channels), then cached. Up to a minute
    of 2 CPU cores for resnet-sized encoders (unetplusplus), mostly seconds.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}")
    encoder = resolve_encoder(arch, encoder)  # one cache entry for torchvision's "resnet18" and "resnet50"
    return _measure_halo(arch, encoder, json.dumps(options or {}, sort_keys=True), in_channels)


def safe_halo(arch: str, *, encoder: str = DEFAULT_ENCODER, options: dict | None = None, in_channels: int = 3) -> int:
    """:func:`measure_halo`, from KNOWN_HALOS for the default encoder with default options."""
    if not options and arch in KNOWN_HALOS and resolve_encoder(arch, encoder) == resolve_encoder(arch):
        return KNOWN_HALOS[arch]  # the radius does not depend on the number of bands
    return measure_halo(arch, encoder=encoder, options=options, in_channels=in_channels)
