"""Overviews built as parallel subtrees have the bytes of the serial build, level by level."""

import shutil

import numpy as np
import pytest

from geoseg.io.overviews import OVERVIEWS_GROUP, build_overviews
from tests.factories import scene_mosaic, write_geotiff

CHUNK = 32


def _pyramid_bytes(mosaic) -> dict[str, bytes]:
    root = mosaic / OVERVIEWS_GROUP
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def mosaic(tmp_path):
    """A 300 × 270 mosaic of blocky random labels (odd edges, invalid pixels) in 32-px chunks."""
    rng = np.random.default_rng(5)
    scene = write_geotiff(tmp_path / "scene.tif", np.ones((3, 300, 270), np.uint8))
    info = scene_mosaic(tmp_path / "mosaic.zarr", scene, CHUNK, classes=("background", "a", "b", "c"))
    labels = np.kron(rng.integers(0, 4, (75, 68)), np.ones((4, 4), np.uint8))[:300, :270].astype(np.uint8)
    valid = (rng.random((300, 270)) > 0.2).astype(np.uint8)
    info.labels[:] = labels * valid
    info.valid[:] = valid
    return tmp_path / "mosaic.zarr"


def _copy(mosaic, name):
    other = mosaic.with_name(name)
    shutil.copytree(mosaic, other)
    return other


@pytest.mark.parametrize("method", ["exact", "cascade"])
@pytest.mark.parametrize("workers", [2, 5])
def test_subtrees_in_parallel_give_the_serial_bytes(mosaic, method, workers):
    calls = []

    def in_turn(function, arguments):  # any runner that returns results in order will do
        calls.append(len(arguments))
        return [function(*args) for args in reversed(arguments)][::-1]  # built out of order

    parallel = _copy(mosaic, "parallel.zarr")
    serial_levels = build_overviews(mosaic, min_side=16, method=method)
    parallel_levels = build_overviews(parallel, min_side=16, method=method, run_parallel=in_turn, workers=workers)
    assert serial_levels == parallel_levels == [2, 4, 8, 16, 32]
    assert calls and calls[0] >= 2 * workers  # the subtrees really went through the runner
    assert _pyramid_bytes(parallel) == _pyramid_bytes(mosaic)


def test_ray_tasks_build_the_same_pyramid(mosaic, ray_local):
    from geoseg.runtime import run_tasks

    parallel = _copy(mosaic, "ray.zarr")
    build_overviews(mosaic, min_side=16)
    build_overviews(parallel, min_side=16, run_parallel=lambda f, a: run_tasks(f, a, cpus=1), workers=2)
    assert _pyramid_bytes(parallel) == _pyramid_bytes(mosaic)
