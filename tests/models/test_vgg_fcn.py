"""FCN-32s/16s/8s, ParseNet and DeepLab-LargeFOV on the shared VGG-16 body: logits of the input's size for any
band count, the papers' parameter counts, training, the papers' structure, exact tiling for the local ones and
global context for ParseNet, bad options refused in one line."""

import copy
import functools
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ModelError
from geoseg.models.vgg_fcn import BUILDERS, CONTEXT, bilinear_upsampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5
STRIDES = {"fcn32s": 32, "fcn16s": 32, "fcn8s": 32, "parsenet": 8, "deeplabv1": 8}
FCNS = ("fcn32s", "fcn16s", "fcn8s")
LOCAL = ("fcn32s", "fcn16s", "fcn8s", "deeplabv1")
# Farthest input pixel a stride cell of logits depends on (context.context_radius, exact): FCN's fc7 sees 404 px
# (radius 202), its final upsampling blends in the neighbouring score pixel: 202 + 32 - 16; DeepLab-LargeFOV 217.
RADIUS = {"fcn32s": 218, "fcn16s": 218, "fcn8s": 218, "deeplabv1": 217}


@functools.cache
def small(arch: str, bands: int = 3) -> nn.Module:
    """A narrow (fc_channels=64) model in eval mode; copy it before changing it."""
    torch.manual_seed(0)
    return BUILDERS[arch](in_channels=bands, num_classes=CLASSES, fc_channels=64).eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_builders_and_context_cover_the_same_names():
    assert set(BUILDERS) == set(CONTEXT) == set(STRIDES)
    assert {name for name, context in CONTEXT.items() if context is None} == set(LOCAL)
    assert "global average pooling" in CONTEXT["parsenet"]
    for name, builder in BUILDERS.items():
        params = inspect.signature(builder).parameters
        assert list(params)[:2] == ["in_channels", "num_classes"]
        assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[2:]), name
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), name


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_logits_have_the_input_size(arch, bands):
    model = small(arch, bands)
    stride = STRIDES[arch]
    assert model.output_stride == stride
    for height, width in ((stride, stride), (2 * stride, 3 * stride)):  # the smallest tile, and not square
        logits = run(model, torch.randn(1, bands, height, width))
        assert logits.shape == (1, CLASSES, height, width)
        assert torch.isfinite(logits).all()


# --- parameter counts of the papers' default configurations, summed by hand from the layer shapes -------------


def conv(k: int, cin: int, cout: int, *, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def vgg16_convs(bands: int) -> int:
    """VGG-16's thirteen 3×3 convolutions, the first taking ``bands``."""
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    return sum(conv(3, cin, cout) for cin, cout in zip([bands, *widths[:-1]], widths, strict=True))


def deconv(classes: int, factor: int) -> int:
    return conv(2 * factor, classes, classes, bias=False)


def expected_parameters(arch: str, bands: int, classes: int) -> int:
    body = vgg16_convs(bands)
    if arch in FCNS:  # fc6 7×7 and fc7 1×1 with 4096, score_fr; skips: scorer + learned 2× each; final deconv
        total = body + conv(7, 512, 4096) + conv(1, 4096, 4096) + conv(1, 4096, classes)
        if arch == "fcn32s":
            return total + deconv(classes, 32)
        total += conv(1, 512, classes) + deconv(classes, 2)  # pool4
        if arch == "fcn16s":
            return total + deconv(classes, 16)
        return total + conv(1, 256, classes) + deconv(classes, 2) + deconv(classes, 8)  # pool3
    large_fov = body + conv(3, 512, 1024) + conv(1, 1024, 1024)
    if arch == "deeplabv1":
        return large_fov + conv(1, 1024, classes)
    return large_fov + 2 * 1024 + conv(1, 2 * 1024, classes)  # ParseNet: two L2 scales, scorer on the concat


def test_vgg16_conv_count_matches_torchvision_published_total():
    # torchvision's vgg16 has 138,357,544 parameters; its classifier is 25088→4096→4096→1000.
    classifier = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert vgg16_convs(3) == 138_357_544 - classifier == 14_714_688


@pytest.mark.parametrize(
    ("arch", "published"),
    [
        ("fcn32s", None),
        ("fcn16s", None),
        ("fcn8s", 134_489_759),  # PAMI Table 1: FCN-VGG16, 134M
        ("deeplabv1", 20_505_429),  # DeepLab Table 2: DeepLab-LargeFOV, 20.5M
        ("parsenet", None),
    ],
)
@pytest.mark.parametrize(("bands", "classes"), [(3, 21), (4, 5)])
def test_default_parameter_count(arch, published, bands, classes):
    with torch.device("meta"):  # shapes only: no memory, no init, no forward pass
        model = BUILDERS[arch](in_channels=bands, num_classes=classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(arch, bands, classes)
    if published is not None and (bands, classes) == (3, 21):
        assert count == published


# --- training ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_sgd_steps_lower_the_loss(arch):
    model = copy.deepcopy(small(arch)).train()
    for module in model.modules():  # no dropout: with 3 steps its noise could outweigh the fall of the loss
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 32)
    target = torch.randint(0, CLASSES, (1, 32, 32))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(x), target).item())
    assert losses[-1] < losses[0], losses


