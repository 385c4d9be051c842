"""Resolution aware: the predict stage says when the scene's ground pixels differ from the model's training pixels."""

import math

import pyproj
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS

from geoseg.stages.resolution import RESOLUTION_TOLERANCE, resolution_note
from tests.factories import TINY_UNET, UTM33, model_card, real_raster, tiny_scene, write_checkpoint


def card(pixel_size=None, crs=None):
    return model_card(arch="unet", encoder="resnet18", classes=["a", "b"], bands=[1], pixel_size=pixel_size, crs=crs)


def note_for(path, pixel_size, crs):
    with rasterio.open(path) as src:
        return resolution_note(path.name, src.transform, src.crs, src.height, src.width, card(pixel_size, crs))


def test_neon_at_a_tenth_of_a_metre_with_a_half_metre_model():
    assert note_for(real_raster("neon_osbs_029.tif"), (0.5, 0.5), "EPSG:32617") == (
        "predict: note: neon_osbs_029.tif has 0.10 m pixels but the model was trained on 0.50 m pixels (5.0x finer); "
        "objects look 5.0x larger than in training, which costs accuracy; "
        "set `predict.resample: model` to read it at ~0.50 m, "
        "or resample it first "
        "(e.g. gdalwarp -tr 0.5 0.5 neon_osbs_029.tif neon_osbs_029_resampled.tif)"
    )
    assert note_for(real_raster("neon_osbs_029.tif"), (0.1, 0.1), "EPSG:32617") is None


def test_web_mercator_pixels_are_measured_on_the_ground():
    # cogeo.tif: 0.6 Web Mercator units at 37.7° N, 0.6 × cos(latitude) ≈ 0.47 m on the ground
    path = real_raster("cogeo.tif")
    with rasterio.open(path) as src:
        x, y = src.transform @ (src.width / 2, src.height / 2)
    _, lat = pyproj.Transformer.from_crs(3857, 4326, always_xy=True).transform(x, y)
    scale = math.cos(math.radians(lat))
    note = note_for(path, (2.0, 2.0), "EPSG:32652")  # UTM 52N holds the scene (128.7° E)
    assert f"has {0.6 * scale:.2f} m pixels" in note and "trained on 2.00 m pixels" in note
    assert f"({2.0 / (0.6 * scale):.1f}x finer)" in note
    tr = note.split("-tr ")[1].split()
    assert float(tr[0]) == float(tr[1]) == pytest.approx(2.0 / scale, rel=2e-3)  # 2 m in Mercator units there
    # a 0.5 m model is within the tolerance of 0.47 m pixels, though 0.6 map units would not be
    assert note_for(path, (0.5, 0.5), "EPSG:32652") is None


def test_degrees_get_the_resample_size_in_degrees():
    path = real_raster("nebraska_landsat5_int16.tif")
    with rasterio.open(path) as src:
        t, h, w = src.transform, src.height, src.width
    lon, lat = t @ (w / 2, h / 2)
    geod = pyproj.Geod(ellps="WGS84")
    side = math.sqrt(geod.inv(lon, lat, lon + t.a, lat)[2] * geod.inv(lon, lat, lon, lat + t.e)[2])
    note = note_for(path, (1.0, 1.0), "EPSG:32614")
    assert f"has {side:.0f} m pixels" in note and f"({side:.1f}x coarser); objects look {side:.1f}x smaller" in note
    tr_x, tr_y = (float(v) for v in note.split("-tr ")[1].split()[:2])
    assert tr_x == pytest.approx(t.a / side, rel=2e-3) and tr_y == pytest.approx(-t.e / side, rel=2e-3)


@pytest.mark.parametrize(
    ("pixel", "noted"),
    [(0.5 * RESOLUTION_TOLERANCE, False), (0.5 / RESOLUTION_TOLERANCE, False), (0.66, True), (0.39, True)],
)
def test_the_tolerance_is_a_factor_either_way(pixel, noted):
    scene = Affine(pixel, 0, 500000.0, 0, -pixel, 5000000.0)
    note = resolution_note("s.tif", scene, CRS.from_string(UTM33), 100, 100, card((0.5, 0.5), UTM33))
    assert (note is not None) == noted


def test_cards_without_a_pixel_size_or_crs_get_no_note():
    scene = Affine(0.1, 0, 500000.0, 0, -0.1, 5000000.0)
    for old in (card(), card(crs=UTM33), card(pixel_size=(0.5, 0.5))):
        assert resolution_note("s.tif", scene, CRS.from_string(UTM33), 100, 100, old) is None


def checked_inputs_log(tmp_path, pixel_size):
    """What the predict stage's input checks log for the 0.5 m tiny scene and a model trained on ``pixel_size``."""
    import torch

    from geoseg.config.load import read_job_file
    from geoseg.models import build_model
    from geoseg.stages.predict import _checked_inputs

    scene, _ = tiny_scene(tmp_path)
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=3, encoder="resnet18", **TINY_UNET)
    checkpoint = write_checkpoint(
        tmp_path / "ckpt",
        model,
        arch="unet",
        encoder="resnet18",
        options=TINY_UNET,
        classes=["background", "water", "building"],
        bands=[1, 2, 3],
        pixel_size=pixel_size,
        crs=UTM33,
    )
    job = {
        "name": "resolution",
        "output_dir": str(tmp_path / "out"),
        "classes": ["background", "water", "building"],
        "stages": ["predict"],
        "tiling": {"tile_size": 96, "halo": 16, "stitch": "blend"},
        "model": {"arch": "unet", "options": TINY_UNET},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint)},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    logged: list[str] = []
    _checked_inputs(read_job_file(tmp_path / "job.yaml"), logged.append)
    return scene, logged


def test_the_predict_stage_logs_the_note(tmp_path):
    scene, logged = checked_inputs_log(tmp_path, (0.1, 0.1))
    notes = [line for line in logged if "pixels" in line]
    assert notes == [
        f"predict: note: {scene} has 0.50 m pixels but the model was trained on 0.10 m pixels (5.0x coarser); "
        "objects look 5.0x smaller than in training, which costs accuracy; "
        "set `predict.resample: model` to read it at ~0.10 m, "
        "or resample it first "
        f"(e.g. gdalwarp -tr 0.1 0.1 {scene} scene_resampled.tif)"
    ]


def test_the_predict_stage_is_quiet_when_the_sizes_match(tmp_path):
    _, logged = checked_inputs_log(tmp_path, (0.5, 0.5))
    assert not [line for line in logged if "pixels" in line]
