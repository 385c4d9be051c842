"""The bench's synthetic scene: any size, georeferenced, tiled, written block by block."""

import tracemalloc

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.synthetic.blocks import synthetic_block, write_synthetic_scene


def test_synthetic_scene_is_georeferenced_tiled_and_written_block_by_block(tmp_path):
    size = 3000  # 27 MB of pixels: far more than the bound below, so a whole-scene buffer fails it
    tracemalloc.start()
    try:
        path = write_synthetic_scene(tmp_path / "scene.tif", size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12e6, f"writer held {peak / 1e6:.1f} MB: not block by block"
    assert not list(tmp_path.glob("*.partial"))

    with rasterio.open(path) as src:  # header and two windows only, never the whole scene
        assert (src.width, src.height, src.count, src.dtypes) == (size, size, 3, ("uint8",) * 3)
        assert src.crs.to_epsg() == 32633
        assert (src.transform.a, src.transform.e) == (0.5, -0.5)
        assert src.block_shapes == [(512, 512)] * 3
        assert src.profile["compress"] == "deflate"
        corner = Window(2560, 2560, 440, 440)  # the partial last block
        assert np.array_equal(src.read(window=corner), synthetic_block(corner, 0))
        inner = src.read(window=Window(1024, 512, 512, 512))
    assert inner.std() > 5 and len(np.unique(inner)) > 50  # not constant
    assert path.stat().st_size < 0.8 * 3 * size * size  # but compressible
