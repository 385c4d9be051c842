"""Blend stitching: Hann weights checked by hand. (Through the predict stage: tests/stages/test_predict.py.)"""

import numpy as np

from geoseg.infer import TileBlender
from geoseg.infer.blend import BlendScratch, hann_window
from geoseg.io.mosaic import create_mosaic, open_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.tiling import plan_tiles


def test_hann_window_is_positive_symmetric_and_peaks_in_the_middle():
    w = hann_window(64)
    assert w.min() > 0 and np.allclose(w, w[::-1]) and np.allclose(w, w.T)
    assert w[32, 32] == w.max()


def test_two_windows_blend_by_their_hann_weights(tmp_path, make_geotiff):
    core, halo = 32, 8
    size = core + 2 * halo
    path = make_geotiff("s.tif", np.full((3, core, 2 * core), 7, np.uint8))
    scene = inspect_scene(path)
    mosaic = create_mosaic(
        tmp_path / "m.zarr",
        height=core,
        width=2 * core,
        chunk=core,
        crs=scene.crs,
        transform=scene.transform,
        class_names=["a", "b"],
        scores=True,
    )
    tiles = plan_tiles(core, 2 * core, tile_size=size, halo=halo)
    BlendScratch.create(mosaic, len(tiles), 2, size)
    scratch = BlendScratch(mosaic)
    scratch.write(tiles[0], np.stack([np.ones((size, size)), np.zeros((size, size))]))  # left tile says "a"
    scratch.write(tiles[1], np.stack([np.zeros((size, size)), np.ones((size, size))]))  # right tile says "b"
    TileBlender(path, tmp_path / "m.zarr")(tiles)

    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    x = np.arange(2 * core)
    left = np.where((x >= -halo) & (x < core + halo), ramp[np.clip(x + halo, 0, size - 1)], 0)
    right = np.where(x >= core - halo, ramp[np.clip(x - core + halo, 0, size - 1)], 0)
    expected_b = right / (left + right)
    result = open_mosaic(tmp_path / "m.zarr")
    scores_b = result.group["scores"][1, 0, :].astype(float) / 255
    assert np.allclose(scores_b, expected_b, atol=1 / 255)
    assert (expected_b[: core - halo] == 0).all() and (expected_b[core + halo :] == 1).all()  # blend only near the seam
    assert 0 < expected_b[core - 1] < 0.5 < expected_b[core] < 1  # equal weights meet at the seam
    assert (result.labels[0, :] == (expected_b > 0.5)).all()
