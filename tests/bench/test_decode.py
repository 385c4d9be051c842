"""``geoseg bench decode``: it reads exactly the windows prediction reads, and says so in one JSON line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from geoseg.bench.decode import bench_decode, read_every_tile
from geoseg.io.raster import read_tile
from geoseg.synthetic.blocks import scene_path, write_synthetic_scene
from geoseg.tiling import plan_tiles


def test_every_tile_is_read_as_prediction_reads_it(tmp_path, monkeypatch):
    import geoseg.bench.decode as decode

    scene = write_synthetic_scene(tmp_path / "scene.tif", 200)
    tiles = plan_tiles(200, 200, tile_size=96, halo=16)
    seen = {}

    def recording(src, tile, bands):
        pixels, valid = read_tile(src, tile, bands)
        seen[tile.index] = pixels
        return pixels, valid

    monkeypatch.setattr(decode, "read_tile", recording)
    assert read_every_tile(scene, tiles, (1, 2, 3), threads=2) > 0
    assert sorted(seen) == [tile.index for tile in tiles]  # each tile once, none left out
    with rasterio.open(scene) as src:
        for tile in tiles:  # the same pixels, mirrored halo included, whatever thread read them
            np.testing.assert_array_equal(seen[tile.index], read_tile(src, tile, (1, 2, 3))[0])


def test_one_json_line_with_a_run_per_thread_count(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "geoseg", "bench", "decode", "--size", "256", "--tile-size", "128",
         "--halo", "16", "--threads", "1", "2", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    (line,) = out.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["bench"] == "decode" and result["tiles"] == len(plan_tiles(256, 256, tile_size=128, halo=16))
    assert [run["threads"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["mpix_s"] == pytest.approx(256 * 256 / 1e6 / run["seconds"], rel=0.005)
    assert scene_path(tmp_path, 256).exists()  # kept in the workdir for the next run


def test_a_tile_no_wider_than_two_halos_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tile_size"):
        bench_decode(size=256, tile_size=32, halo=16, workdir=tmp_path)
