"""Band statistics for normalization: no overflow on uint16, alpha-masked pixels skipped, a floor on the std."""

import numpy as np
import pytest
from rasterio.enums import ColorInterp

from geoseg.io.normalization import band_statistics
from geoseg.io.raster import inspect_scene
from tests.factories import write_geotiff


def test_uint16_statistics_do_not_overflow_and_skip_alpha_masked_pixels(tmp_path):
    """Values near 65535 (squares beyond 2**32) and alpha-masked pixels of another value."""
    data = np.zeros((4, 64, 64), np.uint16)
    data[0] = 65000 + np.arange(64, dtype=np.uint16)[None, :]  # x**2 overflows uint16, uint32 and int32
    data[1] = 40000
    data[2] = 123
    data[3] = 255
    data[:3, :, :16] = 7  # masked by alpha: must not count
    data[3, :, :16] = 0
    path = write_geotiff(
        tmp_path / "a.tif", data, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    )
    scene = inspect_scene(path)
    mean, std = band_statistics([path], scene.bands, step=1)
    x = np.arange(16, 64) + 65000.0
    assert np.allclose(mean, [x.mean(), 40000, 123], rtol=1e-12)
    assert np.allclose(std[0], x.std(), rtol=1e-6) and np.isfinite(std).all()


def test_a_constant_band_gets_a_std_of_one_digital_number_not_zero(tmp_path):
    """As in RGBA.uint16.tif, whose colour bands are all 10000: the std floors at 1, so another
    value at prediction is a few units away, not a million."""
    image = np.stack([np.full((64, 64), 10000), np.arange(64 * 64).reshape(64, 64)]).astype(np.uint16)
    path = write_geotiff(tmp_path / "flat.tif", image)
    mean, std = band_statistics([path], (1, 2), step=1)
    assert mean[0] == 10000 and std[0] == 1.0
    assert std[1] == pytest.approx(np.arange(64 * 64).std(), rel=1e-6)
