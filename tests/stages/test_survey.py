"""Many files, one survey: 19 GeoTIFFs (one in Web Mercator, one missing) map as the merged raster.

The reference is built independently of the survey index: every file warped onto
the scene's grid with ``rasterio.warp.reproject`` (nearest) into one GeoTIFF.
"""

import json

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.io.mosaic import open_mosaic
from tests.factories import TINY_UNET, tiny_scene, unet_checkpoint, write_geotiff

PIECE = 64
ROWS, COLS = 4, 5
WARPED, MISSING = (1, 2), (2, 1)  # interior pieces: the survey's extent stays the scene's


def _cut(scene, folder):
    """The scene cut into ROWS x COLS GeoTIFFs; WARPED re-projected to EPSG:3857, MISSING left out."""
    files = []
    with rasterio.open(scene) as src:
        for r in range(ROWS):
            for c in range(COLS):
                if (r, c) == MISSING:
                    continue
                window = Window(c * PIECE, r * PIECE, PIECE, PIECE)
                pixels, transform = src.read(window=window), window_transform(window, src.transform)
                path = folder / f"piece_{r}_{c}.tif"
                if (r, c) == WARPED:
                    bounds = rasterio.windows.bounds(window, src.transform)
                    dst_t, w, h = calculate_default_transform(src.crs, "EPSG:3857", PIECE, PIECE, *bounds)
                    out = np.zeros((3, h, w), np.uint8)
                    reproject(
                        pixels,
                        out,
                        src_transform=transform,
                        src_crs=src.crs,
                        src_nodata=0,
                        dst_transform=dst_t,
                        dst_crs="EPSG:3857",
                        dst_nodata=0,
                        resampling=Resampling.nearest,
                    )
                    write_geotiff(path, out, crs="EPSG:3857", transform=dst_t, nodata=0, block=16)
                else:
                    write_geotiff(path, pixels, crs=src.crs.to_string(), transform=transform, nodata=0, block=16)
                files.append(path)
    return files


def _merged(files, scene, path):
    """Every file warped onto the scene's grid (nearest), later files over earlier ones: the reference raster."""
    with rasterio.open(scene) as src:
        grid, crs, shape = src.transform, src.crs, (src.height, src.width)
    merged = np.zeros((3, *shape), np.uint8)
    for f in files:
        with rasterio.open(f) as src:
            out = np.zeros_like(merged)
            reproject(
                src.read(),
                out,
                src_transform=src.transform,
                src_crs=src.crs,
                src_nodata=0,
                dst_transform=grid,
                dst_crs=crs,
                dst_nodata=0,
                resampling=Resampling.nearest,
            )
            merged = np.where((out > 0).any(0), out, merged)
    return write_geotiff(path, merged, crs=crs.to_string(), transform=grid, nodata=0)