# --- structure -----------------------------------------------------------------------------------------------------


def test_fcn_upsampling_is_bilinear_and_exactly_k_times():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 5, generator=gen)
    for factor in (2, 8, 16, 32):
        up = bilinear_upsampling(3, factor)
        y = run(up, x)
        assert y.shape[-2:] == (4 * factor, 5 * factor)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        inner = (..., slice(factor, -factor), slice(factor, -factor))  # at the border zeros are blended in
        torch.testing.assert_close(y[inner], ref[inner], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        bilinear_upsampling(3, 3)


@pytest.mark.parametrize("arch", FCNS)
def test_fcn_structure(arch):
    with torch.device("meta"):
        model = BUILDERS[arch](in_channels=3, num_classes=21)
    fc6, drop6, fc7 = model.fc[0], model.fc[2], model.fc[3]
    assert (fc6.kernel_size, fc6.padding, fc6.out_channels) == ((7, 7), (3, 3), 4096)
    assert (fc7.kernel_size, fc7.out_channels, drop6.p) == ((1, 1), 4096, 0.5)
    pools = [stage[-1] for stage in model.body.stages]
    assert all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    final = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}[arch]
    assert model.upscore_final.stride == (final, final) and model.upscore_final.kernel_size == (2 * final, 2 * final)
    assert not model.upscore_final.weight.requires_grad  # fixed bilinear, as in the paper
    learned = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d) and m.weight.requires_grad]
    assert len(learned) == {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}[arch]
    assert hasattr(model, "score_pool4") == (arch != "fcn32s")
    assert hasattr(model, "score_pool3") == (arch == "fcn8s")


@pytest.mark.parametrize("arch", ["fcn16s", "fcn8s"])
def test_fcn_skips_start_at_zero_and_reach_the_output(arch):
    model = copy.deepcopy(small(arch))
    scorers = [model.score_pool4] + ([model.score_pool3] if arch == "fcn8s" else [])
    assert all(not s.weight.any() for s in scorers)  # zero-initialised, as in the paper
    x = torch.randn(1, 3, 32, 32)
    model(x).square().sum().backward()
    assert all(s.weight.grad.abs().sum() > 0 for s in scorers)  # pool3/pool4 features reach the output
    before = run(model, x)
    with torch.no_grad():
        scorers[-1].weight.normal_(std=0.01)
    assert not torch.allclose(run(model, x), before)


