"""Gated-SCNN: a regular (texture) stream, a gated shape stream that predicts boundaries, and their fusion.

Takikawa, Acuna, Jampani & Fidler, "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation", ICCV 2019,
arXiv:1907.05740 (registry name ``gatedscnn``).

What the paper describes, and what is built here:

- Regular stream: a segmentation backbone at output stride 8. Here a torchvision ResNet (``weights=None``,
  option ``encoder``, default ``"resnet50"``) with layer3/layer4 dilated (output stride 8). The paper uses
  WideResNet-38 (and ResNet-50/101 in its ablations).
- Shape stream: residual blocks interleaved with Gated Convolutional Layers (GCL). Each GCL gates the shape
  features ``s`` with regular-stream features ``r``: ``alpha = sigmoid(C(s || r))`` and
  ``out = w * (s * (alpha + 1))`` with ``w`` a 1×1 convolution. The gates take layer2, layer3 and layer4 (res3,
  res4, res5), each first reduced to one channel by a 1×1 convolution and upsampled to the shape stream's
  resolution; ``C`` is BN → 1×1 conv → ReLU → 1×1 conv (to one channel) → BN, as in the authors' released
  code (the paper writes it as one 1×1 convolution). The stream ends in a 1×1 conv to one channel: the
  boundary logits, upsampled to the input.
- Fusion: the boundary probabilities concatenated with an image-gradient map, fused by a 1×1 convolution and a
  sigmoid, enter the ASPP (1×1 and three dilated 3×3 branches, an image-pooling branch and an edge branch, all
  ``aspp_channels`` wide); a DeepLabV3+ decoder (1×1 projection, upsampling, concatenation with 48 channels of
  low-level features, two 3×3 convolutions, classifier) gives logits upsampled to the input.

Deviations and why:

- Backbone: ResNet instead of WideResNet-38, since torchvision builds it without downloads. ``resnet18`` and
  ``resnet34`` (BasicBlock, which torchvision cannot dilate) run undilated at output stride 32.
- ASPP rates are (6, 12, 18) × 16 / output stride: (12, 24, 36) at output stride 8, as the authors' code;
  (3, 6, 9) at output stride 32.
- The shape stream runs at 1/4 of the input (layer1's resolution, entered through a 1×1 conv to
  ``shape_channels[0]``) instead of the full resolution of WideResNet's first block, to save memory; its
  boundary logits are upsampled ×4. Its widths are ``shape_channels`` (paper's code: 64, 32, 16, 8).
- Image gradient: the paper concatenates Canny edges of the RGB image (OpenCV, uint8). Here a Sobel gradient
  magnitude of the mean of all input bands, computed in torch without gradient: any band count, no cv2, no
  uint8 cast, local (no per-image threshold).
- Resampling keeps tiling shift-equivariant: every upsampling is bilinear by a fixed integer factor with
  ``align_corners=False`` (the code interpolates to sizes with ``align_corners=True``); the edge map reaches the
  ASPP resolution by average pooling over output-stride × output-stride blocks; the image-pooling feature is
  broadcast (what bilinear upsampling of one pixel gives).
- Low-level decoder features come from layer1 (1/4, as DeepLabV3+).
- ``forward`` returns the segmentation logits only, so prediction code is unchanged. In training mode the
  boundary logits (N, 1, H, W) are kept on ``self.edge_logits`` for a loss to read after ``forward``
  (:class:`geoseg.train.gscnn_loss.GatedSCNNLoss`); in eval mode ``self.edge_logits`` is None.

Context: the ASPP image-pooling branch averages the whole input, so tiles differ from the whole image however
large the halo (global context, as in the paper). Output stride 8 (32 for resnet18/34); the smallest tile that
works is one stride (8 or 32 px) in eval mode. Training needs a batch of more than one, or tiles whose deepest
features have more than one pixel: BatchNorm of the image-pooling branch cannot normalise a single value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from geoseg.errors import ModelError

__all__ = ["BUILDERS", "CONTEXT", "ENCODERS", "GatedConv", "GatedSCNN", "ShapeStream", "image_gradient"]

# Encoder name → (output channels of layer1..layer4, can dilate). Bottleneck ResNets dilate layer3/4 (stride 8).
ENCODERS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((64, 128, 256, 512), False),
    "resnet34": ((64, 128, 256, 512), False),
    "resnet50": ((256, 512, 1024, 2048), True),
    "resnet101": ((256, 512, 1024, 2048), True),
    "resnet152": ((256, 512, 1024, 2048), True),
    "wide_resnet50_2": ((256, 512, 1024, 2048), True),
    "wide_resnet101_2": ((256, 512, 1024, 2048), True),
}
ASPP_RATES_OS16 = (6, 12, 18)  # DeepLabV3's rates at output stride 16, scaled by 16 / output stride
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+ (and the authors' code): low-level features reduced to 48 channels
SHAPE_STRIDE = 4  # the shape stream and the decoder work at layer1's resolution


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _upsample(factor: int) -> nn.Module:
    return nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False) if factor > 1 else nn.Identity()


def image_gradient(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude (N, 1, H, W) of the mean of the bands, zero-padded, without gradient."""
    with torch.no_grad():
        gray = x.mean(dim=1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
        grad = F.conv2d(gray, torch.stack([kx, kx.t()]).unsqueeze(1), padding=1)
        return grad.pow(2).sum(dim=1, keepdim=True).sqrt()


class GatedConv(nn.Module):
    """Gated Convolutional Layer: ``w * (s * (sigmoid(C(s || r)) + 1))`` with a one-channel regular map ``r``."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.BatchNorm2d(channels + 1),
            nn.Conv2d(channels + 1, channels + 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels + 1, 1, 1),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.weight = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.xavier_normal_(self.weight.weight)  # as the authors' GatedSpatialConv2d

    def forward(self, shape: torch.Tensor, regular: torch.Tensor) -> torch.Tensor:
        alpha = self.gate(torch.cat([shape, regular], dim=1))
        return self.weight(shape * (alpha + 1))


class ShapeStream(nn.Module):
    """Layer1 features → residual blocks and GCLs gated by layer2/3/4 → boundary logits at the input's size."""

    def __init__(self, low_channels: int, gate_channels: Sequence[int], gate_factors: Sequence[int], widths: tuple):
        super().__init__()
        self.entry = nn.Conv2d(low_channels, widths[0], 1)
        self.blocks = nn.ModuleList(BasicBlock(w, w) for w in widths[:-1])
        self.reduce = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in itertools.pairwise(widths))
        self.side = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in gate_channels)  # the code's dsn3/dsn4/dsn7
        self.side_up = nn.ModuleList(_upsample(f) for f in gate_factors)
        self.gates = nn.ModuleList(GatedConv(w) for w in widths[1:])
        self.fuse = nn.Conv2d(widths[-1], 1, 1, bias=False)
        self.up = _upsample(SHAPE_STRIDE)

    def forward(self, low: torch.Tensor, regular: Sequence[torch.Tensor]) -> torch.Tensor:
        s = self.entry(low)
        for block, reduce, side, side_up, gate, r in zip(
            self.blocks, self.reduce, self.side, self.side_up, self.gates, regular, strict=True
        ):
            s = gate(reduce(block(s)), side_up(side(r)))
        return self.up(self.fuse(s))