def _job(tmp_path, name, scene, checkpoint):
    job = {
        "name": name,
        "output_dir": str(tmp_path / name),
        "classes": ["background", "water", "building"],
        "stages": ["predict", "vectorize"],
        "tiling": {"tile_size": 96, "halo": 16},
        "model": {"arch": "unet", "options": TINY_UNET},
        "predict": {"scene": scene, "checkpoint": str(checkpoint)},
        "vectorize": {"classes": ["water", "building"]},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.long  # 17 s on 2 cores: CI's test-long runs it
def test_a_survey_of_many_files_maps_as_the_merged_raster(tmp_path, ray_local):
    import geopandas as gpd

    from geoseg.job import run_job

    scene, _ = tiny_scene(tmp_path, size=ROWS * PIECE)
    with rasterio.open(scene) as src:  # widen it to 5 columns of pieces: tile the 256² scene's left part again
        pixels = src.read()
        wide = np.concatenate([pixels, pixels[:, :, :PIECE]], axis=2)
        wide_scene = write_geotiff(
            tmp_path / "wide.tif", wide, crs=src.crs.to_string(), transform=src.transform, nodata=0
        )
    files = _cut(wide_scene, tmp_path / "pieces")
    assert len(files) == ROWS * COLS - 1
    merged = _merged(files, wide_scene, tmp_path / "merged.tif")
    checkpoint = unet_checkpoint(tmp_path / "ckpt", merged, **TINY_UNET)

    listed = [str(f) for f in files]
    listed.insert(0, listed.pop(listed.index(str(files[1]))))  # the grid comes from the first file, any of them
    survey = run_job(_job(tmp_path, "survey", listed, checkpoint), log=lambda m: None)
    reference = run_job(_job(tmp_path, "merged", str(merged), checkpoint), log=lambda m: None)

    a, b = open_mosaic(tmp_path / "survey" / "mosaic.zarr"), open_mosaic(tmp_path / "merged" / "mosaic.zarr")
    assert (a.transform, a.crs, a.labels.shape) == (b.transform, b.crs, b.labels.shape)
    np.testing.assert_array_equal(a.valid[:], b.valid[:])
    np.testing.assert_array_equal(a.labels[:], b.labels[:])
    gap = a.valid[MISSING[0] * PIECE : (MISSING[0] + 1) * PIECE, MISSING[1] * PIECE : (MISSING[1] + 1) * PIECE]
    assert not gap.any()  # no file there: invalid, not background
    warped = a.valid[WARPED[0] * PIECE : (WARPED[0] + 1) * PIECE, WARPED[1] * PIECE : (WARPED[1] + 1) * PIECE]
    assert warped.mean() > 0.9  # the Web Mercator piece is warped in, not left out

    # Vectors: the same polygons, merged across the files' seams.
    mine = gpd.read_file(tmp_path / "survey" / "vectors" / "polygons.gpkg")
    theirs = gpd.read_file(tmp_path / "merged" / "vectors" / "polygons.gpkg")
    assert len(mine) == len(theirs) > 0
    assert mine.geometry.union_all().symmetric_difference(theirs.geometry.union_all()).area == pytest.approx(0)
    widths = (mine.geometry.bounds["maxx"] - mine.geometry.bounds["minx"]) / 0.5
    assert widths.max() > 2 * PIECE  # at least one polygon spans three files: one feature, not three

    # The survey index records every file; the run record names each one.
    record = json.loads((tmp_path / "survey" / "runs" / "latest.json").read_text())
    assert survey["predict"]["tiles"] == reference["predict"]["tiles"]
    assert record


def test_a_glob_and_a_stac_item_name_the_same_files(tmp_path):
    import datetime

    import pystac

    from geoseg.io.survey import expand_sources

    pieces = tmp_path / "pieces"
    for name in ("b.tif", "a.tif", "c.tif"):
        write_geotiff(pieces / name, np.ones((3, 16, 16), np.uint8))
    assert expand_sources(pieces / "*.tif", field="predict.scene") == [pieces / n for n in ("a.tif", "b.tif", "c.tif")]
    item = pystac.Item("survey", geometry=None, bbox=None, datetime=datetime.datetime(2026, 1, 1), properties={})
    item.add_asset("thumbnail", pystac.Asset("thumb.png", media_type="image/png", roles=["thumbnail"]))
    item.add_asset("visual", pystac.Asset(str(pieces / "b.tif"), media_type=pystac.MediaType.COG, roles=["data"]))
    item.save_object(dest_href=str(tmp_path / "item.json"), include_self_link=False)
    assert expand_sources(tmp_path / "item.json", field="predict.scene") == [pieces / "b.tif"]


def test_survey_problems_name_every_file(tmp_path):
    from geoseg.errors import InputRasterError
    from geoseg.stages.scene import survey_files

    write_geotiff(tmp_path / "rgb.tif", np.ones((3, 16, 16), np.uint8))
    write_geotiff(tmp_path / "grey.tif", np.ones((1, 16, 16), np.uint16))
    scene = [tmp_path / "rgb.tif", tmp_path / "grey.tif", tmp_path / "gone.tif"]
    with pytest.raises(InputRasterError) as caught:
        survey_files(scene, None)
    assert caught.value.problems == [
        f"{tmp_path / 'gone.tif'}: predict.scene[2]: file not found; check the path in the job file"
    ]
    from geoseg.io.survey import plan_survey

    infos = [survey_files([tmp_path / n], None)[0] for n in ("rgb.tif", "grey.tif")]
    with pytest.raises(InputRasterError) as caught:
        plan_survey(infos, field="predict.scene")
    assert str(caught.value) == (
        f"{tmp_path / 'grey.tif'}: predict.scene: 1 band(s) of uint16, but rgb.tif (the first file) has 3 of uint8; "
        "a survey's files must share bands and data type: convert this file (gdal_translate -b / -ot) or leave it out"
    )
    with pytest.raises(InputRasterError, match="no file matches this pattern"):
        survey_files(tmp_path / "nothing" / "*.tif", None)


def test_resample_model_reads_the_scene_at_the_models_pixel_size(tmp_path):
    """A 0.25 m scene for a 0.5 m model: read on a 0.5 m grid, as gdalwarp -tr 0.5 0.5 -r bilinear gives it."""
    from affine import Affine

    from geoseg.config import read_job_file
    from geoseg.stages.scene import predicted_scene
    from tests.factories import model_card, smooth_scene

    fine = smooth_scene(tmp_path / "fine.tif", 128)
    with rasterio.open(fine) as src:
        pixels, crs = src.read(), src.crs
        fine_transform = src.transform @ Affine.scale(0.5)  # 0.25 m pixels
    write_geotiff(tmp_path / "fine.tif", pixels, crs=crs.to_string(), transform=fine_transform, block=128)
    card = model_card(arch="unet", encoder="resnet18", classes=["background", "water"], bands=[1, 2, 3])
    card = card.model_copy(update={"pixel_size": (0.5, 0.5), "crs": crs.to_string()})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "name": "resample",
                "output_dir": str(tmp_path / "out"),
                "classes": ["background", "water"],
                "stages": ["predict"],
                "predict": {"scene": str(tmp_path / "fine.tif"), "resample": "model"},
            }
        )
    )
    scene = predicted_scene(read_job_file(job_file), None, card=card)
    assert (scene.height, scene.width) == (64, 64)
    assert scene.transform == Affine(0.5, 0, fine_transform.c, 0, -0.5, fine_transform.f)
    expected = np.zeros((3, 64, 64), np.uint8)
    reproject(
        pixels,
        expected,
        src_transform=fine_transform,
        src_crs=crs,
        dst_transform=scene.transform,
        dst_crs=crs,
        resampling=Resampling.bilinear,
    )
    with rasterio.open(scene.path) as survey:
        got = survey.read(window=Window(8, 8, 48, 48))
        assert survey.dataset_mask().all()
    assert np.abs(got.astype(int) - expected[:, 8:56, 8:56]).max() <= 1


