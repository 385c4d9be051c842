"""VGG-16 segmentation classics: FCN-32s/16s/8s, ParseNet and DeepLab-LargeFOV (v1), on one shared VGG-16 body.

**FCN** (``fcn32s``, ``fcn16s``, ``fcn8s``): Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, arXiv:1411.4038; Shelhamer, Long, Darrell, PAMI 2017, arXiv:1605.06211. VGG-16's
convolutions, its fully connected layers recast as convolutions (fc6 7×7 and fc7 1×1, 4096 channels, ReLU and
dropout 0.5 each), a 1×1 class scorer on fc7 ("score_fr"), and learned upsampling: transposed convolutions
initialised to bilinear interpolation. FCN-32s upsamples its stride-32 scores 32× at once; FCN-16s adds the
scores of pool4 (a 1×1 scorer initialised to zero) to the 2× upsampled fc7 scores and upsamples 16×; FCN-8s adds
pool3's as well, then upsamples 8×. As in the papers the intermediate 2× upsamplings are learned and the final one
is fixed to bilinear interpolation (``requires_grad`` False; it still counts as parameters), and the deconvolutions
have no bias. ``at_once=True`` is PAMI's "at-once" FCN-8s/16s: pool4 is scaled by 0.01 and pool3 by 0.0001 (fixed
constants) before their scorers, so that all skips can be trained together from the start.

**DeepLab-LargeFOV** (``deeplabv1``): Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with
Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015, arXiv:1412.7062. VGG-16 whose pools are 3×3 (stride
2, pad 1), with pool4 and pool5 at stride 1 and conv5 dilated by 2 ("hole algorithm"), fc6 3×3 with dilation 12
and 1024 channels, fc7 1×1 with 1024, dropout 0.5 after each, a 1×1 scorer (Gaussian, std 0.01) and bilinear
upsampling of the stride-8 scores by 8. The fully connected CRF of the paper is a separate post-processing step,
not part of this module.

**ParseNet** (``parsenet``): Liu, Rabinovich, Berg, "ParseNet: Looking Wider to See Better", ICLR 2016 workshop,
arXiv:1506.04579. On the DeepLab-LargeFOV body, as the paper does for PASCAL VOC (it used FCN-32s for SiftFlow and
PASCAL-Context): stride-8 features and 1024-channel fc layers, so finer logits and a light concatenation. fc7's
features are averaged over the whole input (global average pooling), the local fc7 features and the global vector
are each L2-normalised across channels and multiplied by a learned per-channel scale (initialised to ``norm_scale``,
default 10), the global vector is "unpooled" (broadcast to every position), both are concatenated (early fusion),
scored by a 1×1 convolution and upsampled 8× bilinearly.

Deviations from the papers, and why:

- 'Same' padding everywhere instead of FCN's pad-100 on conv1_1 followed by cropping: logits align with the input
  pixel for pixel, for any tile side that is a multiple of the output stride, and a shifted tile gives shifted
  logits (what tiling needs). fc6 is padded 3. The transposed convolutions have kernel 2k, stride k and padding
  k/2 (k = 2, 8, 16, 32), so they give exactly k× the size; their bilinear weights then put each input pixel's
  centre where ``F.interpolate(..., mode="bilinear", align_corners=False)`` does (the same values away from the
  border; at the border zeros are blended in instead of the edge being replicated).
- Pools use floor mode (Caffe: ceil). For DeepLab's 3×3 pad-1 pools Caffe gives H/2 + 1 for an even side H (its
  crops were odd, 321 and 513 px, where both modes agree); floor mode gives exactly H/2, so a multiple-of-8 tile
  gives features of exactly an eighth of its side. For FCN's 2×2 pools both modes agree on even sides.
- FCN's class scorer on fc7 gets a Gaussian init (std 0.01) instead of the reference's zeros: with a zero scorer a
  freshly built FCN outputs the same logits for any input, and geoseg measures the receptive field (the tiling halo)
  by backpropagating through a randomly initialised model. The skip scorers (pool4, pool3) are zero, as in the
  paper, so FCN-16s/8s start as the coarser net.
- Random initialisation only (torchvision's VGG init for the convolutions; no ImageNet weights are downloaded),
  and the first convolution takes any number of bands.
- ParseNet's upsampling and DeepLab's are ``nn.Upsample(scale_factor=8, mode="bilinear", align_corners=False)``.

Context. Derived: FCN's fc7 sees 404 × 404 input pixels (VGG-16's pool5 212, plus fc6's 7 taps 32 apart; the figure
ParseNet's paper quotes), DeepLab-LargeFOV's 419 × 419 (its body 227 at stride 8, plus fc6's 3 taps 96 apart).
Measured with :func:`geoseg.models.context.context_radius` (exact, 3 bands, ``fc_channels=64``, skip scorers made
non-zero): the farthest input pixel that a stride cell of logits depends on is 218 px away for fcn32s, fcn16s and
fcn8s (fc7's radius 202 around a score pixel's centre; the final bilinear upsampling blends in the neighbouring
score pixel, 32 px further, and the cell's edge is 16 px from its centre: 202 + 32 − 16) and 217 px for deeplabv1
(and for ParseNet's local path). Those four are local: tiled inference equals whole-image inference once the halo
covers that (224 px, a multiple of either stride). ParseNet's global pooling makes every output pixel depend on
every input pixel ("global context"), so no halo makes its tiles exact.

Smallest tile: one output stride, 32 × 32 for FCN (pool5 is 1 × 1), 8 × 8 for DeepLab and ParseNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ModelError
from geoseg.models.vgg_body import STAGE_CHANNELS, VGG16Body, fc_head

__all__ = ["BUILDERS", "CONTEXT", "DeepLabV1", "FCN8s", "FCN16s", "FCN32s", "ParseNet", "bilinear_upsampling"]

# PAMI's "at-once" FCN: fixed scales of pool4 and pool3 before their scorers.
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 0.0001}


def _check_int(name: str, value: object, *, low: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ModelError(f"model.options.{name}: must be a whole number ≥ {low} (got {value!r}); {fix}")


def _check_dropout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(
            f"model.options.dropout: must be a probability from 0 to below 1 (got {value!r}); "
            "use e.g. 0.5 (the paper's) or 0 for none"
        )


def _check_sizes(in_channels: object, num_classes: object) -> None:
    for field, value in (("bands", in_channels), ("classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{field}: the model needs at least one (got {value!r})")


def bilinear_upsampling(channels: int, factor: int, *, learnable: bool = True) -> nn.ConvTranspose2d:
    """A ConvTranspose2d giving exactly ``factor``× the size, initialised to bilinear interpolation per channel.

    Kernel 2·factor, stride factor, padding factor/2 (factor even), no bias: FCN's ``upsample_filt`` on the
    diagonal (channel c from channel c only), zeros elsewhere. Frozen when not ``learnable`` (FCN's final layer).
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"factor must be even and at least 2 (got {factor})")
    kernel = 2 * factor
    layer = nn.ConvTranspose2d(channels, channels, kernel, stride=factor, padding=factor // 2, bias=False)
    centre = factor - 0.5  # the kernel's centre, between its two middle taps
    taps = 1 - (torch.arange(kernel, dtype=torch.float32) - centre).abs() / factor
    with torch.no_grad():
        layer.weight.zero_()
        for c in range(channels):
            layer.weight[c, c] = taps[:, None] * taps[None, :]
    layer.weight.requires_grad_(learnable)
    return layer


def _scorer(in_channels: int, num_classes: int, *, zero: bool) -> nn.Conv2d:
    """A 1×1 class scorer: zeros (FCN's skip scorers) or Gaussian std 0.01 (DeepLab's fc8), zero bias."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    if zero:
        nn.init.zeros_(conv.weight)
    else:
        nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class _FCN(nn.Module):
    """FCN on VGG-16 with ``skips`` skip layers (0: FCN-32s, 1: FCN-16s with pool4, 2: FCN-8s with pool4 and pool3).

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        fc_channels: fc6/fc7 width (4096 in the paper).
        dropout: dropout probability after fc6 and after fc7 (0.5 in the paper).
        at_once: PAMI's at-once variant: scale pool4 by 0.01 and pool3 by 0.0001 before their scorers
            (FCN-16s/8s only).
    """

    output_stride = 32
    skips = 0

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        at_once: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes)
        _check_int("fc_channels", fc_channels, low=1, fix="use e.g. 4096 (the paper's) or 1024 for a lighter head")
        _check_dropout(dropout)
        if not isinstance(at_once, bool):
            raise ModelError(f"model.options.at_once: must be true or false (got {at_once!r})")
        if at_once and not self.skips:
            raise ModelError(
                f"model.options.at_once: fcn32s has no skip layers to scale (got {at_once!r}); remove at_once or use "
                "fcn16s / fcn8s"
            )
        self.body = VGG16Body(in_channels)
        self.fc = fc_head(fc_channels, kernel_size=7, dropout=dropout)
        self.score_fr = _scorer(fc_channels, num_classes, zero=False)
        self.scales = {name: (value if at_once else 1.0) for name, value in AT_ONCE_SCALES.items()}
        if self.skips >= 1:
            self.upscore2 = bilinear_upsampling(num_classes, 2)
            self.score_pool4 = _scorer(STAGE_CHANNELS[3], num_classes, zero=True)
        if self.skips >= 2:
            self.upscore_pool4 = bilinear_upsampling(num_classes, 2)
            self.score_pool3 = _scorer(STAGE_CHANNELS[2], num_classes, zero=True)
        final = self.output_stride >> self.skips  # 32, 16 or 8
        self.upscore_final = bilinear_upsampling(num_classes, final, learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.body(x)
        score = self.score_fr(self.fc(pooled[4]))
        if self.skips >= 1:
            score = self.upscore2(score) + self.score_pool4(pooled[3] * self.scales["pool4"])
        if self.skips >= 2:
            score = self.upscore_pool4(score) + self.score_pool3(pooled[2] * self.scales["pool3"])
        return self.upscore_final(score)


class FCN32s(_FCN):
    """FCN-32s: fc7 scores upsampled 32× (see the module doc). Smallest tile 32."""

    skips = 0


class FCN16s(_FCN):
    """FCN-16s: fc7 scores ×2 plus pool4 scores, upsampled 16× (see the module doc). Smallest tile 32."""

    skips = 1


class FCN8s(_FCN):
    """FCN-8s: FCN-16s's sum ×2 plus pool3 scores, upsampled 8× (see the module doc). Smallest tile 32."""

    skips = 2


def _check_large_fov(fc_channels: object, dropout: object, fc6_dilation: object) -> None:
    _check_int("fc_channels", fc_channels, low=1, fix="use e.g. 1024 (DeepLab-LargeFOV's)")
    _check_dropout(dropout)
    _check_int("fc6_dilation", fc6_dilation, low=1, fix="use 12 (DeepLab-LargeFOV's field of view)")


class DeepLabV1(nn.Module):
    """DeepLab-LargeFOV (see the module doc): output stride 8, local context. Smallest tile 8.

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        fc_channels: fc6/fc7 width (1024 in DeepLab-LargeFOV).
        dropout: dropout probability after fc6 and after fc7 (0.5).
        fc6_dilation: fc6's dilation (12 in DeepLab-LargeFOV).
    """

    output_stride = 8

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        fc_channels: int = 1024,
        dropout: float = 0.5,
        fc6_dilation: int = 12,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes)
        _check_large_fov(fc_channels, dropout, fc6_dilation)
        self.body = VGG16Body(in_channels, strided_pools=3, pool_kernel=3)
        self.fc = fc_head(fc_channels, kernel_size=3, dilation=fc6_dilation, dropout=dropout)
        self.score = _scorer(fc_channels, num_classes, zero=False)
        self.upsample = nn.Upsample(scale_factor=self.output_stride, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.score(self.fc(self.body(x)[4])))


