"""The device-side pixel math gives the bytes of the host path it replaced (on CPU tensors here)."""

import numpy as np
import pytest
import torch

from geoseg.infer.device import DevicePixels, first_argmax
from geoseg.io.normalization import normalize
from geoseg.models import build_model
from geoseg.tiling import plan_tiles
from tests.factories import TINY_UNET

CPU = torch.device("cpu")


def host_path(model, raw, tiles, mean, std):
    """What prediction did before: numpy normalization, float32 logits back, numpy argmax, torch softmax of the core."""
    inputs = np.stack([normalize(tile_pixels, mean, std) for tile_pixels in raw])
    with torch.inference_mode():
        logits = model(torch.from_numpy(inputs)).numpy()
    labels, scores = [], []
    for tile, tile_logits in zip(tiles, logits, strict=True):
        core = tile_logits[:, tile.halo : tile.halo + tile.height, tile.halo : tile.halo + tile.width]
        labels.append(core.argmax(axis=0).astype(np.uint8))
        scores.append(torch.round(torch.softmax(torch.from_numpy(core[None]), dim=1) * 255).to(torch.uint8).numpy()[0])
    return labels, scores


@pytest.mark.parametrize(
    ("dtype", "high", "mean", "std"),
    [
        (np.uint8, 256, [90.0, 110.5, 70.25], [30.0, 41.5, 25.0]),
        (np.uint16, 65536, [9000.0, 500.0, 12.5], [900.0, 77.0, 3.0]),
    ],
)
def test_labels_and_scores_are_the_host_paths_bytes(dtype, high, mean, std):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=4, encoder="resnet18", **TINY_UNET).eval()
    tiles = plan_tiles(200, 200, tile_size=64, halo=8)[:5]  # edge tiles have smaller cores
    raw = np.random.default_rng(1).integers(0, high, (len(tiles), 3, 64, 64)).astype(dtype)
    want_labels, want_scores = host_path(model, raw, tiles, mean, std)
    got = DevicePixels(model, mean, std, CPU).cores(raw, tiles, scores=True)
    assert got.scores is not None
    for k, tile in enumerate(tiles):
        assert got.labels[k].dtype == np.uint8 and got.labels[k].shape == (tile.height, tile.width)
        np.testing.assert_array_equal(got.labels[k], want_labels[k])
        np.testing.assert_array_equal(got.scores[k], want_scores[k])
    assert len(np.unique(np.concatenate([lab.ravel() for lab in got.labels]))) > 1  # not a constant answer


def test_whole_window_probabilities_for_blending_are_the_softmax_of_the_logits():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=3, encoder="resnet18", **TINY_UNET).eval()
    raw = np.random.default_rng(2).integers(0, 256, (2, 3, 64, 64)).astype(np.uint8)
    mean, std = [100.0] * 3, [50.0] * 3
    inputs = np.stack([normalize(t, mean, std) for t in raw])
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(inputs)), dim=1).numpy()
    np.testing.assert_array_equal(DevicePixels(model, mean, std, CPU).probabilities(raw), want)


def test_first_argmax_is_torchs_argmax_with_ties_and_nans():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (7, 40, 50), generator=generator).float()  # many ties between classes
    scores[torch.rand(scores.shape, generator=generator) < 0.05] = float("nan")
    scores[:, 0, 0] = float("nan")  # every class NaN: the first
    scores[:, 0, 1] = 1.0  # every class tied: the first
    got = first_argmax(scores[:, 1:, :-1])  # a strided view, as a tile's core is
    want = scores[:, 1:, :-1].argmax(dim=0).to(torch.uint8)
    assert got.dtype == torch.uint8
    assert torch.equal(got, want)
    assert torch.equal(first_argmax(scores)[0, :2], torch.tensor([0, 0], dtype=torch.uint8))
    assert len(torch.unique(got)) == 7


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_dense_crf_refines_the_logits_before_the_argmax(dtype):
    from geoseg.infer.crf import CrfParams, dense_crf

    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=4, encoder="resnet18", **TINY_UNET).eval()
    tiles = plan_tiles(200, 200, tile_size=64, halo=8)[:2]
    raw = np.random.default_rng(2).integers(0, 256, (len(tiles), 3, 64, 64)).astype(dtype)
    mean, std = [100.0, 120.0, 90.0], [40.0, 50.0, 30.0]
    params = CrfParams(iterations=3, window=5)
    plain = DevicePixels(model, mean, std, CPU).cores(raw, tiles, scores=True)
    refined = DevicePixels(model, mean, std, CPU, crf=params).cores(raw, tiles, scores=True)
    with torch.inference_mode():
        inputs = torch.from_numpy(np.stack([normalize(pixels, mean, std) for pixels in raw]))
        # uint8 colours as they are; other types through the normalization, mean ± 2 std → 0–255
        image = torch.from_numpy(raw.astype(np.float32)) if dtype == np.uint8 else inputs * 63.75 + 127.5
        expected = dense_crf(model(inputs), image, params)
    for tile, labels, tile_scores, log_q in zip(tiles, refined.labels, refined.scores, expected, strict=True):
        core = log_q[:, tile.halo : tile.halo + tile.height, tile.halo : tile.halo + tile.width]
        np.testing.assert_array_equal(labels, core.argmax(dim=0).numpy())
        np.testing.assert_array_equal(tile_scores, torch.round(core.exp() * 255).to(torch.uint8).numpy())
    assert any((a != b).any() for a, b in zip(plain.labels, refined.labels, strict=True))
