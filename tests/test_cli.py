"""The command line: one-line errors with exit code 2 for bad input, and a tiny end-to-end run."""

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from shapely.geometry import box

from conftest import tiny_job, tiny_scene, write_geotiff
from geoseg.cli import main


@pytest.fixture
def tiny(tmp_path):
    scene, labels = tiny_scene(tmp_path)
    return tmp_path, scene, labels


def run_cli(args, capsys) -> tuple[int, list[str], str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def edit_job(job: Path, **changes) -> Path:
    data = yaml.safe_load(job.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for key in parents:
            target = target[key]
        target[last] = value
    job.write_text(yaml.safe_dump(data))
    return job


def assert_one_line_error(capsys, job, *needles):
    code, err, _ = run_cli(["validate", job], capsys)
    assert code == 2, err
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    out_dir = Path(yaml.safe_load(Path(job).read_text())["output_dir"])
    code, err, _ = run_cli(["run", job], capsys)
    assert code == 2 and len(err) == 1
    assert not out_dir.exists()  # refused before anything was written
    return err[0]


def test_valid_tiny_job_validates(tiny, capsys):
    folder, scene, labels = tiny
    code, err, out = run_cli(["validate", tiny_job(folder, scene, labels)], capsys)
    assert code == 0 and "OK" in out and not err


def test_missing_scene(tiny, capsys):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, predict={"scene": str(folder / "nope.tif")})
    assert_one_line_error(capsys, job, "nope.tif", "predict.scene", "file not found")


def test_raster_without_crs(tiny, capsys):
    folder, scene, labels = tiny
    no_crs = write_geotiff(folder / "nocrs.tif", np.full((3, 64, 64), 9, np.uint8), crs=None)
    job = tiny_job(folder, scene, labels, predict={"scene": str(no_crs)})
    assert_one_line_error(capsys, job, "nocrs.tif", "predict.scene", "no CRS", "gdal_edit")


def test_labels_in_another_crs_that_miss_the_scene(tiny, capsys):
    folder, scene, labels = tiny
    elsewhere = folder / "elsewhere.gpkg"
    gpd.GeoDataFrame({"class": ["water"]}, geometry=[box(2.0, 48.0, 2.1, 48.1)], crs="EPSG:4326").to_file(elsewhere)
    job = tiny_job(folder, scene, elsewhere, evaluate={"labels": str(labels)})
    assert_one_line_error(capsys, job, "elsewhere.gpkg", "train.scenes[0].labels", "no label polygon overlaps")


def test_unknown_model_name(tiny, capsys):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, model={"arch": "unet3000"})
    assert_one_line_error(capsys, job, "job.yaml", "model.arch", "'unet3000'", "deeplabv3plus")


def test_tile_size_not_divisible_by_stride_says_which_works(tiny, capsys):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, tiling={"tile_size": 100, "halo": 16})
    assert_one_line_error(capsys, job, "job.yaml", "tiling.tile_size", "stride 8", "use 104 or 96")


def test_unknown_yaml_key(tiny, capsys):
    folder, scene, labels = tiny
    job = edit_job(tiny_job(folder, scene, labels), tiling__overlap=10)
    assert_one_line_error(capsys, job, "job.yaml", "tiling.overlap", "unknown key", "halo")


def test_wrong_band_count_for_the_model(tiny, capsys):
    folder, scene, labels = tiny
    two_bands = write_geotiff(folder / "two.tif", np.full((2, 64, 64), 9, np.uint8))
    job = tiny_job(folder, scene, labels, predict={"scene": str(two_bands)})
    assert_one_line_error(capsys, job, "two.tif", "predict.scene", "2 band(s)", "3")


def test_end_to_end_run_on_a_tiny_scene(tiny):
    """The real CLI in a subprocess: Ray Train, Ray actors, Zarr, vectors, metrics."""
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, vectorize={"classes": ["water"]})
    result = subprocess.run([sys.executable, "-m", "geoseg.cli", "run", str(job)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = folder / "out"
    for stage in ("train:", "predict:", "vectorize:", "evaluate:"):
        assert stage in result.stdout
    assert "predict: tiles 9/9" in result.stdout
    assert "Failed to query Ray Train Controller" not in result.stdout + result.stderr  # Ray Train has its state API
    assert (out / "checkpoint" / "model.safetensors").is_file()
    card = json.loads((out / "checkpoint" / "model_card.json").read_text())
    assert card["classes"] == ["background", "water", "vegetation"] and card["bands"] == [1, 2, 3]
    assert (out / "mosaic.zarr").is_dir() and not (out / "mosaic.zarr.partial").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["model"]["mean_iou"] <= 1
    assert metrics["model"]["pixels"] == 192 * 192
    # Loss and held-out validation mIoU per epoch: in metrics.json, history.json and a plot.
    epochs = metrics["training"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["loss"] > 0 and 0 <= e["val_miou"] <= 1 for e in epochs)
    assert card["training"]["best_epoch"] in (1, 2) and card["training"]["epochs_run"] == 2
    assert (out / "train" / "history.png").stat().st_size > 1000
    assert "val mIoU" in result.stdout
    assert (out / "quicklook.png").stat().st_size > 1000
    polygons = gpd.read_file(out / "vectors" / "polygons.gpkg")
    assert set(polygons["class"]) <= {"water"}

    cog = out / "labels.tif"
    export = subprocess.run([sys.executable, "-m", "geoseg.cli", "export", str(out / "mosaic.zarr"), "--cog", str(cog)],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    import rasterio

    with rasterio.open(cog) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs.to_epsg() == 32633 and src.shape == (192, 192)


def test_tiles_are_checked_against_the_checkpoints_model_not_the_jobs(tiny, capsys):
    """predict.checkpoint holds a PAN (stride 256): 96-pixel tiles do not fit it, whatever `model:` says."""
    import torch

    from geoseg.models import build_model
    from geoseg.models.checkpoint import save_checkpoint

    folder, scene, labels = tiny
    torch.manual_seed(0)
    card = {"arch": "pan", "encoder": "resnet18", "options": {}, "classes": ["background", "water", "vegetation"],
            "bands": [1, 2, 3], "dtype": "uint8", "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    checkpoint = save_checkpoint(folder / "pan", build_model("pan", in_channels=3, num_classes=3), card)
    job = tiny_job(folder, scene, labels, stages=["predict"],
                   predict={"scene": str(scene), "checkpoint": str(checkpoint)})
    assert_one_line_error(capsys, job, "tiling.tile_size", "pan", str(checkpoint))


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv3"])
def test_batch_of_one_is_refused_for_models_that_normalise_pooled_features(tiny, capsys, arch):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels)
    edit_job(job, model={"arch": arch, "encoder": "resnet18", "options": {}}, train__batch_size=1,
             tiling={"tile_size": 128, "halo": 32})
    assert_one_line_error(capsys, job, "train.batch_size", arch, "batch_size 2 or more")


def test_batch_of_one_is_fine_for_unet(tiny, capsys):
    folder, scene, labels = tiny
    job = edit_job(tiny_job(folder, scene, labels), train__batch_size=1)
    code, err, _ = run_cli(["validate", job], capsys)
    assert code == 0, err
