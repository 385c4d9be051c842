"""The model registry: every architecture builds, returns logits of its input's size and trains;
bad architectures, encoders and options are refused in one line naming the field and the fix;
cards rebuild models and checkpoints round-trip; `geoseg models` lists them all."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.segmentation import fcn_resnet50

from geoseg.cli import main
from geoseg.errors import GeosegError, ModelError
from geoseg.models import (
    ARCHITECTURES,
    build_model,
    is_instance_arch,
    model_info,
    output_stride,
    resolve_encoder,
    smallest_tile,
)
from geoseg.models.checkpoint import build_model_from_card, load_checkpoint
from geoseg.models.context import EXACT_TILING
from geoseg.models.registry import (
    CLASSIC_ARCHITECTURES,
    SEGMENTATION_ARCHITECTURES,
    SMP_ARCHITECTURES,
    TORCHVISION_ARCHITECTURES,
)
from tests.factories import model_card, write_checkpoint

CLASSES = 5
STRIDES = {
    "unet": 32,
    "unetplusplus": 32,
    "deeplabv3": 8,
    "deeplabv3plus": 16,
    "fpn": 32,
    "pspnet": 8,
    "linknet": 32,
    "manet": 32,
    "pan": 128,
    "upernet": 32,
    "segformer": 32,
    "fcn_resnet50": 8,
    "deeplabv3_resnet50": 8,
    # the classic systems with their papers' backbones
    **dict.fromkeys(("fcn32s", "fcn16s", "fcn8s", "segnet", "deconvnet", "fastfcn"), 32),
    **dict.fromkeys(("fcdensenet56", "fcdensenet67", "fcdensenet103"), 32),
    **dict.fromkeys(("parsenet", "deeplabv1", "deeplabv2", "gatedscnn"), 8),
}  # resnet18 defaults; torchvision's dilated resnet50
# Defaults too large to build twice per test (0.1-0.25 billion weights in fc6/fc7): narrower fc layers.
NARROW_FC = {name: {"fc_channels": 64} for name in ("fcn32s", "fcn16s", "fcn8s", "deconvnet")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_has_smp_torchvision_and_classic_architectures():
    assert len(SEGMENTATION_ARCHITECTURES) == 26 and set(STRIDES) == set(SEGMENTATION_ARCHITECTURES)
    assert set(TORCHVISION_ARCHITECTURES) == {"fcn_resnet50", "deeplabv3_resnet50"}
    assert set(CLASSIC_ARCHITECTURES) == {
        *("fcn32s", "fcn16s", "fcn8s", "segnet", "deconvnet", "fcdensenet56", "fcdensenet67", "fcdensenet103"),
        *("parsenet", "deeplabv1", "deeplabv2", "fastfcn", "gatedscnn"),
    }
    assert set(SMP_ARCHITECTURES) | set(TORCHVISION_ARCHITECTURES) | set(CLASSIC_ARCHITECTURES) == set(
        SEGMENTATION_ARCHITECTURES
    )
    assert set(ARCHITECTURES) - set(SEGMENTATION_ARCHITECTURES) == {"maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn"}


@pytest.mark.parametrize("arch", list(SEGMENTATION_ARCHITECTURES))
def test_builds_for_3_and_4_bands_with_input_sized_logits(arch):
    """The default configuration (resnet18, torchvision's fixed resnet50, the papers' backbones), one small forward."""
    for bands in (3, 4):
        model = build_model(arch, in_channels=bands, num_classes=CLASSES, **NARROW_FC.get(arch, {})).eval()
        stride = output_stride(model)
        assert stride == STRIDES[arch]
        height, width = stride, 2 * stride  # not square: rows and columns kept apart
        with torch.no_grad():
            logits = model(torch.randn(1, bands, height, width))
        assert isinstance(logits, torch.Tensor) and logits.shape == (1, CLASSES, height, width)


# Shallow encoders and narrow decoders keep the training steps cheap; FPN and PAN need
# their full depth, and torchvision's recipes cannot be shrunk.
TINY = {
    "unet": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "unetplusplus": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "deeplabv3": {"encoder_depth": 3, "decoder_channels": 32},
    "deeplabv3plus": {"encoder_depth": 3, "decoder_channels": 32},
    # No dropout: with 3 steps its noise (p=0.2 on 32 channels) outweighs the fall of the loss.
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32, "decoder_dropout": 0.0},
    "pspnet": {"encoder_depth": 3, "psp_out_channels": 32},
    "linknet": {"encoder_depth": 3},
    "manet": {"encoder_depth": 3, "decoder_channels": [32, 16, 8], "decoder_pab_channels": 8},
    "pan": {"decoder_channels": 16},
    "upernet": {"encoder_depth": 3, "decoder_channels": 32},
    "segformer": {"encoder_depth": 3, "decoder_segmentation_channels": 32},
    "fcn_resnet50": {},
    "deeplabv3_resnet50": {},
    **NARROW_FC,
    "parsenet": {"fc_channels": 64},
    "deeplabv1": {"fc_channels": 64},
    "segnet": {},
    "fcdensenet56": {},
    "fcdensenet67": {},
    "fcdensenet103": {},
    "deeplabv2": {"atrous_rates": [1, 2]},  # a 4 × 4 feature map: the paper's rates would read padding
    "fastfcn": {"jpu_channels": 32, "head_channels": 32},
    "gatedscnn": {"aspp_channels": 32},
}


def _loss(model, x, y) -> float:
    torch.manual_seed(1)  # the same dropout masks before and after training
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("arch", list(SEGMENTATION_ARCHITECTURES))
def test_trains_a_few_steps(arch):
    """Three AdamW steps (FastFCN: five) on one tiny 4-band batch: the loss falls, the weights move and stay finite."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=4, num_classes=CLASSES, **TINY[arch]).train()
    side = max(32, output_stride(model))  # PAN: 128
    x = torch.randn(2, 4, side, side)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # learnable from the pixel itself
    before = [p.detach().clone() for p in model.parameters()]
    start = _loss(model, x, y)
    # 1e-3 overshoots FPN's first steps, 3e-4 DeepLab v2's (four summed classifiers on a 101-layer ResNet)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4 if arch == "deeplabv2" else 3e-4)
    # FastFCN's first steps oscillate on this batch of 2 (measured on an AMD EPYC: 1.644, 1.666, 1.632,
    # 1.634, 1.620, 1.614), so its loss is compared after five.
    for _ in range(5 if arch == "fastfcn" else 3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        assert loss.shape == () and math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert _loss(model, x, y) < start


@pytest.mark.parametrize(
    "arch, encoder, options, expected",
    [
        ("nope", "resnet18", {}, ["model.arch", "'nope'", "choose one of unet", "fcn_resnet50"]),
        ("unet", "resnet19", {}, ["model.encoder", "'resnet19'", "did you mean 'resnet18'"]),
        ("unet", "tu-not_a_timm_model", {}, ["model.encoder", "timm has no model 'not_a_timm_model'"]),
        (
            "unet",
            "resnet18",
            {"decoder_chanels": [8]},
            ["model.options.decoder_chanels", "not an option of unet", "did you mean 'decoder_channels'"],
        ),
        (
            "fpn",
            "resnet18",
            {"encoder_depth": 3},
            ["model.options.encoder_depth", "4× the input's side", "use encoder_depth: 5", "upsampling: 1"],
        ),
        ("fpn", "resnet18", {"encoder_depth": 4}, ["model.options.encoder_depth", "2×", "upsampling: 2"]),
        ("fpn", "resnet18", {"encoder_depth": 2}, ["model.options", "cannot be less than 3"]),  # smp's own check
        (
            "pspnet",
            "resnet18",
            {"encoder_depth": 5},
            ["model.options.encoder_depth", "1/4 of the input's side", "encoder_depth: 3", "upsampling: 32"],
        ),
        ("segformer", "resnet18", {"upsampling": 2}, ["model.options.upsampling", "use upsampling: 4"]),
        ("deeplabv3", "resnet18", {"upsampling": 4}, ["model.options.upsampling", "use upsampling: 8"]),
        ("unet", "resnet18", {"encoder_depth": 3}, ["model.options.decoder_channels", "[64, 32, 16]"]),
        (
            "manet",
            "resnet18",
            {"encoder_depth": 3, "decoder_channels": [8, 4]},
            ["model.options.decoder_channels", "3 for encoder_depth 3 (got 2)"],
        ),
        ("unet", "resnet18", {"encoder_depth": 6}, ["model.options", "range [1, 5], got 6"]),
        ("unet", "resnet18", {"encoder_depth": "3"}, ["model.options.encoder_depth", "'3'"]),
        ("unet", "resnet18", {"activation": "sigmoid"}, ["model.options.activation", "raw logits"]),
        ("unet", "resnet18", {"aux_params": {"classes": 2}}, ["model.options.aux_params", "tuples"]),
        (
            "unet",
            "resnet18",
            {"encoder_weights": "imagenet"},
            ["model.options.encoder_weights", "model.encoder_weights"],
        ),
        ("unet", "resnet18", {"classes": 3}, ["model.options.classes", "set by geoseg"]),
        ("fcn_resnet50", "resnet34", {}, ["model.encoder", "fixed resnet50 backbone", "'resnet34'"]),
        (
            "deeplabv3_resnet50",
            "resnet18",
            {"encoder_depth": 3},
            ["model.options", "takes no options", "encoder_depth"],
        ),
    ],
)
def test_bad_models_are_refused_in_one_line(arch, encoder, options, expected):
    with pytest.raises(ModelError) as info:
        build_model(arch, in_channels=3, num_classes=2, encoder=encoder, **options)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    for text in expected:
        assert text in message, message
    assert isinstance(info.value, (GeosegError, ValueError)) and info.value.exit_code == 2


@pytest.mark.parametrize("bands, classes, field", [(0, 2, "bands"), (3, 0, "classes")])
def test_empty_inputs_or_outputs_are_refused(bands, classes, field):
    with pytest.raises(ModelError, match=f"^{field}: "):
        build_model("unet", in_channels=bands, num_classes=classes)


@pytest.mark.parametrize(
    "arch, options",
    [
        ("fpn", {"encoder_depth": 3, "upsampling": 1}),
        ("pspnet", {"encoder_depth": 5, "upsampling": 32}),
        ("unet", {"encoder_weights": None}),
    ],
)
def test_the_suggested_fixes_build_input_sized_models(arch, options):
    model = build_model(arch, in_channels=3, num_classes=2, **options).eval()
    side = 2 * output_stride(model)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, side, side)).shape == (1, 2, side, side)


