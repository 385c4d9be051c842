"""``geoseg bench predict --model null``: the pipeline with a model that does no work, against reading alone."""

import numpy as np
import pytest
import rasterio

from geoseg.bench.feed import _fresh_mosaic, bench_feed, null_checkpoint
from geoseg.infer import TilePredictor
from geoseg.io.mosaic import open_mosaic
from geoseg.io.raster import read_valid
from geoseg.models.checkpoint import load_checkpoint
from geoseg.models.null import NullModel
from geoseg.synthetic.blocks import CLASSES, scene_path, write_synthetic_scene
from geoseg.tiling import plan_tiles


def test_a_null_checkpoint_predicts_the_first_class_wherever_the_scene_has_data(tmp_path):
    scene = write_synthetic_scene(tmp_path / "scene.tif", 200)
    checkpoint = null_checkpoint(tmp_path / "checkpoint")
    model, card = load_checkpoint(checkpoint)
    assert isinstance(model, NullModel) and card.arch == "null" and list(card.classes) == list(CLASSES)
    mosaic_path = _fresh_mosaic(tmp_path / "mosaic.zarr", scene, 200, 64)
    predictor = TilePredictor(checkpoint, scene, mosaic_path, threads=1)
    tiles = plan_tiles(200, 200, tile_size=96, halo=16)
    assert sorted(predictor(tiles)) == [tile.index for tile in tiles]
    mosaic = open_mosaic(mosaic_path)
    with rasterio.open(scene) as src:
        valid = read_valid(src, rasterio.windows.Window(0, 0, 200, 200))
    np.testing.assert_array_equal(mosaic.valid[:], valid.astype(np.uint8))
    assert not mosaic.labels[:].any()  # class 0 everywhere: logits of zeros, first maximum


def test_the_registry_jobs_choose_from_does_not_offer_the_null_model():
    from geoseg.errors import ModelError
    from geoseg.models import build_model

    with pytest.raises(ModelError, match="unknown architecture 'null'"):
        build_model("null", in_channels=3, num_classes=2)


@pytest.mark.long  # 13 s on 2 cores: CI's test-long runs it
def test_one_run_per_core_count_each_with_reading_alone_beside_it(tmp_path, ray_local):
    lines: list[str] = []
    result = bench_feed(size=256, tile_size=128, halo=16, batch_size=2, workdir=tmp_path, log=lines.append)
    assert result["bench"] == "predict" and result["model"] == "null"
    assert result["tiles"] == len(plan_tiles(256, 256, tile_size=128, halo=16))
    cores = sorted({1, result["cpu_count"]})
    assert [run["cores"] for run in result["runs"]] == cores
    for run in result["runs"]:
        assert run["mpix_s"] > 0 and run["decode_mpix_s"] > 0
        assert run["vs_decode"] == pytest.approx(run["mpix_s"] / run["decode_mpix_s"], rel=0.01)
        assert run["mpix_s_per_core"] == pytest.approx(run["mpix_s"] / run["cores"], rel=0.01)
    assert scene_path(tmp_path, 256).exists()  # the scene is kept for the next run; the run's files are not
    assert sorted(path.name for path in tmp_path.iterdir()) == [scene_path(tmp_path, 256).name]
