"""FastFCN: an undilated ResNet, Joint Pyramid Upsampling (JPU) to 1/8, and a DeepLabV3 ASPP head.

Wu, Zhang, Huang, Liang, Yu, "FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic
Segmentation", arXiv:1903.11816, 2019 (code: github.com/wuhuikai/FastFCN).

What the paper describes: instead of a dilated backbone (output stride 8, slow), a plain ResNet (output
stride 32) and the JPU module, which recovers 1/8 features from conv3, conv4 and conv5 (torchvision's
layer2, layer3, layer4): each through a 3×3 convolution + BatchNorm + ReLU to ``jpu_channels`` (512)
channels; conv4's and conv5's upsampled to conv3's size (1/8: ×2 and ×4); the three concatenated; four
parallel separable convolutions with dilation 1, 2, 4 and 8 (in the authors' code: depthwise dilated 3×3,
BatchNorm, pointwise 1×1, then BatchNorm, ReLU), concatenated (4 × ``jpu_channels`` channels). Any head
follows; this module builds the paper's DeepLabV3 one, as the authors' code: ASPP with a 1×1 branch,
three 3×3 branches at rates 12, 24, 36 (DeepLabV3's rates at 1/8) and an image-pooling branch, each to
``head_channels`` (256) + BatchNorm + ReLU, concatenated, projected (1×1, BatchNorm, ReLU, Dropout2d 0.5), then a 3×3
convolution + BatchNorm + ReLU + Dropout2d 0.1 and a 1×1 classifier; the logits are bilinearly
upsampled ×8 to the input's size.

The model here: torchvision's ResNet (``weights=None``; ImageNet weights are loaded elsewhere), encoder
``"resnet50"`` (the paper's default), ``"resnet101"``, or ``"resnet18"``/``"resnet34"`` (undilated, so
BasicBlock is fine; their stages have 128/256/512 channels instead of 512/1024/2048). The first
convolution takes ``in_channels`` bands (Kaiming-normal, fan-out, as torchvision initialises it); the
JPU and head keep PyTorch's default initialisation, as the authors' code. Output stride 32 (the
backbone's): tiles must be multiples of 32, and 32 is the smallest (layer4 is then 1×1). Training
needs batch ≥ 2: the image-pooling branch's BatchNorm sees one value per channel and image.

Global context (``CONTEXT``): ASPP image pooling (AdaptiveAvgPool2d(1)) averages the whole input, so a
tiled prediction differs from the whole image's however wide the halo; everything else is local and
shift-equivariant: the local paths' receptive-field radius is 629 px for resnet50 (conv5's path through
the backbone 213, JPU's 3×3 at 1/32 32 and ×4 upsampling 32, its dilation 8 at 1/8 64, rate 36 at 1/8
288, the head's 3×3 8 and the ×8 upsampling 8; measured alike), 901 px for resnet101, 633 px for resnet18.

Deviations from the paper, and why:

- Upsampling by fixed integer factors with ``align_corners=False`` (JPU: ×2 and ×4; logits: ×8). The
  authors' code resizes to the target size with ``align_corners=True``, whose sampling grid stretches
  with the tile size and so breaks shift-equivariance across tiles (and is off by a fraction of a
  feature pixel from the 1/8 grid); with integer factors a tile shifted by a multiple of 32 gives
  shifted logits (apart from the image pooling), and the logits are exactly the input's size.
- The image-pooling branch is broadcast to the feature size (``expand``), which is what resizing a
  1×1 map bilinearly does.
- Backbone: torchvision's ResNet (7×7 stem); the authors use PyTorch-Encoding's "deep-base" ResNet
  (three 3×3 stem convolutions, 128 stem channels) with its own ImageNet weights.
- No auxiliary FCN head on conv4 (the authors' ``aux=True``, loss weight 0.4): it only serves a
  training loss, and parameters no loss reaches would break DDP; geoseg trains the main logits only.
- resnet18/34 allowed (the authors' code has resnet50/101/152).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.deeplabv2 import check_positive_int, check_positive_ints, check_sizes, resnet_features

__all__ = ["BUILDERS", "CONTEXT", "ENCODERS", "JPU", "ASPPHead", "FastFCN"]

ARCH = "fastfcn"
# The encoders FastFCN accepts, the paper's first (no dilation, so BasicBlock ResNets work too).
ENCODERS = ("resnet50", "resnet101", "resnet18", "resnet34")
JPU_DILATIONS = (1, 2, 4, 8)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _separable(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    """The authors' SeparableConv2d (depthwise dilated 3×3, BatchNorm, pointwise 1×1), then BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class JPU(nn.Module):
    """Joint Pyramid Upsampling: conv3/conv4/conv5 features (1/8, 1/16, 1/32) → 4 × ``width`` channels at 1/8."""

    def __init__(self, in_channels: Sequence[int], width: int, dilations: Sequence[int] = JPU_DILATIONS) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.conv3 = _conv_bn_relu(c3, width)
        self.conv4 = _conv_bn_relu(c4, width)
        self.conv5 = _conv_bn_relu(c5, width)
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(_separable(3 * width, width, d) for d in self.dilations)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        # The authors' order: conv5, conv4, conv3.
        joint = torch.cat([_upsample(self.conv5(c5), 4), _upsample(self.conv4(c4), 2), self.conv3(c3)], dim=1)
        return torch.cat([branch(joint) for branch in self.branches], dim=1)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average, 1×1 convolution, BatchNorm, ReLU, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _conv_bn_relu(in_channels, out_channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPPHead(nn.Module):
    """The authors' DeepLabV3 head: ASPP (1×1, three rates, image pooling), projection, 3×3, classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, channels, kernel=1)]
        branches += [_conv_bn_relu(in_channels, channels, dilation=rate) for rate in self.rates]
        self.branches = nn.ModuleList(branches)
        self.image_pool = ImagePooling(in_channels, channels)
        self.project = nn.Sequential(
            _conv_bn_relu((len(branches) + 1) * channels, channels, kernel=1), nn.Dropout2d(0.5)
        )
        self.block = nn.Sequential(_conv_bn_relu(channels, channels), nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [branch(x) for branch in self.branches] + [self.image_pool(x)]
        return self.classifier(self.block(self.project(torch.cat(features, dim=1))))


class FastFCN(nn.Module):
    """FastFCN (JPU + DeepLabV3 head) on a torchvision ResNet: (N, bands, H, W) → logits (N, classes, H, W).

    H and W must be multiples of 32 (the output stride); 32 is the smallest tile. Training needs batch ≥ 2.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        encoder: ``"resnet50"`` (the paper's), ``"resnet101"``, ``"resnet18"`` or ``"resnet34"``.
        jpu_channels: JPU width per path (the paper's 512); the JPU returns 4× as many.
        head_channels: ASPP branch and projection width (256, the authors' in_channels // 8).
        atrous_rates: the ASPP's 3×3 rates at 1/8 (DeepLabV3's 12, 24, 36).
    """

    output_stride = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "resnet50",
        jpu_channels: int = 512,
        head_channels: int = 256,
        atrous_rates: Sequence[int] = (12, 24, 36),
    ) -> None:
        super().__init__()
        check_sizes(in_channels, num_classes)
        jpu_channels = check_positive_int("jpu_channels", jpu_channels)
        head_channels = check_positive_int("head_channels", head_channels)
        rates = check_positive_ints("atrous_rates", atrous_rates, (12, 24, 36))
        self.backbone = resnet_features(encoder, in_channels, arch=ARCH, choices=ENCODERS, dilated=False)
        self.jpu = JPU(self.backbone.channels[1:], jpu_channels)
        self.head = ASPPHead(len(JPU_DILATIONS) * jpu_channels, head_channels, num_classes, rates)
        self.upsample = nn.Upsample(scale_factor=8, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c3, c4, c5 = self.backbone(x)  # layer2..layer4: 1/8, 1/16, 1/32
        return self.upsample(self.head(self.jpu(c3, c4, c5)))


# Registry name → builder; called as BUILDERS[name](in_channels=..., num_classes=..., **options).
BUILDERS: dict[str, Callable[..., nn.Module]] = {ARCH: FastFCN}
# What sees the whole input: no finite halo makes tiling exact.
CONTEXT: dict[str, str | None] = {ARCH: "ASPP image pooling (AdaptiveAvgPool2d(1))"}
