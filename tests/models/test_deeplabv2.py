"""DeepLab v2 (ASPP-L on a dilated ResNet): logits of the input's size, the paper's parameter count,
training, the paper's dilations and summed branches, exact tiling, bad options refused."""

import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet101

from geoseg.errors import ModelError
from geoseg.models.deeplabv2 import BUILDERS, CONTEXT, ENCODERS, DeepLabV2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5


def _model(bands: int = 4, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS["deeplabv2"](in_channels=bands, num_classes=CLASSES, encoder="resnet50", **options)


def test_builders_and_context():
    assert set(BUILDERS) == set(CONTEXT) == {"deeplabv2"}
    assert CONTEXT["deeplabv2"] is None  # no image pooling: purely local
    params = inspect.signature(DeepLabV2).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)
    assert DeepLabV2.output_stride == 8 and ENCODERS[0] == "resnet101"


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_logits_are_the_input_size(bands):
    model = _model(bands).eval()
    for height, width in ((8, 8), (24, 40)):  # one stride (the smallest tile), and not square
        with torch.no_grad():
            logits = model(torch.randn(1, bands, height, width))
        assert logits.shape == (1, CLASSES, height, width)


def test_default_parameter_count():
    """resnet101 without its fc, plus four 3×3 classifiers 2048 → 21 with bias: 44,048,532."""
    with torch.device("meta"):  # shapes only: no time spent initialising 44 M weights
        model = DeepLabV2(3, 21)
        resnet = resnet101(weights=None)
    backbone = sum(p.numel() for p in resnet.parameters()) - (2048 * 1000 + 1000)  # less fc
    assert backbone == 42_500_160
    aspp = 4 * (3 * 3 * 2048 * 21 + 21)
    assert sum(p.numel() for p in model.parameters()) == backbone + aspp == 44_048_532


def test_sgd_steps_lower_the_loss():
    model = _model(4).train()
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # a deep net from scratch: more overshoots
    with torch.no_grad():
        start = F.cross_entropy(model(x), y).item()
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = F.cross_entropy(model(x), y).item()
    assert math.isfinite(end) and end < start


def test_dilations_are_the_papers():
    """layer3/layer4 dilated (output stride 8), ASPP-L rates 6/12/18/24, each branch a 3×3 classifier."""
    model = _model(3)
    assert [conv.dilation for conv in model.aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(conv.kernel_size == (3, 3) and conv.out_channels == CLASSES for conv in model.aspp.branches)
    assert all(conv.in_channels == 2048 and conv.bias is not None for conv in model.aspp.branches)
    assert model.backbone.layer3[-1].conv2.dilation == (2, 2) and model.backbone.layer4[-1].conv2.dilation == (4, 4)
    assert all(block.conv2.stride == (1, 1) for block in [*model.backbone.layer3, *model.backbone.layer4])
    with torch.no_grad():
        features = model.eval().backbone(torch.randn(1, 3, 32, 48))
    assert features[-1].shape[-2:] == (4, 6)
    with torch.device("meta"):
        assert _model(3, atrous_rates=[2, 3]).aspp.branches[1].dilation == (3, 3)


def test_branches_are_summed():
    """v2 fuses the rates by summing scores: the logits are the sum of each branch alone (v3 concatenates)."""
    model = _model(3).eval()
    x = torch.randn(1, 3, 16, 16)
    trained = copy.deepcopy(model.aspp.state_dict())
    with torch.no_grad():
        whole = model(x)
        alone = []
        for keep in range(4):
            for i, conv in enumerate(model.aspp.branches):
                if i != keep:
                    conv.weight.zero_()
                    conv.bias.zero_()
            alone.append(model(x))
            model.aspp.load_state_dict(trained)
    assert all(a.abs().max() > 0 for a in alone)
    torch.testing.assert_close(sum(alone), whole, atol=1e-5, rtol=1e-4)


def test_tiled_equals_whole():
    """A crop at a stride-multiple offset, with a margin ≥ the receptive-field radius (413 px for resnet50),
    gives the whole input's logits in its centre. A strip keeps it cheap: rows are whole, columns cropped."""
    model = _model(3).eval()
    margin, core, offset = 416, 16, 16  # multiples of 8
    whole = torch.randn(1, 3, 16, offset + 2 * margin + core + 16, generator=torch.Generator().manual_seed(2))
    crop = whole[..., offset : offset + 2 * margin + core]
    with torch.no_grad():
        big, small = model(whole), model(crop)
    window = slice(offset + margin, offset + margin + core)
    torch.testing.assert_close(small[..., margin : margin + core], big[..., window], atol=1e-4, rtol=0)
    # The crop's own edge sees zero padding where the whole input has pixels: there they differ.
    assert (small[..., :core] - big[..., offset : offset + core]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"encoder": "resnet18"}, ["model.encoder", "'resnet18'", "BasicBlock", "refuses dilation", "resnet101"]),
        ({"encoder": "resnet34"}, ["model.encoder", "'resnet34'", "refuses dilation"]),
        ({"encoder": "vgg16"}, ["model.encoder", "'vgg16'", "resnet101, resnet50"]),
        ({"atrous_rates": []}, ["model.options.atrous_rates", "[]", "[6, 12, 18, 24]"]),
        ({"atrous_rates": (6, 0)}, ["model.options.atrous_rates", "(6, 0)"]),
        ({"atrous_rates": (6, 1.5)}, ["model.options.atrous_rates", "1.5"]),
        ({"atrous_rates": 6}, ["model.options.atrous_rates", "got 6"]),
        ({"atrous_rates": (True, 2)}, ["model.options.atrous_rates", "True"]),
    ],
)
def test_bad_options_are_refused_in_one_line(options, expected):
    with pytest.raises(ModelError) as info:
        DeepLabV2(3, 2, **options)
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in expected), message


def test_bad_sizes_are_refused():
    with pytest.raises(ModelError, match="bands"):
        DeepLabV2(0, 2, encoder="resnet50")
    with pytest.raises(ModelError, match="classes"):
        DeepLabV2(3, 0, encoder="resnet50")
