"""A damaged scene is refused before the first stage, in one line, with exit 2 and nothing written.

The damaged copies are made here: a tiled GeoTIFF cut short, and one with bytes overwritten
inside a compressed block (its size unchanged, so only decoding finds it).
"""

import sys
from pathlib import Path

import pytest
import rasterio
from ray import cloudpickle

from geoseg.cli import main
from geoseg.tiling import Tile
from tests.factories import tiny_job, tiny_scene

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this module

FIX = "re-download the file, or re-export it from a good copy (e.g. `gdal_translate -of COG good.tif scene.tif`)"


def run_cli(args, capsys) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err, [line for line in err.splitlines() if line.startswith("geoseg:")]


def block(path: Path, row: int, col: int) -> tuple[int, int]:
    with rasterio.open(path) as src:
        return tuple(int(src.get_tag_item(f"BLOCK_{k}_{col}_{row}", "TIFF", bidx=1)) for k in ("OFFSET", "SIZE"))


@pytest.fixture
def damaged_job(tmp_path):
    """Make a job over a copy of the tiny scene damaged by ``edit(bytes, scene) -> bytes``."""

    def make(edit) -> tuple[Path, Path]:
        scene, labels = tiny_scene(tmp_path / "good")
        bad = tmp_path / "bad" / "scene.tif"
        bad.parent.mkdir()
        bad.write_bytes(edit(bytearray(scene.read_bytes()), scene))
        return tiny_job(tmp_path, bad, labels), bad

    return make


def test_validate_refuses_a_truncated_scene_for_each_field_that_uses_it(damaged_job, capsys):
    offset, length = 0, 0

    def cut(data, scene):
        nonlocal offset, length
        offset, length = block(scene, 2, 2)  # the last block: cut 100 bytes short
        return data[: offset + length - 100]

    job, bad = damaged_job(cut)
    code, err, lines = run_cli(["validate", job], capsys)
    assert code == 2, err
    past = f"block (row 2, col 2) at byte offset {offset} ({length} bytes) runs past the end of the file "
    assert lines == [
        f"geoseg: error: {bad}: {field}: damaged: {past}({offset + length - 100} bytes); {FIX}"
        for field in ("train.scenes[0].image", "predict.scene")
    ]
    assert "Traceback" not in err


def test_run_refuses_a_corrupted_block_and_writes_nothing(damaged_job, tmp_path, capsys):
    def corrupt(data, scene):
        offset, length = block(scene, 1, 0)
        data[offset + length // 4 : offset + length // 4 + 64] = b"\xa5" * 64
        return data

    job, bad = damaged_job(corrupt)
    code, err, lines = run_cli(["run", job], capsys)
    assert code == 2, err
    assert len(lines) == 2 and all(
        line.startswith(f"geoseg: error: {bad}: {field}: damaged: block (row 1, col 0) does not decode (")
        and line.endswith(f"; {FIX}")
        for line, field in zip(lines, ("train.scenes[0].image", "predict.scene"), strict=True)
    ), err
    assert not (tmp_path / "out").exists()


def test_bad_yaml_is_located_in_the_job_file(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nclasses: [a, b]: c\n")
    code, err, lines = run_cli(["validate", job], capsys)
    assert code == 2, err
    assert lines[0].startswith(f"geoseg: error: {job}:2:16: not valid YAML: mapping values are not allowed here; ")
    assert lines[1:] == ["geoseg: error:     classes: [a, b]: c", "geoseg: error:                    ^"]


class DamagedReadActor:
    """Reads one tile of a scene damaged after the inputs were checked, as a model actor does."""

    def __init__(self, scene: str):
        self.scene = scene

    def run(self, tiles):
        from geoseg.io.raster import ThreadLocalRaster, read_tile

        read_tile(ThreadLocalRaster(self.scene).get(), Tile(0, 64, 64, 64, 64, 16, 96), (1, 2, 3))
        return [tile.index for tile in tiles]


def test_a_read_failing_in_a_model_actor_is_one_line_and_exit_2(ray_local, damaged_job, monkeypatch, capsys):
    from tests.cli.test_errors_and_bugs import demo_data_runs, run_pool

    def corrupt(data, scene):
        offset, length = block(scene, 1, 1)
        data[offset + length // 4 : offset + length // 4 + 64] = b"\xa5" * 64
        return data

    _, bad = damaged_job(corrupt)
    code, err, lines = run_cli(demo_data_runs(monkeypatch, lambda: run_pool(DamagedReadActor, scene=str(bad))), capsys)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"geoseg: error: {bad}: predict.scene: damaged: cannot read row 48, col 48, 96×96 px (")
    assert lines[0].endswith(f"; {FIX}, then rerun: finished chunks are kept")
    assert "Traceback" not in err
