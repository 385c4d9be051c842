"""FC-DenseNet ("Tiramisu"): DenseNet blocks in a U-shaped encoder-decoder, for semantic segmentation.

S. Jégou, M. Drozdzal, D. Vazquez, A. Romero, Y. Bengio, "The One Hundred Layers Tiramisu: Fully Convolutional
DenseNets for Semantic Segmentation", CVPR Workshops (CVPRW) 2017 (arXiv:1611.09326).

What the paper describes (its Tables 1 and 2, and the authors' Lasagne code, SimJeg/FC-DenseNet):

- a first 3×3 convolution with 48 filters;
- dense blocks: each layer is BN → ReLU → 3×3 conv (``growth_rate`` k filters) → dropout (p = 0.2), and its
  output is concatenated to the layer's input, so a block of n layers adds n·k channels;
- down path: dense block, its whole output (input included) kept as a skip connection, then a transition down:
  BN → ReLU → 1×1 conv (as many filters as inputs) → dropout → 2×2 max pool;
- a bottleneck dense block;
- up path: a transition up, a 3×3 transposed convolution of stride 2 applied only to the feature maps the
  previous dense block *created* (not to that block's input, which would explode the channel count), with as many
  filters as those maps; its output concatenated with the skip connection, then a dense block;
- a final 1×1 convolution to class scores (after the last block's whole output, input included).

Configurations (``layers_per_block`` lists the down blocks, the bottleneck, then the up blocks), with their
parameter counts for CamVid's 11 classes. The paper counts as the authors' code does (``get_all_param_values``,
which includes BatchNorm's mean and inverse standard deviation); trainable parameters are fewer:

- FC-DenseNet56: 4 layers per block, k = 12. Paper 1.5M; here 1,397,963 counted as the paper, 1,376,795 trainable.
- FC-DenseNet67: 5 layers per block, k = 16. Paper 3.5M; here 3,502,923 counted as the paper, 3,463,243 trainable.
- FC-DenseNet103: 4, 5, 7, 10, 12, bottleneck 15, 12, 10, 7, 5, 4, k = 16. Paper 9.4M; here 9,425,163 counted
  as the paper, 9,322,091 trainable.

FC-DenseNet67 and 103 match the paper's counts to 0.3 %. FC-DenseNet56's 1.5M cannot be had from its stated
configuration (4 layers per block, k = 12, 48 first filters): it gives 1.4M, as independent reimplementations
found (SimJeg/FC-DenseNet issue #31). The stated configuration is kept; the 1.5M figure is not reproduced.

Every convolution has a bias and every BN a scale and shift, as in the authors' code; weights are He-uniform
(Lasagne's ``HeUniform(gain='relu')``), biases zero.

Deviations from the paper, and why:

- Any number of input bands (``in_channels``); the paper's inputs are RGB. Random weights only.
- The transposed convolution has no padding (its output is 2h+1 on an h input) and is cropped to the skip
  connection's size keeping the first 2h rows and columns, which is what the authors' Lasagne code does with its
  'center' cropping of one extra pixel. The crop's offset is fixed (0), so it stays shift-equivariant.
- The number of pools follows ``layers_per_block``: its length must be odd (2·pools + 1) and the output stride is
  2**pools (32 for the paper's five). The paper's softmax is left to the loss: the model returns raw logits.

Output stride 32 with the default five transition downs: logits have the input's size for any side that is a
multiple of 32, 32 px included (the bottleneck is then 1×1); training with a batch of one needs 64 px (BatchNorm
cannot normalise a single value).

Context is local: convolutions, 2×2 max pools and fixed-offset transposed convolutions only, so tiling with a
stride-aligned halo that covers the receptive field reproduces whole-image inference exactly in eval mode
(dropout off). The receptive field grows with depth: the deepest path holds every 3×3 convolution of the network
(FC-DenseNet103's bottleneck alone, 15 of them at stride 32, spans 480 px each side), so the radius is several
hundred pixels for FC-DenseNet56 and over a thousand for 103; 128 px with one layer per block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from geoseg.errors import ModelError

__all__ = ["BUILDERS", "CONFIGS", "CONTEXT", "FCDenseNet"]

# registry name → (growth_rate, layers_per_block), the paper's Table 2
CONFIGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "fcdensenet56": (12, (4,) * 11),
    "fcdensenet67": (16, (5,) * 11),
    "fcdensenet103": (16, (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4)),
}


def _bn_relu_conv(in_ch: int, out_ch: int, kernel: int, dropout: float) -> list[nn.Module]:
    """BN → ReLU → 'same' conv → dropout: the unit of dense layers and transition downs."""
    layers: list[nn.Module] = [
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


class _DenseBlock(nn.Module):
    """A dense block: each layer sees the block's input and every earlier layer's output.

    Returns only the ``n_layers · growth_rate`` new feature maps (the caller concatenates the input where the
    paper does).
    """

    def __init__(self, in_ch: int, n_layers: int, growth_rate: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(*_bn_relu_conv(in_ch + i * growth_rate, growth_rate, 3, dropout)) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], dim=1)))
        return torch.cat(new, dim=1)


class _TransitionUp(nn.Module):
    """3×3 transposed convolution of stride 2 (no padding), cropped to the skip's size, concatenated after it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.deconv(x)[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([up, skip], dim=1)


