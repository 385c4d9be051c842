"""FastFCN (JPU + DeepLabV3 ASPP head on an undilated ResNet): logits of the input's size, the default
parameter count, training, the paper's structure, global context from image pooling only, bad options refused."""

import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from geoseg.errors import ModelError
from geoseg.models.fastfcn import BUILDERS, CONTEXT, ENCODERS, FastFCN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5
TINY = {"encoder": "resnet18", "jpu_channels": 16, "head_channels": 16}


def _model(bands: int = 4, **options) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS["fastfcn"](in_channels=bands, num_classes=CLASSES, **{**TINY, **options})


def test_builders_and_context():
    assert set(BUILDERS) == set(CONTEXT) == {"fastfcn"}
    assert CONTEXT["fastfcn"] == "ASPP image pooling (AdaptiveAvgPool2d(1))"
    params = inspect.signature(FastFCN).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)
    assert FastFCN.output_stride == 32 and ENCODERS[0] == "resnet50"


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_logits_are_the_input_size(bands):
    model = _model(bands).eval()
    for height, width in ((32, 32), (64, 96)):  # one stride (the smallest tile), and not square
        with torch.no_grad():
            logits = model(torch.randn(1, bands, height, width))
        assert logits.shape == (1, CLASSES, height, width)


def test_default_parameter_count():
    """resnet50 (no fc), JPU 512, head 256, 21 classes, summed layer by layer: 59,374,421."""
    with torch.device("meta"):  # shapes only
        model = FastFCN(3, 21)
        resnet = resnet50(weights=None)
    backbone = sum(p.numel() for p in resnet.parameters()) - (2048 * 1000 + 1000)  # less fc
    assert backbone == 23_508_032
    width, bn = 512, lambda c: 2 * c  # BatchNorm: weight and bias
    jpu = sum(9 * c * width + bn(width) for c in (512, 1024, 2048))  # conv3/conv4/conv5: 3×3, BN
    jpu += 4 * (9 * 3 * width + bn(3 * width) + 3 * width * width + bn(width))  # separable: depthwise, BN, 1×1, BN
    inner, ch = 4 * width, 256
    head = inner * ch + bn(ch)  # 1×1 branch
    head += 3 * (9 * inner * ch + bn(ch))  # rates 12, 24, 36
    head += inner * ch + bn(ch)  # image pooling's 1×1
    head += 5 * ch * ch + bn(ch)  # projection
    head += 9 * ch * ch + bn(ch)  # 3×3 block
    head += ch * 21 + 21  # classifier
    assert (jpu, head) == (19_735_552, 16_130_837)
    assert sum(p.numel() for p in model.parameters()) == backbone + jpu + head == 59_374_421


def _loss(model, x, y) -> float:
    torch.manual_seed(1)  # the same dropout masks before and after training
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_sgd_steps_lower_the_loss():
    model = _model(4).train()
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(1))  # batch 2: image pooling's BN
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    start = _loss(model, x, y)
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    end = _loss(model, x, y)
    assert math.isfinite(end) and end < start


def test_structure_is_the_papers():
    """Undilated backbone (1/32), JPU from layer2..4 with depthwise dilations 1/2/4/8, ASPP rates 12/24/36."""
    with torch.device("meta"):
        model = FastFCN(3, CLASSES)
    assert all(m.dilation == (1, 1) for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    assert [m.conv2.stride for m in (model.backbone.layer3[0], model.backbone.layer4[0])] == [(2, 2), (2, 2)]
    assert [model.jpu.conv3[0].in_channels, model.jpu.conv4[0].in_channels, model.jpu.conv5[0].in_channels] == [
        512,
        1024,
        2048,
    ]
    depthwise = [branch[0] for branch in model.jpu.branches]
    assert [conv.dilation for conv in depthwise] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert all(conv.groups == conv.in_channels == conv.out_channels == 3 * 512 for conv in depthwise)
    rates = [branch[0].dilation for branch in model.head.branches[1:]]
    assert rates == [(12, 12), (24, 24), (36, 36)] and model.head.branches[0][0].kernel_size == (1, 1)
    assert isinstance(model.head.image_pool.pool, nn.AdaptiveAvgPool2d)
    tiny = _model(3).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        assert tiny.backbone(x)[-1].shape[-2:] == (2, 3)
        before = tiny(x)
        tiny.jpu.conv3[0].weight.zero_()  # the output depends on layer2 (conv3) through the JPU
        assert (tiny(x) - before).abs().max() > 1e-4


class _FixedPooling(nn.Module):
    """Stands in for AdaptiveAvgPool2d(1): the same vector whatever the input, so nothing sees it all."""

    def __init__(self, channels: int):
        super().__init__()
        self.value = torch.randn(1, channels, 1, 1, generator=torch.Generator().manual_seed(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1, 1, 1)


def test_tiles_differ_by_image_pooling_only():
    """Global context, documented: a crop with a margin ≥ the local paths' radius (633 px for resnet18 at
    the paper's rates) differs from the whole input's logits; with the image pooling replaced by a
    constant it equals them (so the JPU's ×2/×4 and the ×8 upsampling are shift-equivariant).
    A strip keeps it cheap: rows are whole, columns cropped at an offset that is a multiple of 32."""
    live = _model(3).eval()
    frozen = copy.deepcopy(live)
    frozen.head.image_pool.pool = _FixedPooling(4 * TINY["jpu_channels"])
    margin, core, offset = 640, 32, 32
    whole = torch.randn(1, 3, 32, offset + 2 * margin + core + 32, generator=torch.Generator().manual_seed(2))
    whole[..., :offset] += 30  # outside the crop: brighter, so the whole input's average differs from the crop's
    whole[..., offset + 2 * margin + core :] += 30
    crop = whole[..., offset : offset + 2 * margin + core]
    window = slice(offset + margin, offset + margin + core)
    with torch.no_grad():
        torch.testing.assert_close(
            frozen(crop)[..., margin : margin + core], frozen(whole)[..., window], atol=1e-4, rtol=0
        )
        # Random weights give the pooled branch a small say (≈ 2e-3 here); float noise is ≈ 1e-7 (0 above).
        assert (live(crop)[..., margin : margin + core] - live(whole)[..., window]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"encoder": "resnet152"}, ["model.encoder", "'resnet152'", "resnet50, resnet101, resnet18, resnet34"]),
        ({"jpu_channels": 0}, ["model.options.jpu_channels", "got 0"]),
        ({"head_channels": 2.5}, ["model.options.head_channels", "2.5"]),
        ({"head_channels": True}, ["model.options.head_channels", "True"]),
        ({"atrous_rates": []}, ["model.options.atrous_rates", "[]", "[12, 24, 36]"]),
        ({"atrous_rates": (12, -1)}, ["model.options.atrous_rates", "(12, -1)"]),
        ({"atrous_rates": "12"}, ["model.options.atrous_rates", "'12'"]),
    ],
)
def test_bad_options_are_refused_in_one_line(options, expected):
    with pytest.raises(ModelError) as info:
        FastFCN(3, 2, **options)
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in expected), message


def test_resnet18_and_34_have_their_channels():
    with torch.device("meta"):
        for encoder in ("resnet18", "resnet34"):
            model = FastFCN(3, 2, encoder=encoder)
            assert [c[0].in_channels for c in (model.jpu.conv3, model.jpu.conv4, model.jpu.conv5)] == [128, 256, 512]