def test_torchvision_models_keep_torchvision_state_dict_keys():
    """Weights exported from torchvision (without the aux head) load into the wrapper as they are."""
    ours = build_model("fcn_resnet50", in_channels=3, num_classes=CLASSES)
    theirs = fcn_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=False)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x)["out"])


def test_torchvision_encoder_is_fixed_but_the_default_is_accepted():
    for arch in TORCHVISION_ARCHITECTURES:
        assert resolve_encoder(arch) == resolve_encoder(arch, "resnet50") == "resnet50"
    assert resolve_encoder("unet", "resnet34") == "resnet34"
    conv = build_model("deeplabv3_resnet50", in_channels=7, num_classes=2).backbone.conv1
    assert conv.in_channels == 7 and conv.stride == (2, 2)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_ARCHITECTURES))
@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_torchvision_models_rebuild_from_a_model_card(arch, encoder):
    # A job's default encoder (resnet18) is what the card carries unless the job names resnet50.
    card = model_card(arch=arch, encoder=encoder, options={}, bands=[1, 2, 3, 4], classes=["a", "b", "c"], dtype=None)
    model = build_model_from_card(card)
    assert output_stride(model) == 8 and model.backbone.conv1.in_channels == 4


def test_torchvision_checkpoint_round_trip(tmp_path):
    fields = {
        "arch": "fcn_resnet50",
        "encoder": "resnet18",
        "options": {},
        "bands": [1, 2, 3, 4],
        "classes": ["water", "land"],
        "dtype": None,
    }
    card = model_card(**fields)
    torch.manual_seed(0)
    model = build_model_from_card(card).eval()
    write_checkpoint(tmp_path / "ckpt", model, **fields)
    loaded, loaded_card = load_checkpoint(tmp_path / "ckpt")
    assert loaded_card == card
    x = torch.randn(1, 4, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_mask_rcnn_takes_any_band_count_and_keeps_the_tile_resolution():
    assert is_instance_arch("maskrcnn_resnet18_fpn") and not is_instance_arch("unet")
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet18_fpn", in_channels=4, num_classes=3)
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 10:40, 20:60] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([2]), "masks": masks}
    model.train()
    losses = model([torch.randn(4, 96, 96)], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([torch.randn(4, 80, 112)])[0]
    # No resizing: masks come back on the input's own pixel grid.
    assert out["masks"].shape[-2:] == (80, 112)


class _NeedsTwoStrides(torch.nn.Module):
    """Runs only on inputs of at least two strides a side, like a model with a 2×2 bottleneck."""

    output_stride = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        if x.shape[-1] < 16:
            raise RuntimeError("input too small")
        return self.conv(x)


def test_smallest_tile_is_the_smallest_stride_multiple_the_model_runs_on():
    model = _NeedsTwoStrides().train()
    assert smallest_tile(model) == 16
    assert model.training  # the probe leaves the mode as it found it


def test_model_info_describes_the_fixed_backbone():
    info = model_info("fcn_resnet50")
    assert (info.encoder, info.stride, info.smallest_tile) == ("resnet50", 8, 8)
    assert 30_000_000 < info.parameters < 40_000_000


def test_cli_lists_every_architecture_with_stride_and_smallest_tile(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["arch", "source"] and "smallest tile" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(ARCHITECTURES)
    for arch, row in rows.items():
        if arch.startswith("maskrcnn"):  # detections, not logits: padded to 32, merged across tiles
            assert row[2] == arch.split("_")[1] and row[4:] == ["32", "64", "-", "instances"], row
            continue
        # arch source encoder parameters stride smallest-tile halo tiling...
        stride, tile = int(row[4]), int(row[5])
        assert stride == STRIDES[arch] and tile % stride == 0 and tile == stride, row
        assert row[2] == resolve_encoder(arch)  # resnet18, torchvision's resnet50, the paper's backbone
        assert int(row[3].replace(",", "")) > 1_000_000
        assert " ".join(row[7:]) == ("exact (crop)" if arch in EXACT_TILING else "blend"), row


def test_cli_refuses_an_unknown_encoder(capsys):
    assert main(["models", "--encoder", "resnet19"]) == 2
    err = capsys.readouterr().err
    assert "model.encoder: unknown encoder 'resnet19'" in err and err.count("\n") == 1
