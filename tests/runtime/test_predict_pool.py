"""The prediction actor pool: every batch once, restarts after a lost actor, errors that say what failed."""

import os
import sys
from pathlib import Path

import pytest
from ray import cloudpickle

from geoseg.errors import InputRasterError, StageError
from geoseg.runtime.predict_pool import _run_pool
from geoseg.tiling import plan_tiles

# Ray workers cannot import this test module: send its actor classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RecordingActor:
    """Writes one file per tile it is given; the process dies (no cleanup) on the first batch
    holding tile ``die_at`` unless ``folder/died`` exists, as a worker killed by the OOM killer would."""

    def __init__(self, folder: str, die_at: int = -1):
        self.folder, self.die_at = Path(folder), die_at

    def run(self, tiles):
        if any(tile.index == self.die_at for tile in tiles) and not (self.folder / "died").exists():
            (self.folder / "died").touch()
            os._exit(1)
        for tile in tiles:
            with open(self.folder / f"tile-{tile.index}", "a") as mark:
                mark.write("x")
        return [tile.index for tile in tiles]


class BrokenActor:
    def __init__(self, folder: str):
        raise OSError(f"{folder}/model.safetensors: truncated file")

    def run(self, tiles):
        return []


class FailingActor:
    def __init__(self, folder: str):
        pass

    def run(self, tiles):
        raise InputRasterError(f"scene.tif: tile {tiles[0].index}: cannot read block; check the file")


def test_every_tile_once_across_workers(tmp_path, ray_local):
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    seen = []
    done = _run_pool(
        tiles,
        RecordingActor,
        {"folder": str(tmp_path)},
        batch_size=3,
        workers=2,
        cpus=1,
        gpus=0,
        progress=seen.append,
        calls_per_actor=2,
    )
    assert done == len(tiles) == sum(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"tile-{t.index}" for t in tiles)
    assert {p.read_text() for p in tmp_path.iterdir()} == {"x"}  # none twice


def test_a_lost_actor_is_restarted_and_its_batches_retried(tmp_path, ray_local):
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    done = _run_pool(
        tiles,
        RecordingActor,
        {"folder": str(tmp_path), "die_at": 7},
        batch_size=2,
        workers=1,
        cpus=1,
        gpus=0,
        progress=None,
    )
    assert (tmp_path / "died").exists()  # the process really died mid-run
    assert done == len(tiles)
    assert {p.name for p in tmp_path.glob("tile-*")} == {f"tile-{t.index}" for t in tiles}


def test_a_geoseg_error_in_an_actor_comes_back_as_itself(tmp_path, ray_local):
    tiles = plan_tiles(128, 128, tile_size=96, halo=16)
    with pytest.raises(InputRasterError, match=r"scene.tif: tile \d+: cannot read block"):
        _run_pool(
            tiles, FailingActor, {"folder": str(tmp_path)}, batch_size=2, workers=1, cpus=1, gpus=0, progress=None
        )


def test_an_actor_that_cannot_start_fails_the_stage(tmp_path, ray_local):
    tiles = plan_tiles(128, 128, tile_size=96, halo=16)
    with pytest.raises(StageError, match=r"predict: a model actor could not start: .*model.safetensors: truncated"):
        _run_pool(tiles, BrokenActor, {"folder": str(tmp_path)}, batch_size=2, workers=1, cpus=1, gpus=0, progress=None)