def test_fcn8s_at_once_scales_pool3_by_1e_4():
    torch.manual_seed(0)  # as small(): the same weights
    at_once = BUILDERS["fcn8s"](in_channels=3, num_classes=CLASSES, fc_channels=64, at_once=True)
    plain = copy.deepcopy(small("fcn8s"))
    assert all(
        torch.equal(a, b) for a, b in zip(at_once.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    outputs = {}
    for key, model in ((True, at_once.double().eval()), (False, plain.double())):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        base = run(model, x)
        with torch.no_grad():
            model.score_pool3.weight.normal_(generator=torch.Generator().manual_seed(3))
        outputs[key] = run(model, x) - base  # the pool3 path's contribution (it is linear in pool3)
    assert outputs[False].abs().max() > 0
    torch.testing.assert_close(outputs[True], 1e-4 * outputs[False], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("arch", ["deeplabv1", "parsenet"])
def test_large_fov_structure(arch):
    with torch.device("meta"):
        model = BUILDERS[arch](in_channels=3, num_classes=21)
    pools = [stage[-1] for stage in model.body.stages]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]
    assert all((p.kernel_size, p.padding) == (3, 1) for p in pools)
    dilations = [{m.dilation for m in stage if isinstance(m, nn.Conv2d)} for stage in model.body.stages]
    assert dilations == [{(1, 1)}] * 4 + [{(2, 2)}]  # conv5 dilated by 2 after pool4 keeps its stride
    fc6, drop6, fc7, drop7 = model.fc[0], model.fc[2], model.fc[3], model.fc[5]
    assert (fc6.kernel_size, fc6.dilation, fc6.padding, fc6.out_channels) == ((3, 3), (12, 12), (12, 12), 1024)
    assert (fc7.kernel_size, fc7.out_channels, drop6.p, drop7.p) == ((1, 1), 1024, 0.5, 0.5)
    assert (model.upsample.scale_factor, model.upsample.mode, model.upsample.align_corners) == (8, "bilinear", False)
    features = run(small(arch).body, torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 8, 8]  # output stride 8


def test_parsenet_normalises_with_learned_scales_of_10():
    model = small("parsenet")
    for norm in (model.norm_local, model.norm_global):
        assert norm.weight.requires_grad and torch.equal(norm.weight, torch.full((64,), 10.0))
    x = torch.rand(2, 64, 3, 4) + 0.1
    assert torch.allclose(run(model.norm_local, x).norm(dim=1), torch.full((2, 3, 4), 10.0))
    assert model.score.in_channels == 2 * 64  # local and global features concatenated


def test_parsenet_sees_the_whole_input_and_deeplab_does_not():
    """A change at the left end of a 512-px strip reaches ParseNet's logits at the right end (global pooling), not
    DeepLab-LargeFOV's (same body, local: 217 px)."""
    x = torch.randn(1, 3, 8, 512)
    changed = x.clone()
    changed[..., :8] += 1.0
    far = (..., slice(480, None))
    for arch, reaches in (("parsenet", True), ("deeplabv1", False)):
        model = small(arch)
        moved = (run(model, changed)[far] - run(model, x)[far]).abs().max().item()
        assert (moved > 1e-6) == reaches, (arch, moved)


# --- tiling --------------------------------------------------------------------------------------------------------


def crop_and_whole(arch: str, axis: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Logits of a crop with a margin covering the context, and of the whole input (32 px wider each side).

    Only ``axis`` is cropped (the other side is one stride, shared by both), so the inputs stay small.
    Returns (crop logits, whole logits, margin, offset of the crop in the whole).
    """
    stride = STRIDES[arch]
    margin = math.ceil(RADIUS.get(arch, RADIUS["deeplabv1"]) / stride) * stride
    side = 2 * margin + stride  # margin, one core cell, margin
    offset = 32  # a multiple of every stride here
    shape = [1, 3, stride, stride]
    shape[axis] = side + 2 * offset
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    crop = x.narrow(axis, offset, side)
    model = small(arch)
    return run(model, crop), run(model, x), margin, offset


@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("arch", LOCAL)
def test_tiled_equals_whole_for_local_architectures(arch, axis):
    crop, whole, margin, offset = crop_and_whole(arch, axis)
    stride = STRIDES[arch]
    core = crop.narrow(axis, margin, stride)
    torch.testing.assert_close(core, whole.narrow(axis, offset + margin, stride), atol=1e-4, rtol=0)
    # Not vacuous: at the crop's edge, within the context radius of its border, they differ.
    assert not torch.allclose(crop.narrow(axis, 0, stride), whole.narrow(axis, offset, stride), atol=1e-4)


@pytest.mark.parametrize("axis", [2, 3])
def test_tiled_differs_from_whole_for_parsenet(axis):
    """Global average pooling: the crop's mean of fc7 is not the whole input's, so no margin makes tiles exact."""
    crop, whole, margin, offset = crop_and_whole("parsenet", axis)
    stride = STRIDES["parsenet"]
    core = crop.narrow(axis, margin, stride)
    assert not torch.allclose(core, whole.narrow(axis, offset + margin, stride), atol=1e-4)


# --- options -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "options", "field"),
    [
        ("fcn8s", {"fc_channels": 0}, "fc_channels"),
        ("fcn32s", {"fc_channels": "wide"}, "fc_channels"),
        ("deeplabv1", {"fc_channels": True}, "fc_channels"),
        ("fcn16s", {"dropout": 1.0}, "dropout"),
        ("parsenet", {"dropout": -0.1}, "dropout"),
        ("deeplabv1", {"dropout": "half"}, "dropout"),
        ("fcn8s", {"at_once": "yes"}, "at_once"),
        ("fcn32s", {"at_once": True}, "at_once"),
        ("deeplabv1", {"fc6_dilation": 0}, "fc6_dilation"),
        ("parsenet", {"fc6_dilation": 2.5}, "fc6_dilation"),
        ("parsenet", {"norm_scale": 0}, "norm_scale"),
        ("parsenet", {"norm_scale": float("nan")}, "norm_scale"),
        ("parsenet", {"norm_scale": True}, "norm_scale"),
    ],
)
def test_bad_options_are_refused_in_one_line(arch, options, field):
    with pytest.raises(ModelError) as info:
        BUILDERS[arch](in_channels=3, num_classes=CLASSES, **options)
    message = str(info.value)
    assert message.startswith(f"model.options.{field}:") and "\n" not in message
    assert repr(options[field]) in message


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        BUILDERS["fcn8s"](in_channels=3, num_classes=CLASSES, width=3)
