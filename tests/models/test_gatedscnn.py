"""Gated-SCNN: logits of the input's size for any band count, the paper's structure (gated shape stream, fusion,
ASPP rates), a parameter count summed by hand, training, global context, and bad options refused in one line."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torch.nn.functional as F

from geoseg.errors import ModelError
from geoseg.models.gatedscnn import BUILDERS, CONTEXT, GatedConv, GatedSCNN, ShapeStream, image_gradient

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5
SMALL = {"aspp_channels": 16, "shape_channels": (8, 8, 8, 8)}


def small(encoder: str = "resnet18", bands: int = 3) -> GatedSCNN:
    torch.manual_seed(0)
    return GatedSCNN(bands, CLASSES, encoder=encoder, **SMALL)


@functools.cache
def shared(encoder: str = "resnet18", bands: int = 3) -> GatedSCNN:
    """Built once (initialising a ResNet takes most of the time); eval mode, never modified."""
    return small(encoder, bands).eval()


@pytest.mark.parametrize(
    ("encoder", "bands", "stride", "sizes"),
    [
        *(("resnet18", bands, 32, [(32, 32), (64, 96)]) for bands in (1, 3, 4)),
        ("resnet50", 4, 8, [(8, 8), (16, 24)]),  # dilated: the smallest tile is one stride
    ],
)
def test_logits_match_the_input(encoder, bands, stride, sizes):
    model = shared(encoder, bands)
    assert model.output_stride == stride
    with torch.no_grad():
        for h, w in sizes:
            assert model(torch.randn(1, bands, h, w)).shape == (1, CLASSES, h, w)
    assert model.edge_logits is None  # eval mode keeps no boundary logits


def test_training_mode_keeps_the_boundary_logits():
    model = small().train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, CLASSES, 64, 64)
    assert model.edge_logits is not None and model.edge_logits.shape == (2, 1, 64, 64)
    assert model.edge_logits.requires_grad
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert model.edge_logits is None


def _conv(cin: int, cout: int, k: int = 1, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c


def _basic_block(w: int) -> int:
    return 2 * _conv(w, w, 3) + 2 * _bn(w)


def _gcl(c: int) -> int:  # BN(c+1), 1×1 (c+1 → c+1), ReLU, 1×1 (c+1 → 1), BN(1), then the 1×1 weight c → c
    return _bn(c + 1) + _conv(c + 1, c + 1, bias=True) + _conv(c + 1, 1, bias=True) + _bn(1) + _conv(c, c)


def test_parameter_count_of_the_default_configuration():
    resnet50 = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's published count, less the ImageNet classifier
    shape = (
        _conv(256, 64, bias=True)  # layer1 → 64
        + sum(_basic_block(w) for w in (64, 32, 16))
        + _conv(64, 32, bias=True)
        + _conv(32, 16, bias=True)
        + _conv(16, 8, bias=True)
        + sum(_conv(c, 1, bias=True) for c in (512, 1024, 2048))  # layer2/3/4 → one channel for the gates
        + sum(_gcl(c) for c in (32, 16, 8))
        + _conv(8, 1)  # → boundary logits
    )
    fuse = _conv(2, 1)  # (boundary probability, image gradient) → edge map
    aspp = (
        2 * (_conv(2048, 256) + _bn(256))  # 1×1 branch and image pooling
        + 3 * (_conv(2048, 256, 3) + _bn(256))  # rates 12, 24, 36
        + _conv(1, 256)  # edge branch
        + _bn(256)
    )
    decoder = (
        _conv(6 * 256, 256)
        + _conv(256, 48)
        + _conv(256 + 48, 256, 3)
        + _bn(256)
        + _conv(256, 256, 3)
        + _bn(256)
        + _conv(256, CLASSES)
    )
    with torch.device("meta"):  # shapes only: no time spent initialising 40 M weights
        model = GatedSCNN(3, CLASSES)
    assert sum(p.numel() for p in model.parameters()) == resnet50 + shape + fuse + aspp + decoder == 40_536_813


def test_sgd_lowers_the_loss_and_reaches_every_parameter():
    model = small().train()
    torch.manual_seed(1)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, CLASSES, (2, 64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if not losses:  # the shape stream feeds the segmentation: every parameter gets a gradient (DDP needs it)
            assert [n for n, p in model.named_parameters() if p.grad is None] == []
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("encoder", "bands", "rates", "features"), [("resnet50", 4, [12, 24, 36], 8), ("resnet18", 3, [3, 6, 9], 2)]
)
def test_aspp_rates_and_output_stride_are_the_papers(encoder, bands, rates, features):
    model = shared(encoder, bands)
    assert [branch[0].dilation[0] for branch in model.aspp.branches[1:]] == rates
    seen = []
    hook = model.backbone.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-2:]) or None)
    with torch.no_grad():
        model(torch.randn(1, bands, 64, 64))
    hook.remove()
    assert seen == [(features, features)]


def test_gated_conv_is_residual_in_its_gate():
    """``w * (s * (alpha + 1))``: a closed gate (alpha 0) passes ``w * s``, an open one (alpha 1) ``2 w * s``."""
    torch.manual_seed(0)
    gcl = GatedConv(4).eval()
    s, r = torch.randn(1, 4, 6, 6), torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        plain = gcl.weight(s)
        for bias, factor in ((-1e4, 1.0), (1e4, 2.0)):
            gcl.gate[3].bias.fill_(bias)
            torch.testing.assert_close(gcl(s, r), factor * plain)
        gcl.gate[3].bias.zero_()
        assert not torch.allclose(gcl(s, r), gcl(s, -r))  # the regular features gate


def test_the_gates_take_the_regular_stream_and_the_edges_reach_the_segmentation():
    model = small().eval()
    x = torch.randn(2, 3, 64, 64)  # training-mode BatchNorm of the image pooling needs a batch of two
    with torch.no_grad():
        model.train()
        model(x)
        edges = model.edge_logits
        logits = model.eval()(x)
        model.shape_stream.side[2].weight.mul_(3.0)  # the layer4 gate
        model.train()
        model(x)
        assert not torch.allclose(model.edge_logits, edges)
        model.eval()
        model.shape_stream.fuse.weight.zero_()  # boundary probability 1/2 everywhere
        assert not torch.allclose(model(x), logits, atol=1e-6)
        changed = model(x)
        model.edge_fuse.weight[0, 1] += 1.0  # the image-gradient channel
        assert not torch.allclose(model(x), changed, atol=1e-6)


def test_image_gradient_is_the_sobel_magnitude_of_the_band_mean():
    x = torch.zeros(1, 2, 5, 6)
    x[0, 0, :, 3:] = 2.0  # band mean: 0 in columns 0-2, 1 in columns 3-5
    grad = image_gradient(x)[0, 0]
    # Interior rows: Sobel x is (1 + 2 + 1) × 1 next to the step, Sobel y 0.
    expected = torch.tensor([0.0, 0.0, 4.0, 4.0, 0.0])
    for row in (1, 2, 3):
        torch.testing.assert_close(grad[row, :5], expected)
    assert image_gradient(torch.randn(1, 13, 8, 8)).shape == (1, 1, 8, 8)


def test_shape_stream_upsampling_is_shift_equivariant():
    """Crop the inputs at a multiple of the coarsest stride: the boundary logits are the whole input's window."""
    torch.manual_seed(0)
    stream = ShapeStream(4, (3, 3, 3), (2, 4, 8), (4, 4, 4, 4)).eval()
    low = torch.randn(1, 4, 64, 64)  # 1/4 of a 256 px input; the gates at 1/8, 1/16, 1/32
    regular = [torch.randn(1, 3, 64 // f, 64 // f) for f in (2, 4, 8)]
    with torch.no_grad():
        whole = stream(low, regular)
        crop = stream(
            low[..., 16:48, 16:48],
            [r[..., 16 // f : 48 // f, 16 // f : 48 // f] for r, f in zip(regular, (2, 4, 8), strict=True)],
        )
    # crop offset 64 px, 128 px wide; 32 px margin covers the stream's receptive field
    torch.testing.assert_close(crop[..., 32:96, 32:96], whole[..., 96:160, 96:160], atol=1e-4, rtol=0)


def test_image_pooling_makes_the_context_global():
    """Documented: the ASPP image-pooling branch sees the whole input, so a crop's logits differ from the window."""
    assert isinstance(CONTEXT["gatedscnn"], str) and "pooling" in CONTEXT["gatedscnn"]
    model = shared()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        whole = model(x)
        crop = model(x[..., 32:96, 32:96])
    assert not torch.allclose(crop, whole[..., 32:96, 32:96], atol=1e-4)


def test_builders_take_plain_keyword_options():
    with torch.device("meta"):
        model = BUILDERS["gatedscnn"](in_channels=4, num_classes=CLASSES, encoder="resnet18", **SMALL)
        assert GatedSCNN(3, 2, encoder="resnet101", shape_channels=[8, 8, 8, 8]).output_stride == 8  # YAML lists
    assert isinstance(model, GatedSCNN) and model.output_stride == 32
    params = inspect.signature(GatedSCNN).parameters
    assert {"encoder", "aspp_channels", "shape_channels"} <= set(params)
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"encoder": "resnet999"}, "model.encoder"),
        ({"encoder": "efficientnet-b0"}, "model.encoder"),
        ({"aspp_channels": 0}, "model.options.aspp_channels"),
        ({"aspp_channels": True}, "model.options.aspp_channels"),
        ({"shape_channels": (8, 8, 8)}, "model.options.shape_channels"),
        ({"shape_channels": (8, 0, 8, 8)}, "model.options.shape_channels"),
        ({"shape_channels": "64"}, "model.options.shape_channels"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, field):
    with pytest.raises(ModelError) as info:
        GatedSCNN(3, CLASSES, **options)
    message = str(info.value)
    assert message.startswith(field + ":") and "\n" not in message
