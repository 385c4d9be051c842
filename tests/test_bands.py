"""Bands and data types: 4-band uint16 RGBN end to end, `bands:` subsets, mismatches refused, alpha as a mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.enums import ColorInterp

from conftest import real_raster, tiny_scene, write_geotiff
from geoseg.cli import main
from geoseg.errors import InputRasterError
from geoseg.io.mosaic import open_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.synthetic import DEMO_CLASSES, make_rgbn_scene
from geoseg.io.normalization import band_statistics
from geoseg.models.checkpoint import load_checkpoint
from geoseg.io.normalization import normalize
from test_predict import TINY, make_checkpoint, predict_scene

STEP = 4  # band_statistics' default sampling step


@pytest.fixture(scope="module")
def rgbn(tmp_path_factory):
    """A 256 px RGBN uint16 scene with a nodata collar, and its labels."""
    return make_rgbn_scene(tmp_path_factory.mktemp("rgbn"), size=256, seed=1)


def write_job(folder: Path, scene, **overrides) -> Path:
    job = {
        "name": "rgbn", "output_dir": str(folder / "out"), "classes": list(DEMO_CLASSES),
        "stages": ["train", "predict"],
        "model": {"arch": "unet", "encoder": "resnet18", "options": TINY},
        "tiling": {"tile_size": 128, "halo": 16},
        "train": {"scenes": [{"image": str(scene.scene), "labels": str(scene.labels_gpkg)}], "tile_size": 64,
                  "batch_size": 2, "epochs": 1, "steps_per_epoch": 2},
        "predict": {"scene": str(scene.scene), "batch_size": 4},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    job.update(overrides)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def valid_pixels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All bands as float64 and the validity mask computed by hand: nodata where every band is nodata."""
    with rasterio.open(path) as src:
        pixels, nodata = src.read().astype(np.float64), src.nodata
    return pixels, ~(pixels == nodata).all(axis=0)


