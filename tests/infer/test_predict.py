"""Prediction without Ray: tiles of real GeoTIFFs into a georeferenced mosaic."""

import json

import numpy as np
import pytest
import rasterio

from geoseg.infer import TilePredictor
from geoseg.io.mosaic import create_mosaic, open_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.tiling import plan_tiles
from tests.factories import real_raster, scene_mosaic, tiny_unet_checkpoint


def predict_scene(tmp_path, path, *, tile_size=256, halo=32, batch=4, zarr_format=2):
    scene = inspect_scene(path)
    checkpoint = tiny_unet_checkpoint(tmp_path / "ckpt", scene)
    mosaic_path = tmp_path / "mosaic.zarr"
    create_mosaic(
        mosaic_path,
        height=scene.height,
        width=scene.width,
        chunk=tile_size - 2 * halo,
        crs=scene.crs,
        transform=scene.transform,
        class_names=["background", "water", "building"],
        zarr_format=zarr_format,
    )
    predictor = TilePredictor(checkpoint, path, mosaic_path, threads=2)
    tiles = plan_tiles(scene.height, scene.width, tile_size=tile_size, halo=halo)
    done = []
    for start in range(0, len(tiles), batch):
        done += predictor(tiles[start : start + batch])
    predictor.close()
    assert sorted(done) == list(range(len(tiles)))
    return scene, open_mosaic(mosaic_path)


@pytest.mark.parametrize("name", ["cogeo.tif", "RGB.byte.tif", "RGBA.uint16.tif", "alpha.tif"])
def test_real_geotiffs_predict_with_georeferencing_and_masks(tmp_path, name):
    path = real_raster(name)
    _, mosaic = predict_scene(tmp_path, path)
    with rasterio.open(path) as src:
        assert mosaic.crs == src.crs
        assert mosaic.transform == src.transform
        expected_valid = src.dataset_mask() > 0
    valid = mosaic.valid[:] > 0
    labels = mosaic.labels[:]
    assert (valid == expected_valid).all()
    assert labels[~valid].max(initial=0) == 0  # nothing predicted where the input has no data
    if name == "RGB.byte.tif":
        assert 0.05 < (~valid).mean() < 0.6  # the nodata collar
    if name == "alpha.tif":
        assert (~valid).mean() > 0.5  # alpha masks most of the scene


def test_a_predictor_made_before_its_mosaic_opens_it_at_the_first_batch(tmp_path, make_geotiff):
    """A stage starts its predictors first and makes the mosaic while they load."""
    data = np.random.default_rng(1).integers(1, 255, (3, 160, 160), dtype=np.uint8)
    path = make_geotiff("early.tif", data)
    scene = inspect_scene(path)
    mosaic_path = tmp_path / "mosaic.zarr"
    predictor = TilePredictor(tiny_unet_checkpoint(tmp_path / "ckpt", scene), path, mosaic_path, threads=1)
    assert not mosaic_path.exists()
    scene_mosaic(mosaic_path, path, 64)
    tiles = plan_tiles(160, 160, tile_size=96, halo=16)
    assert sorted(predictor(tiles)) == [tile.index for tile in tiles]
    predictor.close()
    assert open_mosaic(mosaic_path).valid[:].all()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_edge_tiles_and_all_chunks_are_written(tmp_path, make_geotiff, zarr_format):
    data = np.random.default_rng(0).integers(1, 255, (3, 200, 170), dtype=np.uint8)
    path = make_geotiff("odd.tif", data)
    _, mosaic = predict_scene(tmp_path, path, tile_size=96, halo=16, zarr_format=zarr_format)
    assert mosaic.valid[:].all()  # every chunk, including partial edge ones, got written
    assert mosaic.labels.shape == (200, 170)


def test_scores_are_quantized_probabilities_consistent_with_labels(tmp_path, make_geotiff):
    data = np.random.default_rng(1).integers(1, 255, (3, 130, 100), dtype=np.uint8)
    data[:, :7] = 0
    path = make_geotiff("s.tif", data, nodata=0)
    scene = inspect_scene(path)
    checkpoint = tiny_unet_checkpoint(tmp_path / "ckpt", scene)
    create_mosaic(
        tmp_path / "m.zarr",
        height=130,
        width=100,
        chunk=64,
        crs=scene.crs,
        transform=scene.transform,
        class_names=["background", "water", "building"],
        scores=True,
    )
    predictor = TilePredictor(checkpoint, path, tmp_path / "m.zarr", threads=2)
    predictor(plan_tiles(130, 100, tile_size=96, halo=16))
    mosaic = open_mosaic(tmp_path / "m.zarr")
    scores = mosaic.group["scores"][:].astype(int)
    labels, valid = mosaic.labels[:], mosaic.valid[:] > 0
    assert scores.shape == (3, 130, 100)
    assert (scores[:, ~valid] == 0).all()
    total = scores[:, valid].sum(axis=0)
    assert (abs(total - 255) <= 2).all()  # probabilities sum to one, up to rounding
    best = scores[:, valid].max(axis=0)
    assert (scores[:, valid][labels[valid], np.arange(valid.sum())] >= best - 1).all()  # argmax agrees


def test_rgba_uint16_predicts_with_alpha_as_a_mask(tmp_path, monkeypatch):
    """Extends the run over the real RGBA.uint16.tif above: 3 colour bands in, alpha only in `valid`."""
    from geoseg.infer.device import DevicePixels

    path = real_raster("RGBA.uint16.tif")
    seen = []
    real_forward = DevicePixels.logits
    monkeypatch.setattr(DevicePixels, "logits", lambda self, raw: seen.append(raw.shape[1]) or real_forward(self, raw))
    scene, mosaic = predict_scene(tmp_path, path)
    assert (scene.dtype, scene.bands, scene.alpha) == ("uint16", (1, 2, 3), 4)
    card = json.loads((tmp_path / "ckpt" / "model_card.json").read_text())
    assert card["bands"] == [1, 2, 3] and len(card["normalization"]["mean"]) == 3
    assert seen and set(seen) == {3}  # the model never sees the alpha band
    with rasterio.open(path) as src:
        alpha = src.read(4)
    assert 0.1 < (alpha == 0).mean() < 0.9
    valid, labels = mosaic.valid[:], mosaic.labels[:]
    assert ((valid == 0) == (alpha == 0)).all()
    assert (labels[alpha == 0] == 0).all()