def test_validate_lists_every_survey_problem(tmp_path, capsys):
    from geoseg.cli import main

    write_geotiff(tmp_path / "a.tif", np.ones((3, 16, 16), np.uint8))
    write_geotiff(tmp_path / "b.tif", np.ones((3, 16, 16), np.uint8))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    job = {
        "name": "survey",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water"],
        "stages": ["predict"],
        "predict": {"scene": ["a.tif", "b.tif", "broken.tif", "missing/*.tif"], "checkpoint": "ckpt"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing' / '*.tif'}: predict.scene[3]: no file matches this pattern" in err
    assert f"{tmp_path / 'broken.tif'}: predict.scene[2]: not a readable raster" in err
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are good


def test_a_training_image_of_many_files_trains_as_one(tmp_path):
    """train.scenes[].image as a glob: the mosaic equals the scene the pieces were cut from, labels on its grid."""
    from geoseg.job import load_job
    from geoseg.stages.train import training_plan

    scene, labels = tiny_scene(tmp_path)
    with rasterio.open(scene) as src:
        whole, crs = src.read(), src.crs.to_string()
        for r in range(2):
            for c in range(2):
                window = Window(c * 96, r * 96, 96, 96)
                write_geotiff(
                    tmp_path / "pieces" / f"p{r}{c}.tif",
                    src.read(window=window),
                    crs=crs,
                    transform=window_transform(window, src.transform),
                    nodata=0,
                    block=32,
                )
    job = {
        "name": "pieces",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water", "vegetation"],
        "stages": ["train"],
        "model": {"arch": "unet", "options": TINY_UNET},
        "train": {"scenes": [{"image": "pieces/*.tif", "labels": str(labels)}], "tile_size": 64},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    plan = training_plan(load_job(tmp_path / "job.yaml"), log=lambda m: None)
    image = plan.scenes[0].image
    assert str(image).endswith("survey_0.vrt")
    with rasterio.open(image) as mosaic:
        np.testing.assert_array_equal(mosaic.read(), whole)
    with rasterio.open(plan.scenes[0].labels) as rasterized, rasterio.open(scene) as src:
        assert (rasterized.transform, rasterized.shape) == (src.transform, src.shape)
