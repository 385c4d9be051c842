"""Ray prediction is deterministic: one worker and two workers with other batch sizes and tile orders
write the same bytes."""

import random

import numpy as np
import pytest
import zarr

from geoseg.tiling import plan_tiles
from tests.factories import TINY_UNET, chunk_bytes, scene_mosaic, smooth_scene, unet_checkpoint


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    scene = smooth_scene(folder / "scene.tif", 300)
    checkpoint = unet_checkpoint(folder / "ckpt", scene, **TINY_UNET)
    return folder, scene, checkpoint


def test_same_bytes_for_one_and_two_ray_workers(small, ray_local):
    from geoseg.runtime import predict_tiles

    folder, scene, checkpoint = small
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    runs = []
    for workers, batch in ((1, 1), (2, 8)):
        mosaic = folder / f"ray{workers}.zarr"
        scene_mosaic(mosaic, scene, 64)
        order = list(tiles)
        random.Random(workers).shuffle(order)
        written = predict_tiles(
            order,
            checkpoint=checkpoint,
            scene=scene,
            mosaic=mosaic,
            batch_size=batch,
            workers=workers,
            cpus_per_worker=1,
            use_gpu=False,
        )
        assert written == len(tiles)
        runs.append(chunk_bytes(mosaic))
    assert runs[0] == runs[1]
    assert np.asarray(zarr.open_group(str(folder / "ray2.zarr"), mode="r")["done"][:]).all()


def test_a_gpu_actor_reads_with_every_cpu_reserved_for_it():
    from geoseg.runtime import calls_per_predictor

    assert [calls_per_predictor(cpus, use_gpu=False) for cpus in (1, 2, 8)] == [2, 2, 2]
    assert [calls_per_predictor(cpus, use_gpu=True) for cpus in (1, 4, 16)] == [2, 5, 17]