def _check_options(growth_rate: object, layers_per_block: object, first_channels: object, dropout: object) -> None:
    """Refuse bad option values in one line naming the field and a fix."""
    for field, value, example in (("growth_rate", growth_rate, 16), ("first_channels", first_channels, 48)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(
                f"model.options.{field}: must be a whole number ≥ 1 (got {value!r}); e.g. {field}: {example}"
            )
    blocks = layers_per_block
    if (
        not isinstance(blocks, (list, tuple))
        or len(blocks) < 3
        or len(blocks) % 2 == 0
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks)
    ):
        raise ModelError(
            f"model.options.layers_per_block: must list an odd number (≥ 3) of whole numbers ≥ 1 — the down "
            f"blocks, the bottleneck, then the up blocks (got {blocks!r}); e.g. [4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4]"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ModelError(f"model.options.dropout: must be a probability in [0, 1) (got {dropout!r}); e.g. dropout: 0.2")


class FCDenseNet(nn.Module):
    """FC-DenseNet (Jégou et al., CVPRW 2017); the defaults are FC-DenseNet103.

    Args:
        in_channels: input bands.
        num_classes: logit channels.
        growth_rate: k, the filters of each dense layer.
        layers_per_block: layers of each dense block: the down blocks, the bottleneck, the up blocks (odd length;
            (length - 1) / 2 transition downs).
        first_channels: filters of the first 3×3 convolution.
        dropout: dropout probability after each dense layer and transition down.

    Logits (N, num_classes, H, W) for H, W multiples of ``output_stride`` (2**pools; 32 by default), one stride
    the smallest.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        growth_rate: int = 16,
        layers_per_block: Sequence[int] = CONFIGS["fcdensenet103"][1],
        first_channels: int = 48,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        _check_options(growth_rate, layers_per_block, first_channels, dropout)
        blocks = tuple(layers_per_block)
        pools = len(blocks) // 2
        self.output_stride = 2**pools
        self.first = nn.Conv2d(in_channels, first_channels, 3, padding=1)
        channels = first_channels
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        skips: list[int] = []
        for n in blocks[:pools]:
            self.down_blocks.append(_DenseBlock(channels, n, growth_rate, dropout))
            channels += n * growth_rate
            skips.append(channels)
            self.transitions_down.append(
                nn.Sequential(*_bn_relu_conv(channels, channels, 1, dropout), nn.MaxPool2d(2, 2))
            )
        self.bottleneck = _DenseBlock(channels, blocks[pools], growth_rate, dropout)
        self.up_blocks = nn.ModuleList()
        self.transitions_up = nn.ModuleList()
        upsampled = blocks[pools] * growth_rate  # only the previous block's new maps go up
        for n, skip in zip(blocks[pools + 1 :], reversed(skips), strict=True):
            self.transitions_up.append(_TransitionUp(upsampled))
            self.up_blocks.append(_DenseBlock(upsampled + skip, n, growth_rate, dropout))
            channels = upsampled + skip + n * growth_rate
            upsampled = n * growth_rate
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-uniform convolutions (Lasagne's ``HeUniform(gain='relu')``), zero biases; BN to (1, 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        skips: list[torch.Tensor] = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = down(x)
        new = self.bottleneck(x)
        for up, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips), strict=True):
            x = up(new, skip)
            new = block(x)
        return self.classifier(torch.cat([x, new], dim=1))


# registry name → what lets it see beyond its receptive field (None: purely local)
CONTEXT: dict[str, str | None] = dict.fromkeys(CONFIGS)
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(FCDenseNet, growth_rate=k, layers_per_block=blocks) for name, (k, blocks) in CONFIGS.items()
}
