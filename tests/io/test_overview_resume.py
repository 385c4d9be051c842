"""A killed overview build resumes at the subtrees it had not finished, with the bytes of an uninterrupted one."""

import shutil

import numpy as np
import pytest

from geoseg.io import overview_tree, overviews
from geoseg.io.mosaic import open_mosaic, write_block
from geoseg.io.overviews import OVERVIEWS_GROUP, build_overviews, list_overviews
from tests.factories import scene_mosaic, write_geotiff

CHUNK = 32
PARTIAL = "_overviews_partial"


class Killed(RuntimeError):
    """Stands for the process being killed in the middle of the build."""


def _pyramid_bytes(mosaic) -> dict[str, bytes]:
    root = mosaic / OVERVIEWS_GROUP
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_scene(path, seed: int):
    """A 300 × 270 mosaic of blocky random labels (odd edges, invalid pixels) in 32-px chunks."""
    rng = np.random.default_rng(seed)
    scene = write_geotiff(path.with_suffix(".tif"), np.ones((3, 300, 270), np.uint8))
    info = scene_mosaic(path, scene, CHUNK, classes=("background", "a", "b", "c"))
    labels = np.kron(rng.integers(0, 4, (75, 68)), np.ones((4, 4), np.uint8))[:300, :270].astype(np.uint8)
    valid = (rng.random((300, 270)) > 0.2).astype(np.uint8)
    info.labels[:] = labels * valid
    info.valid[:] = valid
    return path


@pytest.fixture
def mosaic(tmp_path):
    return _write_scene(tmp_path / "mosaic.zarr", seed=5)


def _copy(mosaic, name):
    other = mosaic.with_name(name)
    shutil.copytree(mosaic, other)
    return other


@pytest.fixture
def subtrees(monkeypatch):
    """Every subtree root the builds below run, in order; ``subtrees.kill_after = n`` kills the build at the n+1st."""

    class Subtrees(list):
        kill_after: int | None = None

    ran = Subtrees()

    def counted(mosaic_path, partial, exact, level, row, col, key):
        if ran.kill_after is not None and len(ran) >= ran.kill_after:
            raise Killed(f"killed before subtree {(level, row, col)}")
        ran.append((level, row, col))
        return overview_tree.build_subtree(mosaic_path, partial, exact, level, row, col, key)

    monkeypatch.setattr(overviews, "build_subtree", counted)
    return ran


def in_turn(function, arguments):  # a runner that returns results in order, as Ray tasks do
    return [function(*args) for args in arguments]


def _build(path, workers: int, method: str = "exact", min_side: int = 16):
    return build_overviews(path, min_side=min_side, method=method, run_parallel=in_turn, workers=workers)


@pytest.mark.parametrize("method", ["exact", "cascade"])
@pytest.mark.parametrize(("killed_with", "resumed_with"), [(1, 1), (3, 3), (1, 3), (3, 1)])
def test_a_killed_build_resumes_at_the_unfinished_subtrees(mosaic, subtrees, method, killed_with, resumed_with):
    reference = _copy(mosaic, "reference.zarr")
    assert _build(reference, killed_with, method) == [2, 4, 8, 16, 32]
    every = list(subtrees)
    assert len(every) >= 16  # the split has enough subtrees to resume at, one worker or several

    subtrees.clear()
    subtrees.kill_after = 5
    with pytest.raises(Killed):
        _build(mosaic, killed_with, method)
    assert subtrees == every[:5]
    assert len(list((mosaic / PARTIAL / "_subtrees").glob("*.npz"))) == 5  # each finished subtree recorded
    assert list_overviews(mosaic) == []  # a killed build advertises nothing

    subtrees.clear()
    subtrees.kill_after = None
    assert _build(mosaic, resumed_with, method) == [2, 4, 8, 16, 32]
    assert subtrees == every[5:]  # the finished subtrees were not built again
    assert _pyramid_bytes(mosaic) == _pyramid_bytes(reference)
    assert not (mosaic / PARTIAL).exists()
    assert not (mosaic / OVERVIEWS_GROUP / "_subtrees").exists()  # the records do not outlive the build
    assert open_mosaic(mosaic).group.attrs["multiscales"] == open_mosaic(reference).group.attrs["multiscales"]


def _kill_after(path, subtrees, n: int, **settings) -> None:
    subtrees.clear()
    subtrees.kill_after = n
    with pytest.raises(Killed):
        _build(path, 1, **settings)
    subtrees.clear()
    subtrees.kill_after = None


def test_a_partial_left_by_another_mosaic_is_discarded(tmp_path, mosaic, subtrees):
    other = _write_scene(tmp_path / "other.zarr", seed=6)
    reference = _copy(mosaic, "reference.zarr")
    _build(reference, 1)
    every = list(subtrees)
    _kill_after(other, subtrees, 7)
    shutil.copytree(other / PARTIAL, mosaic / PARTIAL)  # same shape, classes and settings: only the pixels differ

    _build(mosaic, 1)
    assert subtrees == every  # all built again: the other mosaic's subtrees are not this one's
    assert _pyramid_bytes(mosaic) == _pyramid_bytes(reference)


def test_a_mosaic_rewritten_in_place_discards_its_partial(mosaic, subtrees):
    _kill_after(mosaic, subtrees, 7)
    info = open_mosaic(mosaic, mode="r+")
    block = np.full((CHUNK, CHUNK), 3, np.uint8)
    write_block(info, 0, 0, block, np.ones_like(block))  # no fingerprint, no done marks: the files tell
    reference = _copy(mosaic, "reference.zarr")
    shutil.rmtree(reference / PARTIAL)
    _build(reference, 1)
    every = list(subtrees)

    subtrees.clear()
    _build(mosaic, 1)
    assert subtrees == every
    assert _pyramid_bytes(mosaic) == _pyramid_bytes(reference)


def test_another_fingerprint_discards_the_partial(mosaic, subtrees):
    """Same pixels, but predicted from something else (say another checkpoint): its partial is not reused."""
    reference = _copy(mosaic, "reference.zarr")
    _build(reference, 1)
    every = list(subtrees)
    _kill_after(mosaic, subtrees, 7)
    info = open_mosaic(mosaic, mode="r+")
    info.group.attrs["geoseg"] = {**info.group.attrs["geoseg"], "fingerprint": {"checkpoint_sha256": "another"}}

    _build(mosaic, 1)
    assert subtrees == every
    assert _pyramid_bytes(mosaic) == _pyramid_bytes(reference)


@pytest.mark.parametrize(
    ("first", "then"),
    [({"method": "exact"}, {"method": "cascade"}), ({"min_side": 16}, {"min_side": 64})],
    ids=["method", "factors"],
)
def test_a_partial_built_with_other_settings_is_discarded(mosaic, subtrees, first, then):
    reference = _copy(mosaic, "reference.zarr")
    _build(reference, 1, **then)
    every = list(subtrees)
    _kill_after(mosaic, subtrees, 3, **first)

    _build(mosaic, 1, **then)
    assert subtrees == every
    assert _pyramid_bytes(mosaic) == _pyramid_bytes(reference)


def test_a_copied_mosaic_resumes_its_copied_partial(mosaic, subtrees):
    """The key names the mosaic's content, not its path: a copy (times kept) is the same mosaic."""
    reference = _copy(mosaic, "reference.zarr")
    _build(reference, 1)
    every = list(subtrees)
    _kill_after(mosaic, subtrees, 4)
    moved = _copy(mosaic, "moved.zarr")

    _build(moved, 3)
    assert subtrees == every[4:]
    assert _pyramid_bytes(moved) == _pyramid_bytes(reference)
