"""The command line: one-line errors with exit code 2 for bad input. (A whole run: tests/e2e/test_tiny_job.py.)"""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from shapely.geometry import box

from geoseg.cli import main
from tests.factories import tiny_job, write_checkpoint, write_geotiff


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


def test_tiles_are_checked_against_the_checkpoints_model_not_the_jobs(tiny, capsys):
    """predict.checkpoint holds a PAN (stride 256): 96-pixel tiles do not fit it, whatever `model:` says."""
    import torch

    from geoseg.models import build_model

    folder, scene, labels = tiny
    torch.manual_seed(0)
    checkpoint = write_checkpoint(
        folder / "pan",
        build_model("pan", in_channels=3, num_classes=3),
        arch="pan",
        encoder="resnet18",
        options={},
        classes=["background", "water", "vegetation"],
        bands=[1, 2, 3],
        dtype="uint8",
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    job = tiny_job(
        folder, scene, labels, stages=["predict"], predict={"scene": str(scene), "checkpoint": str(checkpoint)}
    )
    assert_one_line_error(capsys, job, "tiling.tile_size", "pan", str(checkpoint))


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv3"])
def test_batch_of_one_is_refused_for_models_that_normalise_pooled_features(tiny, capsys, arch):
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels)
    edit_job(
        job,
        model={"arch": arch, "encoder": "resnet18", "options": {}},
        train__batch_size=1,
        tiling={"tile_size": 128, "halo": 32},
    )
    assert_one_line_error(capsys, job, "train.batch_size", arch, "batch_size 2 or more")


def test_batch_of_one_is_fine_for_unet(tiny, capsys):
    folder, scene, labels = tiny
    job = edit_job(tiny_job(folder, scene, labels), train__batch_size=1)
    code, err, _ = run_cli(["validate", job], capsys)
    assert code == 0, err
