"""The VGG-16 body shared by FCN-32s/16s/8s, ParseNet and DeepLab-LargeFOV (see :mod:`geoseg.models.vgg_fcn`).

The thirteen 3×3 convolutions and five max pools are torchvision's VGG-16 layers, what ``vgg16(weights=None)
.features`` holds (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR
2015, arXiv:1409.1556), built by torchvision's own ``make_layers(cfgs["D"])`` without the 120-million-parameter
classifier that ``vgg16()`` would build and initialise (5 s of CPU) only to be thrown away. They are cut
into five stages that each end with their pool, so that heads can read pool3/pool4 (FCN's skips). The first
convolution is replaced for ``in_channels`` bands. Two options make the DeepLab variant:

- ``strided_pools``: the first ``strided_pools`` pools halve the resolution; the later ones keep it (3×3, stride 1,
  pad 1), and every convolution after a pool that kept its stride is dilated by 2 for each such pool, so that the
  filters see what they saw before ("hole algorithm": DeepLab's conv5 dilation 2 after pool4 at stride 1).
- ``pool_kernel``: 2 (VGG, FCN: 2×2, stride 2) or 3 (DeepLab: 3×3, stride 2, pad 1; both halve an even side).

Pools use floor mode (Caffe used ceil), so a side that is a multiple of ``2 ** strided_pools`` gives features of
exactly that fraction of it. Random initialisation only: torchvision's VGG init (Kaiming normal, fan-out) for the
convolutions, nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import vgg

__all__ = ["STAGE_CHANNELS", "VGG16_POOLS", "VGG16Body", "fc_head", "init_conv"]

# Indices of the five max pools in torchvision's vgg16().features (after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3).
VGG16_POOLS = (4, 9, 16, 23, 30)
# Channels of the features after each pool.
STAGE_CHANNELS = (64, 128, 256, 512, 512)


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise as torchvision's VGG does its convolutions: Kaiming normal (fan-out, ReLU), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _initialised_once(build: Callable[[], nn.Sequential]) -> nn.Sequential:
    """``build()``'s layers on the default device, their convolutions initialised by :func:`init_conv` only.

    Built on the meta device first: PyTorch's own default init of the 14.7 (VGG-16) or 119 (fc6/fc7) million
    weights, overwritten at once, would double the time a model takes to build.
    """
    device = torch.empty(0).device  # the default device ("meta" under `with torch.device("meta")`)
    with torch.device("meta"):
        layers = build()
    layers = layers.to_empty(device=device)
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            init_conv(layer)  # what torchvision's VGG.__init__ does
    return layers


def _dilated(conv: nn.Conv2d, dilation: int) -> nn.Conv2d:
    """The same 3×3 convolution (its weights kept), dilated with padding that keeps the size."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)
    return conv


class VGG16Body(nn.Module):
    """VGG-16's convolutions in five stages; ``forward`` returns the five pooled feature maps (pool1 ... pool5).

    Args:
        in_channels: input bands (the first convolution is rebuilt for them).
        strided_pools: how many pools (from the first) halve the resolution, 1 to 5; the output stride is
            ``2 ** strided_pools``. Later pools keep the size and the convolutions after them are dilated.
        pool_kernel: 2 (2×2 stride 2, VGG/FCN) or 3 (3×3 stride 2 pad 1, DeepLab).
    """

    def __init__(self, in_channels: int, *, strided_pools: int = 5, pool_kernel: int = 2) -> None:
        super().__init__()
        if not 1 <= strided_pools <= 5 or pool_kernel not in (2, 3):
            raise ValueError(f"strided_pools must be 1..5 and pool_kernel 2 or 3 (got {strided_pools}, {pool_kernel})")

        def build_layers() -> nn.Sequential:
            features = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)  # vgg16().features, without the classifier
            features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
            return features

        features = _initialised_once(build_layers)
        self.output_stride = 2**strided_pools
        stages = []
        start = 0
        for index, end in enumerate(VGG16_POOLS):
            layers = list(features[start:end])  # convolutions and ReLUs; the pool is rebuilt below
            start = end + 1
            dilation = 2 ** max(0, index - strided_pools)  # 1 before the first unstrided pool, then ×2 per pool
            for layer in layers:
                if isinstance(layer, nn.Conv2d) and dilation > 1:
                    _dilated(layer, dilation)
            stride = 2 if index < strided_pools else 1
            if pool_kernel == 2 and stride == 2:
                pool = nn.MaxPool2d(kernel_size=2, stride=2)
            else:
                pool = nn.MaxPool2d(kernel_size=3, stride=stride, padding=1)
            stages.append(nn.Sequential(*layers, pool))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x)
        return pooled


def fc_head(channels: int, *, kernel_size: int, dilation: int = 1, dropout: float = 0.5) -> nn.Sequential:
    """VGG's fc6 and fc7 as convolutions: fc6 ``kernel_size``² (dilated, 'same' padding), fc7 1×1, ReLU, dropout.

    Takes the 512 pool5 channels; both layers have ``channels`` outputs. Elementwise dropout (Caffe's) after each.
    """
    padding = dilation * (kernel_size - 1) // 2
    return _initialised_once(
        lambda: nn.Sequential(
            nn.Conv2d(STAGE_CHANNELS[-1], channels, kernel_size, padding=padding, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
    )
