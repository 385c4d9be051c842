"""The per-pixel colour baseline: the model's bands only, alpha as a mask, any bit depth."""

import numpy as np
from rasterio.enums import ColorInterp

from geoseg.evaluate.colour_baseline import colour_baseline
from tests.factories import write_geotiff


def _scene(folder, name, seed):
    """12-bit data in uint16: class 1 where band 1 is bright; an alpha band hides the left quarter."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((128, 128)) < 0.3).astype(np.uint8)
    bright = truth.astype(np.float64)
    colour = np.stack([1500 + 1200 * bright, 1800 + 0 * bright, 1600 + 0 * bright]) + rng.normal(0, 80, (3, 128, 128))
    alpha = np.full((1, 128, 128), 65535)
    alpha[:, :, :32] = 0
    image = np.concatenate([colour, alpha]).astype(np.uint16)
    scene = write_geotiff(
        folder / f"{name}.tif",
        image,
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )
    labels = write_geotiff(folder / f"{name}_labels.tif", truth[None], nodata=255)
    return scene, labels


def test_colour_baseline_uses_colour_bands_masks_alpha_and_scales_12_bit(tmp_path):
    train, train_labels = _scene(tmp_path, "train", 0)
    survey, survey_labels = _scene(tmp_path, "survey", 1)
    scores = colour_baseline(train, train_labels, survey, survey_labels, ["background", "water"])
    assert scores["pixels"] == 128 * 96  # the alpha-masked quarter is not scored
    assert scores["mean_iou"] > 0.95  # 12-bit values standardised: the bright band separates the classes
    # Only band 2 (no signal): the baseline can do no better than guessing the majority class.
    blind = colour_baseline(train, train_labels, survey, survey_labels, ["background", "water"], bands=[2])
    assert blind["mean_iou"] < 0.6
