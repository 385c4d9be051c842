"""The RGBN demo scene: 4 bands of uint16 with a plausible near-infrared band, deterministic."""

import rasterio
from rasterio.enums import ColorInterp

from geoseg.io.raster import inspect_scene
from geoseg.synthetic import DEMO_CLASSES, make_rgbn_scene


def test_rgbn_scene_is_4_band_uint16_with_plausible_nir_and_is_deterministic(rgbn, tmp_path):
    again = make_rgbn_scene(tmp_path, size=256, seed=1)
    assert again.scene.read_bytes() == rgbn.scene.read_bytes()
    scene = inspect_scene(rgbn.scene)
    assert (scene.count, scene.dtype, scene.bands, scene.alpha, scene.nodata) == (4, "uint16", (1, 2, 3, 4), None, 0)
    with rasterio.open(rgbn.scene) as src, rasterio.open(rgbn.labels_tif) as lab:
        assert src.descriptions == ("R", "G", "B", "NIR")
        assert src.colorinterp[3] != ColorInterp.alpha  # NIR is a colour, never a mask
        assert src.block_shapes[0] == (128, 128)
        pixels, labels = src.read(), lab.read(1)
    valid = labels != 255
    assert 0.02 < (~valid).mean() < 0.2  # the collar
    assert (pixels[:, ~valid] == 0).all() and (pixels[:, valid] >= 1).all()
    assert pixels.max() > 32767  # the upper half of uint16 is used: a signed reading would break
    nir = {name: pixels[3][labels == i].mean() for i, name in enumerate(DEMO_CLASSES)}
    red = {name: pixels[0][labels == i].mean() for i, name in enumerate(DEMO_CLASSES)}
    ndvi = {name: (nir[name] - red[name]) / (nir[name] + red[name]) for name in DEMO_CLASSES}
    assert nir["vegetation"] > 1.2 * max(nir["building"], nir["road"], nir["background"]) > 4 * nir["water"]
    assert ndvi["vegetation"] > 0.3 and ndvi["water"] < -0.4
    assert all(abs(ndvi[name]) < 0.1 for name in ("background", "building", "road"))
