"""SegNet and DeconvNet: VGG-16 encoders whose decoders unpool with the encoder's max-pooling indices.

**SegNet** — V. Badrinarayanan, A. Kendall, R. Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", IEEE TPAMI 39(12), 2017 (arXiv:1511.00561). The encoder is VGG-16's 13
convolutions, each followed by BatchNorm and ReLU, in five stages that end with a 2×2 max pool of stride 2 that
keeps the argmax positions ("pooling indices"). The decoder mirrors it: each stage max-unpools its input to the
encoder stage's size with that stage's indices (a sparse map: values land where the maxima were, zeros elsewhere),
then densifies it with 3×3 conv + BN + ReLU layers, the last of each stage narrowing to the next stage's width
(512, 512, 256, 128, 64). A final convolution maps the 64 channels to class scores (the paper's soft-max
classifier; its Caffe model uses a 3×3 kernel, ``classifier_kernel=1`` gives a 1×1 one). 29.5M parameters for
CamVid's 11 classes, as the paper counts (29,449,355 here).

**DeconvNet** — H. Noh, S. Hong, B. Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015
(arXiv:1505.04366). The same VGG-16 encoder (with BatchNorm after every layer, as the paper adds), then fc6 (7×7
conv, 4096 channels) and fc7 (1×1 conv, 4096 channels); the decoder mirrors all of it: a 7×7 deconvolution back
to 512 channels, then per stage unpooling with the switches (indices) and 3×3 deconvolutions
(``ConvTranspose2d`` stride 1, padding 1) with BN + ReLU (512, 512, 256, 128, 64 wide, as the paper's Table 1),
and a 1×1 score convolution. ``fc_channels`` sets fc6/fc7's width. 251,805,653 parameters for 21 classes (the
SegNet paper counts DeconvNet's as 252M), almost all in fc6 and its mirror.

Deviations from the papers, and why:

- DeconvNet's fc6 is a 7×7 convolution with "same" padding (3), and its mirror a 7×7 transposed convolution with
  padding 3, instead of the paper's valid 7×7 convolution that collapses pool5's 7×7 map (of a 224² input) to
  1×1 and the 7×7 deconvolution that expands it back. The valid version works for one input size only (224 px);
  "same" padding keeps pool5's size, so any tile that is a multiple of 32 works and a tile shifted by 32 px gives
  shifted logits. fc6 then slides over pool5 (each output sees a 7×7 window of it) instead of seeing all of it.
- The DeconvNet paper trains in two stages on object-centred crops and, at test time, aggregates predictions
  over ~2000 object proposals (and ensembles with FCN, "EDeconvNet"); here it is one network applied to whole
  tiles, without proposals or ensembling.
- Any number of input bands: the first convolution takes ``in_channels`` (VGG's takes 3); weights are random
  (He initialisation, as VGG's torchvision builder and the SegNet paper), never downloaded.
- The encoder is torchvision's ``vgg16_bn(weights=None).features``, built on the meta device so that VGG's
  unused 120M-parameter classifier is never allocated, then initialised as torchvision does.

Output stride 32 (five 2×2 max pools); logits have the input's size for any side that is a multiple of 32,
32 px included (pool5 is then 1×1). Training with a batch of one needs 64 px for DeconvNet (BatchNorm after fc6
and fc7 cannot normalise a single value); SegNet trains at 32.

Context is local: every layer is a convolution, a max pool or a max unpool on the pooling grid, so tiling with a
halo that covers the receptive field (stride-aligned) reproduces whole-image inference exactly in eval mode.
The receptive-field radius is 186 px for SegNet and 378 px for DeconvNet (measured by
``geoseg.models.context.context_radius``; fc6 and its mirror add 2 × 3 × 32 px).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import vgg16_bn

from geoseg.errors import ModelError

__all__ = ["BUILDERS", "CONTEXT", "DeconvNet", "SegNet"]

# Channels of VGG-16's five stages; the decoder of stage i narrows to stage i-1's width.
_STAGE_WIDTHS = (64, 128, 256, 512, 512)


def _positive_int(value: object, field: str, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"model.options.{field}: must be a whole number ≥ 1 (got {value!r}); e.g. {field}: {example}")
    return value


def _init_conv(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation, as torchvision's VGG: fan-out, ReLU gain, zero bias; BN to (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0, fresh running statistics


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, *, transposed: bool = False) -> list[nn.Module]:
    """One 'same'-padded (de)convolution + BatchNorm + ReLU: the unit both networks repeat."""
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_type(in_ch, out_ch, kernel, padding=kernel // 2)
    return [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def _vgg16_bn_stages(in_channels: int) -> nn.ModuleList:
    """The convolutions of torchvision's ``vgg16_bn``, in five stages split at its max pools (dropped).

    The first convolution takes ``in_channels``.

    Built on the meta device (VGG's classifier is never allocated), then materialised on the current default
    device and initialised as torchvision does.
    """
    with torch.device("meta"):
        features = vgg16_bn(weights=None).features
    device = torch.empty(0).device  # the caller's default device (a ``with torch.device(...)`` block included)
    features = features.to_empty(device=device)
    _init_conv(features)
    stages: list[nn.Sequential] = []
    current: list[nn.Module] = []
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
        else:
            current.append(layer)
    first = stages[0][0]
    assert isinstance(first, nn.Conv2d)
    stages[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)  # VGG's is 3×3, padding 1
    _init_conv(stages[0][0])
    return nn.ModuleList(stages)


def _decoder_stages(encoder: nn.ModuleList, *, transposed: bool, last_convs: int) -> nn.ModuleList:
    """The encoder's mirror, deepest stage first.

    Each stage has as many (de)conv + BN + ReLU layers as the encoder stage has convolutions, the last narrowing to
    the shallower stage's width; the shallowest stage has ``last_convs``, all 64 wide.
    """
    stages: list[nn.Sequential] = []
    for i in reversed(range(len(encoder))):
        width = _STAGE_WIDTHS[i]
        n_convs = sum(isinstance(m, nn.Conv2d) for m in encoder[i].modules()) if i > 0 else last_convs
        out = _STAGE_WIDTHS[i - 1] if i > 0 else width
        layers: list[nn.Module] = []
        for j in range(n_convs):
            layers += _conv_bn_relu(width, out if j == n_convs - 1 else width, transposed=transposed)
        stages.append(nn.Sequential(*layers))
    decoder = nn.ModuleList(stages)
    _init_conv(decoder)
    return decoder


class _UnpoolingNet(nn.Module):
    """VGG-16-BN encoder, pooling with indices; ``bridge`` between pool5 and the decoder; unpooling decoder."""

    output_stride: int = 32

    def __init__(self, in_channels: int, *, transposed: bool, last_convs: int) -> None:
        super().__init__()
        self.down = _vgg16_bn_stages(in_channels)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.bridge: nn.Module = nn.Identity()
        self.up = _decoder_stages(self.down, transposed=transposed, last_convs=last_convs)
        self.classifier: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches: list[tuple[torch.Tensor, torch.Size]] = []
        for stage in self.down:
            x = stage(x)
            size = x.shape
            x, indices = self.pool(x)
            switches.append((indices, size))
        x = self.bridge(x)
        for stage, (indices, size) in zip(self.up, reversed(switches), strict=True):
            x = stage(self.unpool(x, indices, output_size=size[-2:]))
        return self.classifier(x)


class SegNet(_UnpoolingNet):
    """SegNet (Badrinarayanan et al., TPAMI 2017): VGG-16-BN encoder, decoder unpooling with its indices.

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        classifier_kernel: the final convolution's kernel, 3 (the authors' Caffe model) or 1.

    Logits (N, num_classes, H, W) for H, W multiples of 32 (32 px the smallest).
    """

    def __init__(self, in_channels: int, num_classes: int, *, classifier_kernel: int = 3) -> None:
        if (
            isinstance(classifier_kernel, bool)
            or not isinstance(classifier_kernel, int)
            or classifier_kernel not in (1, 3)
        ):
            raise ModelError(
                f"model.options.classifier_kernel: SegNet's classifier is a 3×3 or 1×1 convolution "
                f"(got {classifier_kernel!r}); use 3 (the default) or 1"
            )
        super().__init__(in_channels, transposed=False, last_convs=1)
        self.classifier = nn.Conv2d(_STAGE_WIDTHS[0], num_classes, classifier_kernel, padding=classifier_kernel // 2)


class DeconvNet(_UnpoolingNet):
    """DeconvNet (Noh et al., ICCV 2015): VGG-16-BN, fc6/fc7 as convolutions, mirrored unpooling + deconvolutions.

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        fc_channels: width of fc6 and fc7 (the paper's 4096).

    fc6 is 7×7 with padding 3 and its mirror a 7×7 transposed convolution with padding 3 (the paper's are
    unpadded, which fixes the input to 224 px; see the module docstring). Logits (N, num_classes, H, W) for H, W
    multiples of 32 (32 px the smallest; 64 px to train with a batch of one).
    """

    def __init__(self, in_channels: int, num_classes: int, *, fc_channels: int = 4096) -> None:
        fc_channels = _positive_int(fc_channels, "fc_channels", 4096)
        super().__init__(in_channels, transposed=True, last_convs=2)
        width = _STAGE_WIDTHS[-1]
        self.bridge = nn.Sequential(
            *_conv_bn_relu(width, fc_channels, 7),  # fc6
            *_conv_bn_relu(fc_channels, fc_channels, 1),  # fc7
            *_conv_bn_relu(fc_channels, width, 7, transposed=True),  # deconv-fc6
        )
        _init_conv(self.bridge)
        self.classifier = nn.Conv2d(_STAGE_WIDTHS[0], num_classes, 1)


# registry name → what lets it see beyond its receptive field (None: purely local)
CONTEXT: dict[str, str | None] = {"segnet": None, "deconvnet": None}
BUILDERS: dict[str, Callable[..., nn.Module]] = {"segnet": SegNet, "deconvnet": DeconvNet}