def numpy_statistics(path: Path, bands: list[int], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    pixels, valid = valid_pixels(path)
    values = pixels[[b - 1 for b in bands], ::step, ::step][:, valid[::step, ::step]]
    return values.mean(axis=1), values.std(axis=1)


def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- the generator ----------------------------------------------------------------------------------------------


def test_rgbn_scene_is_4_band_uint16_with_plausible_nir_and_is_deterministic(rgbn, tmp_path):
    again = make_rgbn_scene(tmp_path, size=256, seed=1)
    assert again.scene.read_bytes() == rgbn.scene.read_bytes()
    scene = inspect_scene(rgbn.scene)
    assert (scene.count, scene.dtype, scene.bands, scene.alpha, scene.nodata) == (4, "uint16", (1, 2, 3, 4), None, 0)
    with rasterio.open(rgbn.scene) as src, rasterio.open(rgbn.labels_tif) as lab:
        assert src.descriptions == ("R", "G", "B", "NIR")
        assert src.colorinterp[3] != ColorInterp.alpha  # NIR is a colour, never a mask
        assert src.block_shapes[0] == (128, 128)
        pixels, labels = src.read(), lab.read(1)
    valid = labels != 255
    assert 0.02 < (~valid).mean() < 0.2  # the collar
    assert (pixels[:, ~valid] == 0).all() and (pixels[:, valid] >= 1).all()
    assert pixels.max() > 32767  # the upper half of uint16 is used: a signed reading would break
    nir = {name: pixels[3][labels == i].mean() for i, name in enumerate(DEMO_CLASSES)}
    red = {name: pixels[0][labels == i].mean() for i, name in enumerate(DEMO_CLASSES)}
    ndvi = {name: (nir[name] - red[name]) / (nir[name] + red[name]) for name in DEMO_CLASSES}
    assert nir["vegetation"] > 1.2 * max(nir["building"], nir["road"], nir["background"]) > 4 * nir["water"]
    assert ndvi["vegetation"] > 0.3 and ndvi["water"] < -0.4
    assert all(abs(ndvi[name]) < 0.1 for name in ("background", "building", "road"))


# --- end to end -------------------------------------------------------------------------------------------------


def test_rgbn_uint16_trains_and_predicts_end_to_end(rgbn, tmp_path, ray_local):
    from geoseg.job import run_job

    lines: list[str] = []
    run_job(write_job(tmp_path, rgbn), log=lines.append)
    out = tmp_path / "out"
    card = json.loads((out / "checkpoint" / "model_card.json").read_text())
    assert card["bands"] == [1, 2, 3, 4] and card["dtype"] == "uint16"
    model, _ = load_checkpoint(out / "checkpoint")
    assert model.encoder.conv1.in_channels == 4

    # Normalization: per band over valid pixels only (the collar is excluded), as band_statistics samples them...
    mean, std = numpy_statistics(rgbn.scene, [1, 2, 3, 4], step=STEP)
    assert np.allclose(card["normalization"]["mean"], mean, rtol=1e-9)
    assert np.allclose(card["normalization"]["std"], std, rtol=1e-6)
    # ...which is the statistics of every valid pixel, and not of the collar's zeros.
    full_mean, full_std = numpy_statistics(rgbn.scene, [1, 2, 3, 4])
    assert np.allclose(card["normalization"]["mean"], full_mean, rtol=0.01)
    assert np.allclose(card["normalization"]["std"], full_std, rtol=0.03)
    pixels, valid = valid_pixels(rgbn.scene)
    assert (np.abs(pixels.mean(axis=(1, 2)) / full_mean - 1) > 0.02).all()

    assert "predict: tiles 9/9" in lines
    mosaic = open_mosaic(out / "mosaic.zarr")
    with rasterio.open(rgbn.scene) as src:
        assert (mosaic.height, mosaic.width) == (256, 256) and mosaic.labels.shape == (256, 256)
        assert mosaic.crs == src.crs and mosaic.transform == src.transform
    assert ((mosaic.valid[:] > 0) == valid).all()
    assert mosaic.labels[:][~valid].max() == 0
    assert mosaic.labels[:].max() < len(DEMO_CLASSES)


def fit_in_process(config: dict, *, checkpoint_out: Path, **_) -> dict:
    """What ``geoseg.runtime.fit_model`` does, minus Ray Train's start-up (~20 s on 2 cores): one worker,
    in this process. The test above trains through the real Ray Train; this one is about bands."""
    from geoseg.models.checkpoint import publish_checkpoint
    from geoseg.train.loop import train_model

    last: dict = {}

    def report(metrics: dict, folder: Path | None) -> None:
        last.clear()
        last.update(metrics)
        if folder is not None:
            publish_checkpoint(folder, checkpoint_out)

    metrics = train_model(config, report=report, log=lambda message: None)
    return dict(last or metrics)


def test_bands_subset_in_job_order_trains_a_3_input_model_and_predicts_with_it(rgbn, tmp_path, ray_local,
                                                                                monkeypatch):
    import geoseg.stages.train
    from geoseg.job import run_job

    monkeypatch.setattr(geoseg.stages.train, "fit_model", fit_in_process)
    # One tile covers the scene (core 256, halo 32 mirrored): the mosaic must equal the model run by hand.
    job = write_job(tmp_path, rgbn, bands=[4, 1, 2], tiling={"tile_size": 320, "halo": 32},
                    predict={"scene": str(rgbn.scene), "batch_size": 1, "scores": True})
    run_job(job, log=lambda message: None)
    out = tmp_path / "out"
    card = json.loads((out / "checkpoint" / "model_card.json").read_text())
    assert card["bands"] == [4, 1, 2] and card["dtype"] == "uint16"
    mean, std = numpy_statistics(rgbn.scene, [4, 1, 2], step=STEP)
    assert np.allclose(card["normalization"]["mean"], mean, rtol=1e-9)
    assert np.allclose(card["normalization"]["std"], std, rtol=1e-6)
    model, _ = load_checkpoint(out / "checkpoint")
    assert model.encoder.conv1.in_channels == 3

    mosaic = open_mosaic(out / "mosaic.zarr")
    scores = mosaic.group["scores"][:].astype(int)
    valid = mosaic.valid[:] > 0

    def by_hand(order):
        with rasterio.open(rgbn.scene) as src:
            image = np.pad(src.read(order), ((0, 0), (32, 32), (32, 32)), mode="reflect")
        inputs = normalize(image, card["normalization"]["mean"], card["normalization"]["std"])
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(inputs[None])), dim=1)[0, :, 32:-32, 32:-32]
        return torch.round(probs * 255).to(torch.uint8).numpy().astype(int)

    assert np.abs(scores - by_hand([4, 1, 2]))[:, valid].max() <= 1  # bands read in the card's order
    assert np.abs(scores - by_hand([1, 2, 4]))[:, valid].max() > 1  # (a different order shows)


# --- mismatches -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgbn_card(rgbn, tmp_path_factory):
    """A random tiny checkpoint whose card says 4 bands of uint16."""
    return make_checkpoint(tmp_path_factory.mktemp("card") / "ckpt", inspect_scene(rgbn.scene))


def predict_job(folder: Path, scene: Path, checkpoint: Path, **overrides) -> Path:
    job = {"name": "p", "output_dir": str(folder / "out"), "classes": ["background", "water", "building"],
           "stages": ["predict"], "model": {"arch": "unet", "options": TINY},
           "tiling": {"tile_size": 96, "halo": 16},
           "predict": {"scene": str(scene), "checkpoint": str(checkpoint)}, **overrides}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _uint8_rgb(folder: Path) -> Path:
    return tiny_scene(folder, size=96)[0]


