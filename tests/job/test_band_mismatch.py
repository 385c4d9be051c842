"""A scene that does not match the checkpoint's card (band count, dtype, alpha) is refused in one line that
names the fix: by the preflight of `geoseg validate`/`predict`, and by the predict stage itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.enums import ColorInterp

from geoseg.cli import main
from geoseg.errors import InputRasterError
from geoseg.io.raster import inspect_scene
from tests.factories import TINY_UNET, tiny_scene, tiny_unet_checkpoint, write_geotiff


def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rgbn_card(rgbn, tmp_path_factory):
    """A random tiny checkpoint whose card says 4 bands of uint16."""
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("card") / "ckpt", inspect_scene(rgbn.scene))


def predict_job(folder: Path, scene: Path, checkpoint: Path, **overrides) -> Path:
    job = {
        "name": "p",
        "output_dir": str(folder / "out"),
        "classes": ["background", "water", "building"],
        "stages": ["predict"],
        "model": {"arch": "unet", "options": TINY_UNET},
        "tiling": {"tile_size": 96, "halo": 16},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint)},
        **overrides,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _uint8_rgb(folder: Path) -> Path:
    return tiny_scene(folder, size=96)[0]


def _uint8_4band(folder: Path) -> Path:
    # GDAL makes the 4th band of a 4-band uint8 RGB GeoTIFF alpha unless told otherwise: here it is NIR.
    path = folder / "u8x4.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(500000, 5000000, 0.5, 0.5),
        photometric="RGB",
        alpha="UNSPECIFIED",
    ) as dst:
        dst.write(np.full((4, 64, 64), 9, np.uint8))
    return path


def _uint16_rgba(folder: Path) -> Path:
    # 4 bands of uint16, but the 4th is alpha: 3 colour bands for a 4-band model.
    data = np.full((4, 64, 64), 3000, np.uint16)
    data[3] = 65535
    return write_geotiff(
        folder / "rgba16.tif",
        data,
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )


@pytest.mark.parametrize(
    "make, needles",
    [
        (_uint8_rgb, ["3 band(s) of uint8", "4 of uint16"]),
        (_uint8_4band, ["4 band(s) of uint8", "4 of uint16"]),
        (_uint16_rgba, ["3 band(s) of uint16", "4 of uint16"]),
    ],
)
def test_scene_that_does_not_match_the_card_is_refused_in_one_line(tmp_path, capsys, rgbn_card, make, needles):
    scene = make(tmp_path)
    job = predict_job(tmp_path, scene, rgbn_card)
    for command in ("validate", "predict"):
        code, err = run_cli([command, job], capsys)
        assert code == 2 and len(err) == 1, err
        for needle in [str(scene), "predict.scene", str(rgbn_card), *needles]:
            assert needle in err[0], err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_predict_stage_itself_refuses_a_mismatch_with_the_fix(tmp_path, rgbn_card):
    """Called without the preflight (as a library), the stage raises InputRasterError before starting Ray."""
    from geoseg.job import load_job
    from geoseg.stages.predict import run_predict

    scene = _uint8_4band(tmp_path)
    with pytest.raises(InputRasterError) as caught:
        run_predict(load_job(predict_job(tmp_path, scene, rgbn_card)), log=lambda message: None)
    message = str(caught.value)
    assert "\n" not in message and str(scene) in message and "predict.scene" in message
    assert "4 band(s) of uint8" in message and "4 of uint16" in message
    assert message.endswith(
        "the model reads uint16, and no job setting converts uint8 pixels: use imagery stored as "
        "uint16, or train a model on uint8 imagery like this scene"
    )


@pytest.mark.parametrize(
    "make, fix",
    [
        # Another data type: `bands:` cannot help, so it is not suggested.
        (_uint8_rgb, "the model reads uint16, and no job setting converts uint8 pixels: use imagery stored as uint16"),
        # Too few bands (the fourth is alpha): nor here.
        (_uint16_rgba, "this scene has only 3 usable band(s) and the model reads 4: use imagery with 4 band(s)"),
    ],
)
def test_preflight_mismatch_message_names_only_a_fix_that_works(tmp_path, capsys, rgbn_card, make, fix):
    code, err = run_cli(["validate", predict_job(tmp_path, make(tmp_path), rgbn_card)], capsys)
    assert code == 2 and len(err) == 1 and fix in err[0] and "`bands:`" not in err[0], err


def test_a_scene_with_more_bands_than_the_model_is_told_to_pick_them_with_bands(tmp_path, capsys, rgbn):
    """A 3-band model and the 4-band RGBN scene: `bands:` is the fix, and the fix works."""
    three = inspect_scene(rgbn.scene, bands=[1, 2, 3])
    checkpoint = tiny_unet_checkpoint(tmp_path / "ckpt", three)
    scene_only = predict_job(tmp_path, rgbn.scene, checkpoint)
    # The card's own bands are read when the job names none, so this validates; a job that asks for all four
    # bands gets the fix, and following it validates.
    assert run_cli(["validate", scene_only], capsys)[0] == 0
    code, err = run_cli(["validate", predict_job(tmp_path, rgbn.scene, checkpoint, bands=[1, 2, 3, 4])], capsys)
    assert code == 2 and len(err) == 2, err
    assert "differs from the bands the model" in err[0] and "set it to [1, 2, 3]" in err[0], err[0]
    assert err[1].endswith("pick the 3 band(s) the model reads with `bands:` (e.g. `bands: [1, 2, 3]`)"), err[1]
    assert run_cli(["validate", predict_job(tmp_path, rgbn.scene, checkpoint, bands=[1, 2, 3])], capsys)[0] == 0


def test_predict_only_job_uses_the_card_band_selection(tmp_path, capsys, rgbn):
    scene = inspect_scene(rgbn.scene, bands=[4, 1, 2])
    checkpoint = tiny_unet_checkpoint(tmp_path / "ckpt", scene)
    code, err = run_cli(["validate", predict_job(tmp_path, rgbn.scene, checkpoint)], capsys)
    assert code == 0, err
