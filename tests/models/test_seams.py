"""Invariant 1 (Seamless): tiled prediction equals whole-image prediction.

Tiles are cut with the real ``plan_tiles`` + ``mirror_indices`` and run with
``predict_logits``; the reference is the model on the whole image mirror-padded
by the halo (numpy ``reflect``, and up to a multiple of the stride), cropped
back. Models are tiny (shallow encoders, narrow decoders) so that every
architecture runs on images of a few dozen pixels in a few seconds on 2 cores.
torchvision's fcn_resnet50 and deeplabv3_resnet50 are fixed recipes that cannot
be shrunk: they get their own tests, on scenes of 8 × 16 pixels.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from geoseg.infer.predict import predict_logits
from geoseg.models import build_model
from geoseg.models.context import (
    EXACT_TILING,
    GLOBAL_CONTEXT,
    GLOBAL_HALO_CAP,
    KNOWN_HALOS,
    NOT_EQUIVARIANT,
    context_radius,
    exact_tiling,
    has_global_context,
    measure_halo,
    safe_halo,
    tiling_stride,
)
from geoseg.models.registry import CLASSIC_ARCHITECTURES, TORCHVISION_ARCHITECTURES
from geoseg.models.registry import SEGMENTATION_ARCHITECTURES as ARCHITECTURES  # instance models are merged, not tiled
from geoseg.tiling import mirror_indices, plan_tiles

CPU = torch.device("cpu")
CLASSES = 3
# Small but architecture-faithful options; FPN and PAN need their full depth.
SMALL = {
    "unet": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "unetplusplus": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "linknet": {"encoder_depth": 3},
    "segformer": {"encoder_depth": 3, "decoder_segmentation_channels": 32},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "deeplabv3": {"encoder_depth": 3, "decoder_channels": 32, "decoder_atrous_rates": (2, 4, 6)},
    "deeplabv3plus": {
        "encoder_depth": 4,
        "encoder_output_stride": 16,
        "decoder_channels": 32,
        "decoder_atrous_rates": (2, 4, 6),
    },
    "pspnet": {"encoder_depth": 3, "psp_out_channels": 32},
    "manet": {"encoder_depth": 3, "decoder_channels": [32, 16, 8], "decoder_pab_channels": 8},
    "pan": {"decoder_channels": 16},
    "upernet": {"encoder_depth": 3, "decoder_channels": 32},
    "fcn_resnet50": {},  # torchvision's recipes take no options
    "deeplabv3_resnet50": {},
    # The classic systems' bodies are fixed (VGG-16, ResNets) and see 186-930 px: their modules' own tests crop
    # strips for tiled-vs-whole; here FC-DenseNet, shrunk to two pools, goes through the real tiling.
    "fcdensenet56": {"layers_per_block": [1, 1, 1, 1, 1], "first_channels": 8, "growth_rate": 4},
    **{name: {} for name in CLASSIC_ARCHITECTURES if name != "fcdensenet56"},
}
FULL_SIZE = set(TORCHVISION_ARCHITECTURES) | set(CLASSIC_ARCHITECTURES) - {"fcdensenet56"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(build_model(arch, in_channels=3, num_classes=CLASSES, **SMALL[arch]))


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():  # running stats that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=gen))
            module.bias.data.copy_(0.2 * torch.randn(n, generator=gen))
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, height, width)).astype(np.float32)


def tiled_logits(model, scene: np.ndarray, *, core: int, halo: int) -> np.ndarray:
    _, height, width = scene.shape
    tiles = plan_tiles(height, width, tile_size=core + 2 * halo, halo=halo)
    batch = np.stack(
        [scene[:, mirror_indices(*t.read_rows, height)][:, :, mirror_indices(*t.read_cols, width)] for t in tiles]
    )
    logits = predict_logits(model, batch, CPU).numpy()
    assert logits.shape[2:] == batch.shape[2:]
    mosaic = np.full((logits.shape[1], height, width), np.nan, np.float32)
    for t, tile_logits in zip(tiles, logits, strict=True):  # only cores are kept
        mosaic[:, t.row : t.row + t.height, t.col : t.col + t.width] = tile_logits[
            :, halo : halo + t.height, halo : halo + t.width
        ]
    assert not np.isnan(mosaic).any()
    return mosaic


def whole_logits(model, scene: np.ndarray, *, halo: int, stride: int) -> np.ndarray:
    _, height, width = scene.shape
    extra_h, extra_w = -(height + 2 * halo) % stride, -(width + 2 * halo) % stride
    padded = np.pad(scene, ((0, 0), (halo, halo + extra_h), (halo, halo + extra_w)), mode="reflect")
    return predict_logits(model, padded[None], CPU)[0].numpy()[:, halo : halo + height, halo : halo + width]


def round_up(value: int, stride: int) -> int:
    return -(-value // stride) * stride


def core_for(stride: int) -> int:
    return 2 * stride if stride < 16 else stride


def seam_gap(model, scene, *, stride, halo, core=None) -> float:
    tiled = tiled_logits(model, scene, core=core or core_for(stride), halo=halo)
    return float(np.abs(tiled - whole_logits(model, scene, halo=halo, stride=stride)).max())


def test_every_architecture_is_classified():
    groups = [EXACT_TILING, set(GLOBAL_CONTEXT), set(NOT_EQUIVARIANT)]
    for arch in ARCHITECTURES:
        assert sum(arch in group for group in groups) == 1, arch
        assert exact_tiling(arch) == (arch in EXACT_TILING)
        assert has_global_context(arch) == (arch in GLOBAL_CONTEXT)
    assert set(SMALL) == set(ARCHITECTURES)
    assert not exact_tiling("unet", {"decoder_attention_type": "scse"})  # scSE pools the whole input


# 24 × 40 pixels = 1.5 × 2.5 cores of 16: partial tiles at the bottom and the right.
SCENE = (24, 40)


@pytest.mark.parametrize("arch", sorted(EXACT_TILING - FULL_SIZE))
def test_tiles_equal_whole_image_when_halo_covers_context(arch):
    model = small_model(arch)
    stride = tiling_stride(arch, model)
    radius = context_radius(model, in_channels=3, stride=stride, probe=256)
    assert radius is not None and 0 < radius < 128
    halo = round_up(radius, stride)
    scene = image(*SCENE)
    tiled = tiled_logits(model, scene, core=core_for(stride), halo=halo)
    whole = whole_logits(model, scene, halo=halo, stride=stride)
    assert (tiled.argmax(0) == whole.argmax(0)).all()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_halo_short_of_the_context_leaves_seams():
    model = small_model("unet")
    stride = tiling_stride("unet", model)
    radius = context_radius(model, in_channels=3, stride=stride, probe=256)
    scene = image(*SCENE)
    gaps = [seam_gap(model, scene, stride=stride, halo=halo) for halo in (0, round_up(radius, stride) - stride)]
    assert gaps[0] > 1e-2 and gaps[1] > 1e-4  # one stride short is already visible
    assert gaps[0] > gaps[1]


def test_misaligned_cores_leave_seams():
    """Cores off the stride grid see another pooling phase than the whole image."""
    model = small_model("unet")
    stride = tiling_stride("unet", model)
    halo = round_up(context_radius(model, in_channels=3, stride=stride, probe=256), stride)
    scene = image(*SCENE)
    # Core 12 and halo 74 still make 160-pixel tiles (a multiple of 8), but every
    # other tile starts half a stride off the whole image's downsampling grid.
    off = stride // 2
    assert seam_gap(model, scene, stride=stride, halo=halo + off // 2, core=stride + off) > 1e-3


def test_align_corners_upsampling_is_what_breaks_segformer():
    model = small_model("segformer")
    stride = tiling_stride("segformer", model)
    radius = context_radius(model, in_channels=3, stride=stride, probe=256)
    assert radius is not None  # local context: not a global model
    halo, scene = round_up(radius, stride), image(*SCENE)
    assert seam_gap(model, scene, stride=stride, halo=halo) > 1e-2
    upsample = model.segmentation_head[1]
    assert isinstance(upsample, torch.nn.Upsample) and upsample.align_corners
    upsample.align_corners = False  # a fixed sampling grid: shift-equivariant by multiples of the scale
    assert seam_gap(model, scene, stride=stride, halo=halo) < 1e-5


@pytest.mark.parametrize("arch", sorted(set(GLOBAL_CONTEXT) - {"pan"} - FULL_SIZE))
def test_global_context_seams_shrink_but_do_not_vanish(arch):
    model = small_model(arch)
    stride = tiling_stride(arch, model)
    assert context_radius(model, in_channels=3, stride=stride, probe=256) is None  # sees the whole input
    scene = image(*SCENE)
    # Measured (max |logit| gap, halo 0 -> 128): 3-80x smaller, never ~0, and not
    # monotonic in between (deeplabv3 grows from halo 0 to 32).
    no_halo, wide = (seam_gap(model, scene, stride=stride, halo=halo) for halo in (0, round_up(128, stride)))
    assert wide < no_halo / 2, (no_halo, wide)
    assert wide > 1e-4, wide  # honest: no finite halo makes these exact


class _Record(TorchFunctionMode):
    """Every torch function a forward pass calls, with its keyword arguments (not the nested ones)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def _calls(arch: str, side: int = 64) -> list:
    model = small_model(arch)
    with _Record() as record, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return record.calls


