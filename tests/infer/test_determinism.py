"""Prediction is deterministic: the same bytes whatever the batch size, the tile order or the number of
threads calling one predictor (Ray workers: tests/runtime/test_predict_tiles.py; a killed run that resumes:
tests/e2e/test_resume.py)."""

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from geoseg.infer import TilePredictor
from geoseg.tiling import plan_tiles
from tests.factories import TINY_UNET, chunk_bytes, scene_mosaic, smooth_scene, unet_checkpoint


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    scene = smooth_scene(folder / "scene.tif", 300)
    checkpoint = unet_checkpoint(folder / "ckpt", scene, **TINY_UNET)
    return folder, scene, checkpoint


def test_same_bytes_for_any_batch_size_and_tile_order(small):
    folder, scene, checkpoint = small
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    runs = {}
    for name, batch, shuffle, callers in (
        ("b1", 1, False, 1),
        ("b8_shuffled", 8, True, 1),
        ("b3_three_threads", 3, True, 3),
        ("b2_five_threads", 2, True, 5),  # a GPU actor with 4 CPUs: 4 batches read or written, 1 in the model
    ):
        mosaic = folder / f"{name}.zarr"
        scene_mosaic(mosaic, scene, 64)
        order = list(tiles)
        if shuffle:
            random.Random(1).shuffle(order)
        predictor = TilePredictor(checkpoint, scene, mosaic, threads=2)
        batches = [order[start : start + batch] for start in range(0, len(order), batch)]
        # Several threads call one predictor at once, as a Ray actor with calls in flight does.
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(predictor, batches))
        predictor.close()
        runs[name] = chunk_bytes(mosaic)
    assert len(runs["b1"]) == len(tiles) * 2
    assert runs["b1"] == runs["b8_shuffled"] == runs["b3_three_threads"] == runs["b2_five_threads"]
