"""Bands and data types end to end: a 4-band uint16 RGBN job trains and predicts, and a `bands:` subset in
job order trains a 3-input model that predicts with the bands in the card's order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from geoseg.io.mosaic import open_mosaic
from geoseg.io.normalization import normalize
from geoseg.models.checkpoint import load_checkpoint
from geoseg.synthetic import DEMO_CLASSES
from tests.factories import TINY_UNET, fit_in_process

STEP = 4  # band_statistics' default sampling step


def write_job(folder: Path, scene, **overrides) -> Path:
    job = {
        "name": "rgbn",
        "output_dir": str(folder / "out"),
        "classes": list(DEMO_CLASSES),
        "stages": ["train", "predict"],
        "model": {"arch": "unet", "encoder": "resnet18", "options": TINY_UNET},
        "tiling": {"tile_size": 128, "halo": 16},
        "train": {
            "scenes": [{"image": str(scene.scene), "labels": str(scene.labels_gpkg)}],
            "tile_size": 64,
            "batch_size": 2,
            "epochs": 1,
            "steps_per_epoch": 2,
        },
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


@pytest.mark.long
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


def test_bands_subset_in_job_order_trains_a_3_input_model_and_predicts_with_it(rgbn, tmp_path, ray_local, monkeypatch):
    import geoseg.stages.train
    from geoseg.job import run_job

    # The test above trains through the real Ray Train; this one is about bands: train in this process.
    monkeypatch.setattr(geoseg.stages.train, "fit_model", fit_in_process)
    # One tile covers the scene (core 256, halo 32 mirrored): the mosaic must equal the model run by hand.
    job = write_job(
        tmp_path,
        rgbn,
        bands=[4, 1, 2],
        tiling={"tile_size": 320, "halo": 32},
        predict={"scene": str(rgbn.scene), "batch_size": 1, "scores": True},
    )
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