def test_fcn_resnet50_is_local_with_one_integer_bilinear_upsample():
    """Why fcn_resnet50 tiles exactly: no operator mixes all pixels, and its one resampling,
    bilinear with align_corners=False by exactly its stride, keeps a fixed grid on every tile."""
    calls = _calls("fcn_resnet50")
    mixing = {
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
        F.softmax,
        torch.softmax,
        torch.matmul,
        torch.bmm,
        F.group_norm,
        F.instance_norm,
        F.layer_norm,
        F.grid_sample,
    }
    assert not [func for func, _, _ in calls if func in mixing]
    resampling = [(args, kwargs) for func, args, kwargs in calls if func is F.interpolate]
    assert len(resampling) == 1
    (features, *_), kwargs = resampling[0]
    assert kwargs["mode"] == "bilinear" and kwargs["align_corners"] is False
    assert tuple(kwargs["size"]) == (64, 64) and tuple(features.shape[-2:]) == (8, 8)  # × 8, the stride


def test_deeplabv3_resnet50_pools_its_whole_input():
    assert any(func is F.adaptive_avg_pool2d for func, _, _ in _calls("deeplabv3_resnet50"))  # ASPPPooling


def test_fcn_resnet50_tiles_equal_whole_image_at_its_known_halo():
    """~10 s on one core: resnet50 on two 472-pixel tiles and the 472 × 480 whole image."""
    model = small_model("fcn_resnet50")
    stride, halo = tiling_stride("fcn_resnet50", model), safe_halo("fcn_resnet50")
    assert (stride, halo) == (8, 232)  # exact radius 229 (measured; slow test below re-measures it)
    scene = image(8, 16)
    tiled = tiled_logits(model, scene, core=stride, halo=halo)
    whole = whole_logits(model, scene, halo=halo, stride=stride)
    assert (tiled.argmax(0) == whole.argmax(0)).all()
    np.testing.assert_allclose(tiled, whole, rtol=1e-6, atol=1e-5)  # logits reach ~300 with random BN
    assert seam_gap(model, scene, stride=stride, halo=96, core=stride) > 1e-1  # a short halo shows seams


