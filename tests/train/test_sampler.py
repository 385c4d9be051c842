"""The training sampler: held-out validation strips, class-balanced oversampling, photometric jitter."""

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.io.labels import IGNORE
from geoseg.train.sampler import CropSampler, LabelIndex, split_area, validation_windows
from tests.factories import write_geotiff


@pytest.mark.parametrize("side", ["bottom", "top", "left", "right"])
def test_validation_strip_and_training_area_split_the_scene(side):
    train, val = split_area(300, 200, 0.2, side)
    mask = np.zeros((300, 200), int)
    for window, value in ((train, 1), (val, 2)):
        mask[
            int(window.row_off) : int(window.row_off + window.height),
            int(window.col_off) : int(window.col_off + window.width),
        ] += value
    assert set(np.unique(mask)) == {1, 2}  # every pixel in exactly one of them
    assert (mask == 2).mean() == pytest.approx(0.2, abs=0.01)
    assert split_area(300, 200, 0.0)[1] is None


def test_validation_windows_cover_the_strip_inside_it():
    _, val = split_area(300, 500, 0.3, "bottom")
    windows = validation_windows(val, 128)
    covered = np.zeros((300, 500), bool)
    for w in windows:
        assert w.row_off >= val.row_off and w.row_off + w.height <= 300 and w.col_off + w.width <= 500
        covered[int(w.row_off) : int(w.row_off + w.height), int(w.col_off) : int(w.col_off + w.width)] = True
    assert covered[210:].all() and not covered[:210].any()


def _rare_class_scene(folder: Path):
    """Background everywhere, one small 'water' square (0.4% of the scene) in a corner."""
    labels = np.zeros((256, 256), np.uint8)
    labels[200:216, 16:32] = 1
    image = np.stack([labels * 80 + 60] * 3).astype(np.uint8)
    scene = write_geotiff(folder / "scene.tif", image)
    label_path = write_geotiff(folder / "labels.tif", labels[None], nodata=IGNORE)
    return scene, label_path


def _water_share(sampler, n=60):
    shares = []
    for _, (_image, target) in zip(range(n), sampler, strict=False):  # the sampler never ends
        shares.append(float((target == 1).float().mean()))
    return np.mean(shares)


def test_oversampling_lifts_a_rare_class_and_crops_stay_in_the_training_area(tmp_path):
    scene, labels = _rare_class_scene(tmp_path)
    train, _ = split_area(256, 256, 0.0)
    index = LabelIndex.build(labels, train, 2)
    assert index.counts.tolist() == [256 * 256 - 256, 256]
    assert index.cells[:, :, 1].sum() == 1  # one 64-px cell holds water
    common = {
        "areas": [train],
        "bands": (1, 2, 3),
        "size": 32,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "seed": 3,
        "indexes": [index],
    }
    plain = _water_share(CropSampler([(scene, labels)], oversample=0.0, **common))
    balanced = _water_share(CropSampler([(scene, labels)], oversample=0.8, **common))
    assert plain < 0.05 and balanced > 5 * plain

    # Crops never reach into a held-out strip: with the bottom 30% held out, no crop sees row >= 179.
    train, _ = split_area(256, 256, 0.3, "bottom")
    index = LabelIndex.build(labels, train, 2)
    sampler = CropSampler(
        [(scene, labels)],
        areas=[train],
        bands=(1, 2, 3),
        size=32,
        mean=[0, 0, 0],
        std=[1, 1, 1],
        seed=1,
        indexes=[index],
        oversample=1.0,
    )
    assert _water_share(sampler) == 0.0  # the only water is in the strip


def test_photometric_jitter_changes_gain_and_offset_only(tmp_path):
    scene, labels = _rare_class_scene(tmp_path)
    train, _ = split_area(256, 256, 0.0)
    kwargs = {"areas": [train], "bands": (1, 2, 3), "size": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "seed": 5}
    ((a, ta),) = [s for _, s in zip(range(1), CropSampler([(scene, labels)], jitter=0.0, **kwargs), strict=False)]
    ((b, tb),) = [s for _, s in zip(range(1), CropSampler([(scene, labels)], jitter=0.2, **kwargs), strict=False)]
    assert torch.equal(ta, tb)  # same crop and same augmentation: labels untouched
    assert not torch.equal(a, b)
    for band in range(3):  # b = a * gain + offset, gain within 1 ± 0.2
        x, y = a[band].flatten().double(), b[band].flatten().double()
        if x.std() > 0:
            gain = torch.dot(x - x.mean(), y - y.mean()) / torch.dot(x - x.mean(), x - x.mean())
            assert 0.8 <= gain <= 1.2
            assert torch.allclose(y, gain * x + (y.mean() - gain * x.mean()), atol=1e-3)
