"""Training: held-out validation strips, class-balanced oversampling, jitter, losses in the loop,
best-epoch weights, early stopping, and a killed run that resumes from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from conftest import tiny_job, tiny_scene, write_geotiff
from geoseg.job import load_job
from geoseg.io.labels import IGNORE, load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.config.paths import JobPaths
from geoseg.models.checkpoint import read_card
from geoseg.train.loop import train_model
from geoseg.train.sampler import CropSampler, LabelIndex, split_area, validation_windows

CLASSES = ["background", "water", "vegetation"]


@pytest.mark.parametrize("side", ["bottom", "top", "left", "right"])
def test_validation_strip_and_training_area_split_the_scene(side):
    train, val = split_area(300, 200, 0.2, side)
    mask = np.zeros((300, 200), int)
    for window, value in ((train, 1), (val, 2)):
        mask[int(window.row_off):int(window.row_off + window.height),
             int(window.col_off):int(window.col_off + window.width)] += value
    assert set(np.unique(mask)) == {1, 2}  # every pixel in exactly one of them
    assert (mask == 2).mean() == pytest.approx(0.2, abs=0.01)
    assert split_area(300, 200, 0.0)[1] is None


def test_validation_windows_cover_the_strip_inside_it():
    _, val = split_area(300, 500, 0.3, "bottom")
    windows = validation_windows(val, 128)
    covered = np.zeros((300, 500), bool)
    for w in windows:
        assert w.row_off >= val.row_off and w.row_off + w.height <= 300 and w.col_off + w.width <= 500
        covered[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)] = True
    assert covered[210:].all() and not covered[:210].any()


def _rare_class_scene(folder: Path):
    """Background everywhere, one small 'water' square (0.4% of the scene) in a corner."""
    labels = np.zeros((256, 256), np.uint8)
    labels[200:216, 16:32] = 1
    image = np.stack([labels * 80 + 60] * 3).astype(np.uint8)
    scene = write_geotiff(folder / "scene.tif", image)
    label_path = write_geotiff(folder / "labels.tif", labels[None], nodata=IGNORE)
    return scene, label_path


def _water_share(sampler, n=60):
    shares = []
    for _, (image, target) in zip(range(n), sampler):
        shares.append(float((target == 1).float().mean()))
    return np.mean(shares)


def test_oversampling_lifts_a_rare_class_and_crops_stay_in_the_training_area(tmp_path):
    scene, labels = _rare_class_scene(tmp_path)
    train, _ = split_area(256, 256, 0.0)
    index = LabelIndex.build(labels, train, 2)
    assert index.counts.tolist() == [256 * 256 - 256, 256]
    assert index.cells[:, :, 1].sum() == 1  # one 64-px cell holds water
    common = dict(areas=[train], bands=(1, 2, 3), size=32, mean=[0, 0, 0], std=[1, 1, 1], seed=3, indexes=[index])
    plain = _water_share(CropSampler([(scene, labels)], oversample=0.0, **common))
    balanced = _water_share(CropSampler([(scene, labels)], oversample=0.8, **common))
    assert plain < 0.05 and balanced > 5 * plain

    # Crops never reach into a held-out strip: with the bottom 30% held out, no crop sees row >= 179.
    train, val = split_area(256, 256, 0.3, "bottom")
    index = LabelIndex.build(labels, train, 2)
    sampler = CropSampler([(scene, labels)], areas=[train], bands=(1, 2, 3), size=32, mean=[0, 0, 0],
                          std=[1, 1, 1], seed=1, indexes=[index], oversample=1.0)
    assert _water_share(sampler) == 0.0  # the only water is in the strip


def test_photometric_jitter_changes_gain_and_offset_only(tmp_path):
    scene, labels = _rare_class_scene(tmp_path)
    train, _ = split_area(256, 256, 0.0)
    kwargs = dict(areas=[train], bands=(1, 2, 3), size=64, mean=[0, 0, 0], std=[1, 1, 1], seed=5)
    (a, ta), = [s for _, s in zip(range(1), CropSampler([(scene, labels)], jitter=0.0, **kwargs))]
    (b, tb), = [s for _, s in zip(range(1), CropSampler([(scene, labels)], jitter=0.2, **kwargs))]
    assert torch.equal(ta, tb)  # same crop and same augmentation: labels untouched
    assert not torch.equal(a, b)
    for band in range(3):  # b = a * gain + offset, gain within 1 ± 0.2
        x, y = a[band].flatten().double(), b[band].flatten().double()
        if x.std() > 0:
            gain = torch.dot(x - x.mean(), y - y.mean()) / torch.dot(x - x.mean(), x - x.mean())
            assert 0.8 <= gain <= 1.2
            assert torch.allclose(y, gain * x + (y.mean() - gain * x.mean()), atol=1e-3)


def _loop_config(folder: Path, loss: dict, **extra) -> dict:
    scene, gpkg = tiny_scene(folder)
    info = inspect_scene(scene)
    frame = load_labels(gpkg, scene=info, classes=CLASSES, field="class")
    labels = rasterize_labels(frame, info, folder / "labels.tif")
    instances = rasterize_labels(frame, info, folder / "instances.tif", instances=True)
    train, val = split_area(192, 192, 0.25, "bottom")
    card = {"arch": "unet", "encoder": "resnet18", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
            "classes": CLASSES, "bands": [1, 2, 3], "dtype": "uint8",
            "normalization": {"mean": [100.0] * 3, "std": [50.0] * 3}}
    index = LabelIndex.build(labels, train, 3)
    box = lambda w: [int(w.col_off), int(w.row_off), int(w.width), int(w.height)]  # noqa: E731
    return {"card": card, "pairs": [(str(scene), str(labels))], "train_areas": [box(train)], "val_areas": [box(val)],
            "cells": [index.cells], "instances": [str(instances)], "class_weights": [0.5, 2.0, 1.0], "loss": loss,
            "schedule": "cosine", "tile_size": 64, "batch_size": 2, "epochs": 2, "steps_per_epoch": 2,
            "learning_rate": 1e-3, "weight_decay": 0.0, "seed": 0, "oversample": 0.5, "jitter": 0.1,
            "patience": None, "stride": 8, **extra}


def test_instance_raster_gives_each_polygon_its_own_id(tmp_path):
    scene, gpkg = tiny_scene(tmp_path)
    info = inspect_scene(scene)
    frame = load_labels(gpkg, scene=info, classes=CLASSES, field="class")
    path = rasterize_labels(frame, info, tmp_path / "ids.tif", instances=True)
    with rasterio.open(path) as src:
        ids = src.read(1)
    assert src.dtypes[0] == "uint32"
    assert set(np.unique(ids)) - {0} <= set(range(1, len(frame) + 1))
    assert len(np.unique(ids)) > len(frame) // 2  # most polygons visible (later ones burn over earlier)


@pytest.mark.parametrize("loss", [{"ce": 1.0, "dice": 1.0}, {"border_ce": 1.0, "lovasz": 0.5},
                                  {"weighted_ce": 1.0, "focal": 1.0, "tversky": 1.0, "jaccard": 1.0}])
def test_the_loop_trains_with_each_loss_and_validates_on_the_strip(tmp_path, loss):
    reports = []
    metrics = train_model(_loop_config(tmp_path, loss), report=lambda m, folder: reports.append(
        (m, sorted(p.name for p in folder.iterdir()))), log=lambda line: None)
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(np.isfinite(m["loss"]) and 0 <= m["val_miou"] <= 1 for m, _ in reports)
    assert reports[-1][1] == ["best_model.safetensors", "model.safetensors", "model_card.json", "optimizer.pt"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    # A learning rate of 0 never improves: the first epoch stays best, and patience 1 stops after epoch 2.
    config = _loop_config(tmp_path, {"ce": 1.0}, epochs=6, patience=1, learning_rate=1e-12, schedule="cosine")
    lines = []
    metrics = train_model(config, report=lambda m, folder: None, log=lines.append)
    assert metrics["epoch"] == 2 and metrics["stopped_early"] and metrics["best_epoch"] == 1
    assert any("stopping early" in line for line in lines)


def _geoseg(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "geoseg.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_a_training_run_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    scene, labels = tiny_scene(tmp_path)
    job_path = tiny_job(tmp_path, scene, labels, stages=["train"])
    job = yaml.safe_load(job_path.read_text())
    job["train"].update(epochs=4, steps_per_epoch=12)
    job_path.write_text(yaml.safe_dump(job))
    paths = JobPaths.of(load_job(job_path))

    victim = _geoseg("train", job_path, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and victim.poll() is None:
        if list(paths.ray_storage.glob("*/checkpoint_*/model.safetensors")):  # epoch 1 is saved
            time.sleep(1.0)  # into epoch 2
            break
        time.sleep(0.2)
    assert victim.poll() is None, "training finished before it could be killed:\n" + victim.stdout.read()
    os.killpg(victim.pid, signal.SIGKILL)  # driver and its Ray processes, mid-epoch
    victim.wait()
    assert not paths.checkpoint.exists()

    rerun = _geoseg("train", job_path)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert "resuming after epoch" in output
    resumed_after = int(output.split("resuming after epoch ")[1].split("/")[0])
    assert 1 <= resumed_after < 4
    assert "epoch 1/4" not in output.split("resuming after epoch")[1]  # finished epochs are not redone
    card = read_card(paths.checkpoint)
    assert card["training"]["epochs_run"] == 4
    history = json.loads(paths.training_history.read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]

    again = _geoseg("train", job_path)
    assert "nothing to do" in again.communicate(timeout=300)[0]


def test_job_schema_knows_exactly_the_losses_geoseg_builds(tmp_path):
    from geoseg.config.schema import LOSS_NAMES
    from geoseg.errors import JobConfigError
    from geoseg.train.losses import LOSSES

    assert tuple(LOSS_NAMES) == tuple(LOSSES)
    scene, labels = tiny_scene(tmp_path)
    job_path = tiny_job(tmp_path, scene, labels)
    job = yaml.safe_load(job_path.read_text())
    job["train"]["loss"] = {"ce": 1.0, "dise": 1.0}
    job_path.write_text(yaml.safe_dump(job))
    with pytest.raises(JobConfigError, match=r"train\.loss: .*unknown loss 'dise'; choose from ce, weighted_ce"):
        load_job(job_path)