def _uint8_4band(folder: Path) -> Path:
    # GDAL makes the 4th band of a 4-band uint8 RGB GeoTIFF alpha unless told otherwise: here it is NIR.
    path = folder / "u8x4.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5000000, 0.5, 0.5), photometric="RGB",
                       alpha="UNSPECIFIED") as dst:
        dst.write(np.full((4, 64, 64), 9, np.uint8))
    return path


def _uint16_rgba(folder: Path) -> Path:
    # 4 bands of uint16, but the 4th is alpha: 3 colour bands for a 4-band model.
    data = np.full((4, 64, 64), 3000, np.uint16)
    data[3] = 65535
    return write_geotiff(folder / "rgba16.tif", data,
                         colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])


@pytest.mark.parametrize("make, needles", [
    (_uint8_rgb, ["3 band(s) of uint8", "4 of uint16"]),
    (_uint8_4band, ["4 band(s) of uint8", "4 of uint16"]),
    (_uint16_rgba, ["3 band(s) of uint16", "4 of uint16"]),
])
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
    assert "4 band(s) of uint8" in message and "4 of uint16" in message and "predict imagery like" in message


def test_preflight_mismatch_message_names_the_fix(tmp_path, capsys, rgbn_card):
    job = predict_job(tmp_path, _uint8_rgb(tmp_path), rgbn_card)
    code, err = run_cli(["validate", job], capsys)
    assert code == 2 and ("`bands:`" in err[0] or "imagery like" in err[0]), err


def test_predict_only_job_uses_the_card_band_selection(tmp_path, capsys, rgbn):
    scene = inspect_scene(rgbn.scene, bands=[4, 1, 2])
    checkpoint = make_checkpoint(tmp_path / "ckpt", scene)
    code, err = run_cli(["validate", predict_job(tmp_path, rgbn.scene, checkpoint)], capsys)
    assert code == 0, err


# --- alpha is a mask ------------------------------------------------------------------------------------------


def test_rgba_uint16_predicts_with_alpha_as_a_mask(tmp_path, monkeypatch):
    """Extends test_predict's run over the real RGBA.uint16.tif: 3 colour bands in, alpha only in `valid`."""
    import geoseg.infer.predict as predict_module

    path = real_raster("RGBA.uint16.tif")
    seen = []
    real_forward = predict_module.predict_logits
    monkeypatch.setattr(predict_module, "predict_logits",
                        lambda model, batch, device: seen.append(batch.shape[1]) or real_forward(model, batch, device))
    scene, mosaic = predict_scene(tmp_path, path)
    assert (scene.dtype, scene.bands, scene.alpha) == ("uint16", (1, 2, 3), 4)
    card = json.loads((tmp_path / "ckpt" / "model_card.json").read_text())
    assert card["bands"] == [1, 2, 3] and len(card["normalization"]["mean"]) == 3
    assert seen and set(seen) == {3}  # the model never sees the alpha band
    with rasterio.open(path) as src:
        alpha = src.read(4)
    assert 0.1 < (alpha == 0).mean() < 0.9
    valid, labels = mosaic.valid[:], mosaic.labels[:]
    assert ((valid == 0) == (alpha == 0)).all()
    assert (labels[alpha == 0] == 0).all()


def test_uint16_statistics_do_not_overflow_and_skip_alpha_masked_pixels(tmp_path):
    """Values near 65535 (squares beyond 2**32) and alpha-masked pixels of another value."""
    data = np.zeros((4, 64, 64), np.uint16)
    data[0] = 65000 + np.arange(64, dtype=np.uint16)[None, :]  # x**2 overflows uint16, uint32 and int32
    data[1] = 40000
    data[2] = 123
    data[3] = 255
    data[:3, :, :16] = 7  # masked by alpha: must not count
    data[3, :, :16] = 0
    path = write_geotiff(tmp_path / "a.tif", data,
                         colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])
    scene = inspect_scene(path)
    mean, std = band_statistics([path], scene.bands, step=1)
    x = np.arange(16, 64) + 65000.0
    assert np.allclose(mean, [x.mean(), 40000, 123], rtol=1e-12)
    assert np.allclose(std[0], x.std(), rtol=1e-6) and np.isfinite(std).all()


def test_a_constant_band_gets_a_std_of_one_digital_number_not_zero(tmp_path):
    """As in RGBA.uint16.tif, whose colour bands are all 10000: the std floors at 1, so another
    value at prediction is a few units away, not a million."""
    image = np.stack([np.full((64, 64), 10000), np.arange(64 * 64).reshape(64, 64)]).astype(np.uint16)
    path = write_geotiff(tmp_path / "flat.tif", image)
    mean, std = band_statistics([path], (1, 2), step=1)
    assert mean[0] == 10000 and std[0] == 1.0
    assert std[1] == pytest.approx(np.arange(64 * 64).std(), rel=1e-6)
