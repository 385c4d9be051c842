"""SegNet and DeconvNet (geoseg.models.segnet): input-sized logits for any band count, the papers' parameter
counts, training, unpooling with the encoder's own indices, exact tiling, and bad options refused in one line."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ModelError
from geoseg.models.registry import smallest_tile
from geoseg.models.segnet import BUILDERS, CONTEXT, DeconvNet, SegNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STRIDE = 32
# Narrow fc6/fc7 for DeconvNet (its 4096 make 252M parameters); SegNet has no width option.
SMALL = {"segnet": {}, "deconvnet": {"fc_channels": 32}}
# context_radius of the random models (exact receptive field), rounded up to the stride: SegNet 186, DeconvNet 378
MARGIN = {"segnet": 192, "deconvnet": 384}

# VGG-16's 13 convolutions (in, out), 3×3
VGG16 = [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
VGG16 += [(256, 512)] + [(512, 512)] * 5
# SegNet's decoder, deepest stage first, before its classifier; DeconvNet's ends with one more (64, 64)
DECODER = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]


def build(name: str, bands: int = 3, classes: int = 5, **options) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](in_channels=bands, num_classes=classes, **{**SMALL[name], **options})


def conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout  # weights + bias (transposed convolutions alike)


def bn(c: int) -> int:
    return 2 * c


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tables_signatures_and_stride():
    assert set(BUILDERS) == set(CONTEXT) == {"segnet", "deconvnet"}
    assert CONTEXT == {"segnet": None, "deconvnet": None}  # local: no global pooling anywhere
    assert BUILDERS["segnet"] is SegNet and BUILDERS["deconvnet"] is DeconvNet
    for cls in (SegNet, DeconvNet):
        params = inspect.signature(cls).parameters
        assert list(params)[:2] == ["in_channels", "num_classes"]
        assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[2:])  # no **kwargs
        assert cls.output_stride == STRIDE


@pytest.mark.parametrize("name", ["segnet", "deconvnet"])
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_logits_have_the_input_size(name, bands):
    model = build(name, bands, classes=7).eval()
    with torch.no_grad():
        for h, w in [(32, 32), (32, 64)]:
            assert model(torch.randn(1, bands, h, w)).shape == (1, 7, h, w)


def test_smallest_tile_and_training_with_a_batch_of_one():
    segnet, deconvnet = build("segnet"), build("deconvnet")
    assert smallest_tile(segnet) == smallest_tile(deconvnet) == 32
    assert segnet.train()(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)  # BN never sees a single value
    with pytest.raises(ValueError, match="more than 1 value"):  # fc6's BN on pool5's 1×1 map, as documented
        deconvnet.train()(torch.randn(1, 3, 32, 32))
    assert deconvnet(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_built_on_the_current_device_with_fresh_statistics():
    """The encoder is built on the meta device and materialised: no uninitialised memory may remain."""
    model = build("segnet", 4)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13 + 12  # encoder and decoder, every convolution but the classifier
    for m in norms:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    first = model.down[0][0]
    assert first.in_channels == 4 and first.weight.std() > 0


def test_segnet_parameter_count_is_the_papers():
    """CamVid (11 classes): 29.5M in the SegNet paper; here summed by hand from the layer shapes."""
    with torch.device("meta"):
        model = SegNet(3, 11)
    encoder = conv(3, 64) + bn(64) + sum(conv(i, o) + bn(o) for i, o in VGG16)
    decoder = sum(conv(i, o) + bn(o) for i, o in DECODER) + conv(64, 11)  # 3×3 classifier, no BN
    assert n_params(model) == encoder + decoder == 29_449_355
    assert abs(n_params(model) / 29.5e6 - 1) < 0.01
    with torch.device("meta"):
        assert n_params(SegNet(3, 11, classifier_kernel=1)) == encoder + decoder - 64 * 11 * 8


def test_deconvnet_parameter_count_is_the_papers():
    """PASCAL VOC (21 classes), fc6/fc7 4096 wide: 252M (as the SegNet paper counts DeconvNet); by hand here."""
    with torch.device("meta"):
        model = DeconvNet(3, 21)
    encoder = conv(3, 64) + bn(64) + sum(conv(i, o) + bn(o) for i, o in VGG16)
    fc = conv(512, 4096, 7) + bn(4096) + conv(4096, 4096, 1) + bn(4096) + conv(4096, 512, 7) + bn(512)
    decoder = sum(conv(i, o) + bn(o) for i, o in [*DECODER, (64, 64)]) + conv(64, 21, 1)
    assert n_params(model) == encoder + fc + decoder == 251_805_653
    assert abs(n_params(model) / 252e6 - 1) < 0.01


def test_deconvnet_decoder_is_deconvolutions():
    model = build("deconvnet", fc_channels=64)
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride, m.padding) for m in deconvs] == [((7, 7), (1, 1), (3, 3))] + [
        ((3, 3), (1, 1), (1, 1))
    ] * 13
    fc6, fc7 = (m for m in model.bridge if isinstance(m, nn.Conv2d))
    assert (fc6.kernel_size, fc6.padding, fc6.out_channels) == ((7, 7), (3, 3), 64)
    assert (fc7.kernel_size, fc7.out_channels) == ((1, 1), 64)
    assert model.classifier.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.Conv2d) for m in model.up.modules())  # only transposed convolutions


@pytest.mark.parametrize("name", ["segnet", "deconvnet"])
def test_trains_a_few_steps(name):
    torch.manual_seed(0)
    model = build(name, 4, classes=3).train()
    x = torch.randn(2, 4, 32, 32)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # learnable from the pixel itself
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["segnet", "deconvnet"])
def test_decoder_unpools_with_the_encoders_indices(name):
    """Each unpooling receives the matching encoder pool's indices and writes one value per 2×2 window; moving
    the indices (to each window's top-left pixel) changes the logits."""
    model = build(name).eval()
    pooled: list[torch.Tensor] = []
    unpooled: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.pool.register_forward_hook(lambda m, args, out: pooled.append(out[1]))
    model.unpool.register_forward_hook(lambda m, args, out: unpooled.append((args[1], out)))
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        reference = model(x)
    assert len(pooled) == len(unpooled) == 5
    for indices, (used, out) in zip(reversed(pooled), unpooled, strict=True):
        assert used is indices
        n, c, h, w = out.shape
        windows = out.reshape(n, c, h // 2, 2, w // 2, 2)
        assert ((windows != 0).sum(dim=(3, 5)) <= 1).all()  # sparse: at most the maximum's position
        flat = torch.zeros(n, c, h * w).scatter_(2, indices.flatten(2), 1.0).reshape(out.shape)
        assert ((out != 0) <= (flat != 0)).all()  # values only where the encoder's maxima were

    def top_left(module, args, out):
        values, indices = out
        h, w = args[0].shape[-2:]
        rows = torch.arange(0, h, 2).view(-1, 1) * w
        cols = torch.arange(0, w, 2).view(1, -1)
        return values, (rows + cols).expand_as(indices).contiguous()

    with torch.no_grad():
        same = model(x)
        model.pool.register_forward_hook(top_left)
        moved = model(x)
    assert torch.equal(same, reference)
    assert (moved - reference).abs().max() > 1e-5  # well above round-off; the control above is exact


def _core(model: nn.Module, x: torch.Tensor, start: int, margin: int, axis: int) -> torch.Tensor:
    """Logits of a crop along ``axis`` starting at ``start`` with ``margin`` on both sides of a 32-pixel core."""
    crop = x.narrow(axis, start, 2 * margin + STRIDE)
    with torch.no_grad():
        return model(crop).narrow(axis, margin, STRIDE)


@pytest.mark.parametrize("name", ["segnet", "deconvnet"])
def test_a_tile_with_a_halo_equals_the_whole_image(name):
    """Eval mode: a crop at a stride-multiple offset with a halo covering the receptive field gives exactly the
    whole input's logits over its core. Strips (long × 32 px, then 32 × long) test each axis at a fraction of the
    cost of a square input. A one-stride halo breaks the equality (far pixels weigh little in random models, so
    a halo only a little short of the exact radius may still agree to 1e-4)."""
    model = build(name, 3, classes=4).eval()
    margin = MARGIN[name]
    torch.manual_seed(1)
    for axis in (2, 3):
        length = 2 * margin + 3 * STRIDE
        shape = [1, 3, STRIDE, STRIDE]
        shape[axis] = length
        x = torch.randn(shape)
        with torch.no_grad():
            whole = model(x).narrow(axis, STRIDE + margin, STRIDE)
        torch.testing.assert_close(_core(model, x, STRIDE, margin, axis), whole, atol=1e-4, rtol=0)
    short = _core(model, x, margin, STRIDE, axis)
    assert (short - whole).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("segnet", {"classifier_kernel": 5}, "classifier_kernel"),
        ("segnet", {"classifier_kernel": True}, "classifier_kernel"),
        ("segnet", {"classifier_kernel": 3.0}, "classifier_kernel"),
        ("deconvnet", {"fc_channels": 0}, "fc_channels"),
        ("deconvnet", {"fc_channels": "4096"}, "fc_channels"),
        ("deconvnet", {"fc_channels": 64.0}, "fc_channels"),
    ],
)
def test_bad_options_are_refused_in_one_line(name, options, field):
    with pytest.raises(ModelError) as err:
        BUILDERS[name](in_channels=3, num_classes=2, **options)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model.options.{field}:")
    assert repr(next(iter(options.values()))) in message
