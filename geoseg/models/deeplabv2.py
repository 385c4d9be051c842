"""DeepLab v2 (ResNet): a dilated ResNet, then ASPP-L, four dilated 3×3 classifiers summed.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", IEEE TPAMI 40(4), 2018
(arXiv:1606.00915).

What the paper describes (its ResNet-101 model, "DeepLab-ASPP-L"): ResNet-101 whose last two stages
(conv4_x, conv5_x = torchvision's layer3, layer4) replace their stride 2 by atrous (dilated) convolution,
so the features are at 1/8 of the input (output stride 8); on them, atrous spatial pyramid pooling with
the large rates: four parallel 3×3 convolutions with dilation 6, 12, 18 and 24, each producing class
scores directly, fused by summing them (v2's ASPP; v3's concatenation, 1×1 projection and image-level
pooling came later); the scores are bilinearly upsampled ×8 to the input's size.

The model here: torchvision's ResNet (``weights=None``; ImageNet weights are loaded elsewhere) with
``replace_stride_with_dilation=[False, True, True]``, the four rate branches (``atrous_rates``) as
``nn.Conv2d(2048, classes, 3, dilation=r, padding=r)`` with bias, summed, and
``nn.Upsample(scale_factor=8, mode="bilinear", align_corners=False)``. ``encoder`` is ``"resnet101"``
(the paper's) or ``"resnet50"``; resnet18/34 are refused because torchvision's BasicBlock refuses
dilation. The first convolution takes ``in_channels`` bands (Kaiming-normal, fan-out, as torchvision
initialises it). Purely local context (``CONTEXT``: None), but wide: the receptive-field radius is
685 px for resnet101 (conv1 3 + max pool 2 + layer1 12 + layer2 28 + layer3 360 + layer4 80 + rate 24 at
stride 8 192 + the ×8 upsampling 8; measured alike), 413 px for resnet50. Output stride 8; the smallest tile is
8 px (one stride; layer2 on are then 1×1, which BatchNorm accepts in eval mode, and in training only
with batch ≥ 2).

Deviations from the paper, and why:

- Upsampling: bilinear ×8 with ``align_corners=False`` inside the model, for tiles that are multiples of
  8, so that the logits are exactly the input's size and a tile shifted by a multiple of 8 gives shifted
  logits (tiling is exact). The paper's Caffe ``Interp`` layer samples an align-corners grid on inputs of
  8k + 1 px (e.g. 513), whose grid depends on the input size.
- BatchNorm trains as usual (the paper fine-tunes with BatchNorm frozen at ImageNet statistics: Caffe's
  batches were too small to update them). Freeze it in training if batches are tiny.
- The backbone is torchvision's ResNet v1.5 (stride in the 3×3 convolution, not the 1×1 of Caffe's
  ResNet-101) with torchvision's dilation convention (the first block of layer3/layer4 at dilation 1/2,
  the others at 2/4).
- No multi-scale input fusion (the paper's MSC training: scales 1, 0.75, 0.5, max-fused): resizing by
  0.75 is not an integer factor and would break shift-equivariance; that is a training-scheme choice.
- No fully connected CRF: it is post-processing on the logits, another module's job.
- Initialisation: the ASPP classifiers from N(0, 0.01²) with zero biases, as the released prototxt;
  the backbone as torchvision initialises it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50, resnet101

from geoseg.errors import ModelError

__all__ = [
    "BUILDERS",
    "CONTEXT",
    "ENCODERS",
    "DeepLabV2",
    "ResNetFeatures",
    "check_positive_int",
    "check_positive_ints",
    "check_sizes",
    "resnet_features",
]

ARCH = "deeplabv2"
# The encoders DeepLabV2 accepts, the paper's first: a dilated backbone needs Bottleneck blocks.
ENCODERS = ("resnet101", "resnet50")
_RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
_BASIC = ("resnet18", "resnet34")  # BasicBlock: torchvision refuses dilation > 1


def check_sizes(in_channels: int, num_classes: int) -> None:
    """Refuse a band or class count below one, in one line naming the job's field."""
    for field, name, value in (("bands", "in_channels", in_channels), ("classes", "num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{field}: the model needs at least one (got {value!r} as its {name})")


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int ≥ 1, or a one-line ModelError naming ``model.options.<name>``."""
    if not isinstance(value, int) or not _whole(value):
        raise ModelError(f"model.options.{name}: must be a whole number ≥ 1 (got {value!r}); e.g. {name}: 256")
    return value


def check_positive_ints(name: str, value: object, default: Sequence[int]) -> tuple[int, ...]:
    """``value`` as a non-empty tuple of ints ≥ 1 (a list from YAML is fine), or a one-line ModelError."""
    if isinstance(value, (list, tuple)) and value and all(_whole(v) for v in value):
        return tuple(value)
    raise ModelError(
        f"model.options.{name}: must be a list of whole numbers ≥ 1 (got {value!r}); e.g. {name}: {list(default)}"
    )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class ResNetFeatures(nn.Module):
    """A torchvision ResNet's stem and four stages, returning each stage's features (no pooling, no classifier).

    The attribute names are torchvision's (``conv1``, ``bn1``, ``layer1`` ...), so an ImageNet state dict
    loads into it with its ``fc.*`` entries dropped.
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        width = resnet.fc.in_features  # layer4's channels: 512 (BasicBlock) or 2048 (Bottleneck)
        self.channels = (width // 8, width // 4, width // 2, width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of layer1..layer4 (1/4, 1/8, then 1/16 and 1/32 unless dilated)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def resnet_features(
    encoder: str, in_channels: int, *, arch: str, choices: Sequence[str], dilated: bool
) -> ResNetFeatures:
    """A randomly initialised torchvision ResNet for ``in_channels`` bands, layer3/layer4 dilated if asked.

    Raises:
        ModelError: ``encoder`` is not one of ``choices`` (one line naming ``model.encoder``).
    """
    if encoder not in choices:
        why = ""
        if dilated and encoder in _BASIC:
            why = f"; {arch} dilates layer3/layer4 and torchvision's BasicBlock ({'/'.join(_BASIC)}) refuses dilation"
        raise ModelError(
            f"model.encoder: {arch} takes a torchvision ResNet, one of {', '.join(choices)} (got {encoder!r}){why}; "
            f"set model.encoder to {choices[0]!r}"
        )
    resnet = _RESNETS[encoder](weights=None, replace_stride_with_dilation=[False, dilated, dilated])
    if in_channels != 3:
        old = resnet.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
        resnet.conv1 = conv
    return ResNetFeatures(resnet)


class ASPPL(nn.Module):
    """DeepLab v2's atrous spatial pyramid pooling: one dilated 3×3 classifier per rate, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates
        )
        for conv in self.branches:
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.normal_(conv.weight, std=0.01)  # the released prototxt's gaussian filler
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.branches[0](x)
        for branch in self.branches[1:]:
            scores = scores + branch(x)
        return scores


class DeepLabV2(nn.Module):
    """DeepLab v2 (ASPP-L) on a dilated torchvision ResNet: (N, bands, H, W) → logits (N, classes, H, W).

    H and W must be multiples of 8 (the output stride); 8 is the smallest tile.

    Args:
        in_channels: input bands.
        num_classes: output classes.
        encoder: ``"resnet101"`` (the paper's) or ``"resnet50"``.
        atrous_rates: one 3×3 classifier branch per rate (the paper's ASPP-L: 6, 12, 18, 24).
    """

    output_stride = 8

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "resnet101",
        atrous_rates: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        check_sizes(in_channels, num_classes)
        rates = check_positive_ints("atrous_rates", atrous_rates, (6, 12, 18, 24))
        self.backbone = resnet_features(encoder, in_channels, arch=ARCH, choices=ENCODERS, dilated=True)
        self.aspp = ASPPL(self.backbone.channels[-1], num_classes, rates)
        self.upsample = nn.Upsample(scale_factor=8, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]  # layer4, 1/8 of the input
        return self.upsample(self.aspp(features))


# Registry name → builder; called as BUILDERS[name](in_channels=..., num_classes=..., **options).
BUILDERS: dict[str, Callable[..., nn.Module]] = {ARCH: DeepLabV2}
# None: purely local context (tiled == whole once the halo covers the receptive field).
CONTEXT: dict[str, str | None] = {ARCH: None}