def test_deeplabv3_resnet50_seams_do_not_vanish():
    model = small_model("deeplabv3_resnet50")
    stride = tiling_stride("deeplabv3_resnet50", model)
    assert stride == 8
    assert context_radius(model, in_channels=3, stride=stride, probe=64) is None  # sees the whole input
    # Its local paths alone (ASPP rate 36 at stride 8: 288 px) outreach GLOBAL_HALO_CAP, hence the cap.
    assert context_radius(model, in_channels=3, stride=stride, probe=256, local_only=True) is None
    assert safe_halo("deeplabv3_resnet50") == GLOBAL_HALO_CAP
    # On a scene this small the seams do not even shrink from halo 0 to 64 (measured 0.06 -> 2.2).
    assert seam_gap(model, image(8, 16), stride=stride, halo=64, core=stride) > 1e-2


@pytest.mark.slow
def test_pan_labels_converge_but_logits_do_not():
    """PAN's global terms dominate its logits: labels settle as the halo grows, logit gaps do not."""
    model = small_model("pan")
    stride = tiling_stride("pan", model)
    assert stride == 128
    scene = image(136, 200)
    disagreement = []
    for halo in (0, 256):
        tiled = tiled_logits(model, scene, core=stride, halo=halo)
        whole = whole_logits(model, scene, halo=halo, stride=stride)
        disagreement.append((tiled.argmax(0) != whole.argmax(0)).mean())
        assert np.abs(tiled - whole).max() > 1e-2
    assert disagreement[1] < disagreement[0] / 4, disagreement


