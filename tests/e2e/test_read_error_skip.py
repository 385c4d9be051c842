"""A block damaged past what the input check decodes: `on_read_error: stop` exits 2 naming the file and window;
`skip` leaves the tiles that read it invalid, lists them in the run record, and a rerun after the file is
repaired predicts only those tiles and ends byte-identical to a run on the good file. Semantic and instance
models, through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.windows import Window

from geoseg.cli import main
from geoseg.io.integrity import check_raster_blocks, sample_blocks
from geoseg.io.mosaic import open_mosaic
from tests.factories import TINY_UNET, chunk_bytes, tiny_scene, unet_checkpoint, write_checkpoint, write_geotiff

SIZE, BLOCK, CORE = 192, 16, 64
UNET_HALO, MASKRCNN_HALO = 16, 32  # the U-Net's stride allows 16; Mask R-CNN's needs 32
# (block row, block col) damaged. With halo 16, (5, 5) lies in tile (1, 1)'s core and no other tile's window,
# (8, 1) in tile (2, 0)'s core and tile (1, 0)'s halo. The input check decodes 16 of the 144 blocks, not these.
DAMAGED = [(5, 5), (8, 1)]
CLASSES = ["background", "water", "vegetation"]
UNET = {"arch": "unet", "options": TINY_UNET}


def block_range(block: int) -> tuple[int, int]:
    return block * BLOCK, (block + 1) * BLOCK


def read_range(core_start: int, halo: int) -> tuple[int, int]:
    """Scene pixels a tile reads along one axis: its core and halo, clipped (mirroring stays inside this)."""
    return max(0, core_start - halo), min(SIZE, core_start + CORE + halo)


def expected_unread(halo: int) -> list[tuple[int, int]]:
    """(row, col) of every tile core whose read window holds a damaged block, by position."""
    cores = [(row, col) for row in range(0, SIZE, CORE) for col in range(0, SIZE, CORE)]

    def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    return [
        (row, col)
        for row, col in cores
        if any(
            overlaps(read_range(row, halo), block_range(r)) and overlaps(read_range(col, halo), block_range(c))
            for r, c in DAMAGED
        )
    ]


def damaged_copy(good: Path, bad: Path) -> None:
    """``good`` with each damaged block's zlib header overwritten (the file size unchanged).

    Bytes overwritten further inside a deflate stream may still decode (libtiff stops once a block's pixels
    are out, before the stream's checksum); a broken header never does.
    """
    data = bytearray(good.read_bytes())
    with rasterio.open(good) as src:
        for row, col in DAMAGED:
            offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
            data[offset : offset + 8] = b"\xff" * 8
    bad.write_bytes(data)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, ray_local) -> dict[str, Path]:
    """The tiny scene in 16-pixel blocks, its damaged copy, a seeded U-Net for it and its mosaic of the scene."""
    from geoseg.job import run_job

    folder = tmp_path_factory.mktemp("read_errors")
    source, _ = tiny_scene(folder / "source")
    with rasterio.open(source) as src:
        good = write_geotiff(folder / "good.tif", src.read(), nodata=0, block=BLOCK)
    bad = folder / "damaged.tif"
    damaged_copy(good, bad)
    assert not set(DAMAGED) & set(sample_blocks(SIZE // BLOCK, SIZE // BLOCK))
    check_raster_blocks(bad)  # passes the input check...
    with rasterio.open(bad) as src:
        for row, col in DAMAGED:  # ...but its damaged blocks do not decode
            with pytest.raises(rasterio.errors.RasterioIOError):
                src.read(window=Window(col * BLOCK, row * BLOCK, BLOCK, BLOCK))
    checkpoint = unet_checkpoint(folder / "unet", good, classes=CLASSES, **TINY_UNET)
    run_job(write_job(folder, "clean", good, checkpoint, UNET, scores=True), log=lambda line: None)
    return {"folder": folder, "good": good, "bad": bad, "unet": checkpoint, "clean": folder / "clean" / "mosaic.zarr"}


def write_job(
    folder: Path, name: str, scene: Path, checkpoint: Path, model: dict, halo: int = UNET_HALO, **predict
) -> Path:
    job = {
        "name": name,
        "output_dir": str(folder / name),
        "classes": CLASSES,
        "stages": ["predict"],
        "model": model,
        "tiling": {"tile_size": CORE + 2 * halo, "halo": halo},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "batch_size": 2} | predict,
        # An untrained Mask R-CNN scores its 300 boxes a tile 0.2-0.47 here: this keeps a few of each tile's.
        "instances": {"score_threshold": 0.44},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def predict(job: Path, capsys) -> tuple[int, str, str]:
    code = main(["predict", str(job)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_record(job: Path, run: int) -> tuple[Path, dict]:
    """The ``run``-th run's record (0: the first) of ``job``'s output folder."""
    path = sorted((Path(yaml.safe_load(job.read_text())["output_dir"]) / "runs").glob("*/run.json"))[run]
    return path, json.loads(path.read_text())


def core_mask(cores: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    for row, col in cores:
        mask[row : row + CORE, col : col + CORE] = True
    return mask


def check_skip_run(job: Path, scene: Path, output: str, halo: int) -> None:
    """The one-line summary and the run record name exactly the tiles whose read window holds a damaged block."""
    record_path, record = run_record(job, 0)
    unread = expected_unread(halo)
    assert f"predict: {len(unread)} tiles could not be read and are left invalid; listed in {record_path}\n" in output
    listed = record["stages"]["predict"]["unread_tiles"]
    assert [(t["file"], t["row"], t["col"], t["height"], t["width"]) for t in listed] == [
        (str(scene), row, col, CORE, CORE) for row, col in unread
    ]
    assert [t["tile"] for t in listed] == [row // CORE * (SIZE // CORE) + col // CORE for row, col in unread]
    assert all(re.fullmatch(r"ZIPDecode:Decoding error at scanline \d+", t["reason"]) for t in listed), listed


def repair(scenes, scene: Path) -> None:
    scene.write_bytes(scenes["good"].read_bytes())  # a fresh copy: new time stamp


def test_skip_leaves_unread_tiles_invalid_and_a_rerun_after_repair_reads_only_them(scenes, capsys):
    folder = scenes["folder"]
    scene = folder / "semantic.tif"
    scene.write_bytes(scenes["bad"].read_bytes())
    job = write_job(folder, "semantic", scene, scenes["unet"], UNET, on_read_error="skip", scores=True)

    code, out, err = predict(job, capsys)
    assert code == 0, err
    check_skip_run(job, scene, out, UNET_HALO)
    unread = expected_unread(UNET_HALO)
    assert len(unread) == 3
    inside = core_mask(unread)
    got, want = open_mosaic(folder / "semantic" / "mosaic.zarr"), open_mosaic(scenes["clean"])
    for name in ("labels", "valid"):
        assert (got.array(name)[:][inside] == 0).all()
        assert (got.array(name)[:][~inside] == want.array(name)[:][~inside]).all()
    assert (got.array("scores")[:][:, inside] == 0).all()
    assert want.valid[:][inside].all()  # the undamaged run had data there
    # Byte-equal chunk files outside the unread tiles; inside, a chunk of zeros (no file, as outside the data).
    unread_keys = {f"{row // CORE}.{col // CORE}" for row, col in unread}
    got_bytes, want_bytes = chunk_bytes(got.path), chunk_bytes(want.path)
    assert {k: v for k, v in want_bytes.items() if k.split("/")[-1] not in unread_keys} == got_bytes
    done = np.asarray(got.array("done")[:])
    assert sorted(zip(*np.nonzero(done == 2), strict=True)) == [(row // CORE, col // CORE) for row, col in unread]
    assert (done > 0).all()

    repair(scenes, scene)
    code, out, err = predict(job, capsys)
    assert code == 0, err
    assert f"predict: mosaic.zarr: reading the {len(unread)} tiles that could not be read before\n" in out
    assert f"resuming: skipped {9 - len(unread)} of 9 chunks already written" in out
    assert f"predict: {len(unread)} tiles, " in out
    assert "could not be read and" not in out
    assert chunk_bytes(got.path) == chunk_bytes(want.path)
    assert run_record(job, 1)[1]["stages"]["predict"]["unread_tiles"] == []


def test_stop_exits_2_naming_the_file_and_window_and_a_rerun_after_repair_resumes(scenes, capsys):
    folder = scenes["folder"]
    scene = folder / "stop.tif"
    scene.write_bytes(scenes["bad"].read_bytes())
    job = write_job(folder, "stop", scene, scenes["unet"], UNET, scores=True)
    code, out, err = predict(job, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("geoseg:")]
    assert len(lines) == 1, err
    found = re.match(
        rf"geoseg: error: {re.escape(str(scene))}: predict\.scene: damaged: cannot read row (\d+), col (\d+), "
        r"(\d+)×(\d+) px \(ZIPDecode:Decoding error at scanline \d+\); re-download the file, .*, then rerun: finished "
        r"chunks are kept$",
        lines[0],
    )
    assert found, lines[0]
    row, col, height, width = (int(v) for v in found.groups())
    windows = [(*read_range(r, UNET_HALO), *read_range(c, UNET_HALO)) for r, c in expected_unread(UNET_HALO)]
    assert (row, row + height, col, col + width) in windows
    assert not (folder / "stop" / "mosaic.zarr").exists()
    assert run_record(job, 0)[1]["status"] == "failed"
    done = np.asarray(open_mosaic(folder / "stop" / "mosaic.zarr.partial").array("done")[:])
    assert not any(done[row // CORE, col // CORE] for row, col in expected_unread(UNET_HALO))
    kept = int(done.sum())  # batches that finished before the failure reached the driver

    repair(scenes, scene)
    code, out, err = predict(job, capsys)
    assert code == 0, err
    assert kept == 0 or f"resuming: skipped {kept} of 9 chunks already written" in out
    assert chunk_bytes(folder / "stop" / "mosaic.zarr") == chunk_bytes(scenes["clean"])


@pytest.mark.slow  # ~40 s: three Mask R-CNN runs (the detector alone: tests/infer/test_read_errors.py)
def test_instance_model_skips_unread_tiles_and_detects_only_them_after_repair(scenes, capsys):
    import torch

    from geoseg.models import build_model

    folder = scenes["folder"]
    torch.manual_seed(0)
    model = build_model("maskrcnn_resnet18_fpn", in_channels=3, num_classes=len(CLASSES))
    with rasterio.open(scenes["good"]) as src:
        pixels = src.read().reshape(3, -1).astype(np.float64)
    checkpoint = write_checkpoint(
        folder / "maskrcnn",
        model,
        arch="maskrcnn_resnet18_fpn",
        encoder="resnet18",
        classes=CLASSES,
        bands=(1, 2, 3),
        mean=pixels.mean(axis=1),
        std=pixels.std(axis=1),
    )
    # One tile a batch: Mask R-CNN's scores on the CPU move in the 7th digit with the batch a tile shares.
    maskrcnn, halo = {"arch": "maskrcnn_resnet18_fpn"}, MASKRCNN_HALO
    clean = write_job(folder, "clean_instances", scenes["good"], checkpoint, maskrcnn, halo, batch_size=1)
    code, out, err = predict(clean, capsys)
    assert code == 0, err
    scene = folder / "instances.tif"
    scene.write_bytes(scenes["bad"].read_bytes())
    job = write_job(folder, "instances", scene, checkpoint, maskrcnn, halo, on_read_error="skip", batch_size=1)

    code, out, err = predict(job, capsys)
    assert code == 0, err
    check_skip_run(job, scene, out, halo)
    unread = expected_unread(halo)
    assert len(unread) == 5
    inside = core_mask(unread)
    got, want = (
        open_mosaic(folder / "instances" / "mosaic.zarr"),
        open_mosaic(folder / "clean_instances" / "mosaic.zarr"),
    )
    for name in ("labels", "valid", "instances"):
        assert (got.array(name)[:][inside] == 0).all()
    assert (got.valid[:][~inside] == want.valid[:][~inside]).all()
    assert want.array("instances")[:][inside].any()  # the clean run found instances there

    repair(scenes, scene)
    code, out, err = predict(job, capsys)
    assert code == 0, err
    assert f"resuming: {9 - len(unread)} tiles already detected" in out
    assert chunk_bytes(got.path) == chunk_bytes(want.path)
    assert np.array_equal(got.array("instances")[:], want.array("instances")[:])
    tables = [pd.read_parquet(folder / name / "instances.parquet") for name in ("instances", "clean_instances")]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