class EdgeASPP(nn.Module):
    """ASPP with image pooling and an edge branch; concatenation order as the authors' code (pool, edge, rates)."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int], edge_pool: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels)] + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.image = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels))  # global context
        self.edge = nn.Sequential(nn.AvgPool2d(edge_pool), _conv_bn_relu(1, channels))

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        pooled = self.image(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        return torch.cat([pooled, self.edge(edge), *(branch(x) for branch in self.branches)], dim=1)


def _check_options(encoder: str, aspp_channels: int, shape_channels: Sequence[int]) -> tuple[int, ...]:
    if encoder not in ENCODERS:
        raise ModelError(
            f"model.encoder: gatedscnn builds a torchvision ResNet (got {encoder!r}); use one of {', '.join(ENCODERS)}"
        )
    if isinstance(aspp_channels, bool) or not isinstance(aspp_channels, int) or aspp_channels < 1:
        raise ModelError(f"model.options.aspp_channels: must be a whole number ≥ 1 (got {aspp_channels!r}); e.g. 256")
    ok = isinstance(shape_channels, (list, tuple)) and len(shape_channels) == 4
    if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in shape_channels):
        raise ModelError(
            f"model.options.shape_channels: must be 4 whole numbers ≥ 1, the shape stream's widths "
            f"(got {shape_channels!r}); e.g. [64, 32, 16, 8]"
        )
    return tuple(shape_channels)


def _backbone(encoder: str, in_channels: int, dilate: bool) -> ResNet:
    builder: Callable[..., ResNet] = getattr(torchvision.models, encoder)
    model = builder(weights=None, replace_stride_with_dilation=[False, dilate, dilate])
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
    model.fc = nn.Identity()  # unused: the keys stay torchvision's (backbone.conv1.weight, ...)
    return model


class GatedSCNN(nn.Module):
    """Gated-SCNN returning segmentation logits (N, num_classes, H, W); boundary logits on ``edge_logits``.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        encoder: torchvision ResNet of the regular stream (see :data:`ENCODERS`).
        aspp_channels: width of each ASPP branch and of the decoder.
        shape_channels: widths of the shape stream: its first residual block, then each of the three GCLs.
    """

    output_stride: int
    edge_logits: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "resnet50",
        aspp_channels: int = 256,
        shape_channels: Sequence[int] = (64, 32, 16, 8),
    ):
        super().__init__()
        widths = _check_options(encoder, aspp_channels, shape_channels)
        channels, dilate = ENCODERS[encoder]
        self.output_stride = 8 if dilate else 32
        strides = (8, self.output_stride, self.output_stride) if dilate else (8, 16, 32)  # layer2, layer3, layer4
        self.backbone = _backbone(encoder, in_channels, dilate)
        factors = [s // SHAPE_STRIDE for s in strides]
        self.shape_stream = ShapeStream(channels[0], channels[1:], factors, widths)
        self.edge_fuse = nn.Conv2d(2, 1, 1, bias=False)  # (boundary probability, image gradient) → edge map
        rates = [r * 16 // self.output_stride for r in ASPP_RATES_OS16]
        self.aspp = EdgeASPP(channels[3], aspp_channels, rates, self.output_stride)
        self.project = nn.Conv2d(6 * aspp_channels, aspp_channels, 1, bias=False)
        self.aspp_up = _upsample(self.output_stride // SHAPE_STRIDE)
        self.low_level = nn.Conv2d(channels[0], LOW_LEVEL_CHANNELS, 1, bias=False)
        self.head = nn.Sequential(
            _conv_bn_relu(aspp_channels + LOW_LEVEL_CHANNELS, aspp_channels, 3),
            _conv_bn_relu(aspp_channels, aspp_channels, 3),
            nn.Conv2d(aspp_channels, num_classes, 1, bias=False),
        )
        self.up = _upsample(SHAPE_STRIDE)
        self.edge_logits = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        f1 = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        f2 = b.layer2(f1)
        f3 = b.layer3(f2)
        f4 = b.layer4(f3)
        edge_logits = self.shape_stream(f1, (f2, f3, f4))
        edge = torch.sigmoid(self.edge_fuse(torch.cat([torch.sigmoid(edge_logits), image_gradient(x)], dim=1)))
        fused = self.aspp_up(self.project(self.aspp(f4, edge)))
        logits = self.head(torch.cat([self.low_level(f1), fused], dim=1))
        self.edge_logits = edge_logits if self.training else None
        return self.up(logits)


CONTEXT: dict[str, str | None] = {"gatedscnn": "ASPP image pooling (AdaptiveAvgPool2d(1))"}
BUILDERS: dict[str, Callable[..., nn.Module]] = {"gatedscnn": GatedSCNN}