@pytest.mark.parametrize("arch", ["unet", "linknet", "pspnet"])
def test_safe_halo_covers_the_context_on_the_stride_grid(arch):
    model = small_model(arch)
    stride = tiling_stride(arch, model)
    halo = safe_halo(arch, options=SMALL[arch])
    assert halo % stride == 0 and halo > 0
    radius = context_radius(model, in_channels=3, stride=stride, probe=256, local_only=has_global_context(arch))
    assert radius <= halo < radius + stride
    assert safe_halo(arch, options=SMALL[arch]) == halo  # cached


def test_known_halos_are_stride_multiples():
    assert set(KNOWN_HALOS) == set(ARCHITECTURES)
    for arch, halo in KNOWN_HALOS.items():
        stride = tiling_stride(arch, build_model(arch, in_channels=3, num_classes=2))  # resnet18 defaults
        assert safe_halo(arch) == halo and halo % stride == 0 and halo >= stride
        assert halo <= GLOBAL_HALO_CAP or not has_global_context(arch)
    for arch in TORCHVISION_ARCHITECTURES:  # "resnet50" names the same fixed backbone as the default
        assert safe_halo(arch, encoder="resnet50") == KNOWN_HALOS[arch]


def strip_radius(model, stride: int, width: int = 4096, height: int = 64) -> int:
    """Exact horizontal reach of a stride cell of logits, on a strip (a square probe that wide does not fit)."""
    x = torch.randn(1, 3, height, width, requires_grad=True)
    with torch.enable_grad():
        out = model(x)
        row, col = height // 2 // stride * stride, width // 2 // stride * stride
        out[:, :, row : row + stride, col : col + stride].sum().backward(inputs=[x])
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).flatten()
    assert cols[0] > 0 and cols[-1] < width - 1  # the reach fits in the strip
    return int(max(col - cols[0], cols[-1] - (col + stride - 1)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(CLASSIC_ARCHITECTURES) & EXACT_TILING))
def test_classic_known_halos_cover_their_receptive_field(arch):
    """The papers' full models, measured along a strip (about 5-15 s each on 2 cores)."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, num_classes=2).eval()
    stride = tiling_stride(arch, model)
    radius = strip_radius(model, stride)
    assert KNOWN_HALOS[arch] == max(stride, -(-radius // stride) * stride)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - set(CLASSIC_ARCHITECTURES)))
def test_known_halos_match_measurement(arch):
    """Minutes on 2 cores: re-measures the default context for every architecture
    (torchvision's resnet50s: probes of 512 pixels, about a minute each)."""
    torch.manual_seed(0)
    stride = tiling_stride(arch, build_model(arch, in_channels=3, num_classes=2))
    halo = measure_halo(arch)
    assert halo % stride == 0 and stride <= halo
    assert halo == KNOWN_HALOS[arch]


@pytest.mark.slow
def test_demo_unet_is_seamless_with_its_known_halo():
    """The full-depth demo U-Net: exact at KNOWN_HALOS["unet"], not one stride short."""
    torch.manual_seed(0)
    model = randomize_bn(build_model("unet", in_channels=3, num_classes=CLASSES, decoder_channels=[128, 64, 32, 16, 8]))
    stride, halo = tiling_stride("unet", model), safe_halo("unet")
    scene = image(40, 56)
    tiled = tiled_logits(model, scene, core=stride, halo=halo)
    whole = whole_logits(model, scene, halo=halo, stride=stride)
    assert (tiled.argmax(0) == whole.argmax(0)).all()
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    assert seam_gap(model, scene, stride=stride, halo=halo - stride, core=stride) > 1e-5