class L2Norm(nn.Module):
    """ParseNet's normalisation: each position's feature vector divided by its L2 norm, times a learned scale.

    One scale per channel, all initialised to ``scale``.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=1e-10) * self.weight[None, :, None, None]


class ParseNet(DeepLabV1):
    """ParseNet on DeepLab-LargeFOV (see the module doc): output stride 8, global context. Smallest tile 8.

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        fc_channels: fc6/fc7 width (1024, DeepLab-LargeFOV's).
        dropout: dropout probability after fc6 and after fc7 (0.5).
        fc6_dilation: fc6's dilation (12).
        norm_scale: initial value of the learned per-channel scales of both L2 normalisations (10).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        fc_channels: int = 1024,
        dropout: float = 0.5,
        fc6_dilation: int = 12,
        norm_scale: float = 10.0,
    ) -> None:
        if isinstance(norm_scale, bool) or not isinstance(norm_scale, (int, float)) or not 0 < norm_scale < math.inf:
            raise ModelError(
                f"model.options.norm_scale: must be a positive number (got {norm_scale!r}); use 10 (the paper's)"
            )
        # DeepLab-LargeFOV's body and fc layers; its scorer reads the local and global features side by side.
        super().__init__(in_channels, num_classes, fc_channels=fc_channels, dropout=dropout, fc6_dilation=fc6_dilation)
        self.norm_local = L2Norm(fc_channels, norm_scale)
        self.norm_global = L2Norm(fc_channels, norm_scale)
        self.score = _scorer(2 * fc_channels, num_classes, zero=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.fc(self.body(x)[4])
        pooled = F.adaptive_avg_pool2d(local, 1)  # global context: the mean over the whole input
        unpooled = self.norm_global(pooled).expand_as(local)
        return self.upsample(self.score(torch.cat([self.norm_local(local), unpooled], dim=1)))


# Registry name → builder: BUILDERS[name](in_channels=..., num_classes=..., **options).
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "parsenet": ParseNet,
    "deeplabv1": DeepLabV1,
}
# Registry name → None (local: tiled == whole once the halo covers the receptive field) or what sees the whole input.
CONTEXT: dict[str, str | None] = {
    "fcn32s": None,
    "fcn16s": None,
    "fcn8s": None,
    "parsenet": "global average pooling of fc7 features (F.adaptive_avg_pool2d(·, 1)), broadcast to every position",
    "deeplabv1": None,
}
