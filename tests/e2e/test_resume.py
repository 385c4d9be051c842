"""Killed runs resume: a predict killed mid-run skips its finished chunks and ends byte-identical; a
training run killed mid-epoch resumes from its last checkpoint. Both through the real CLI in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from geoseg.config.paths import JobPaths
from geoseg.job import load_job
from geoseg.models.checkpoint import read_card
from tests.factories import chunk_bytes, smooth_scene, tiny_job, tiny_scene, unet_checkpoint

CLASSES = ["background", "water", "building"]


def geoseg(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "geoseg.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def predict_job(folder: Path, scene: Path, checkpoint: Path, out: str) -> Path:
    job = {
        "name": "resume",
        "output_dir": str(folder / out),
        "classes": CLASSES,
        "stages": ["predict"],
        "model": {"arch": "unet"},
        "tiling": {"tile_size": 128, "halo": 32},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "batch_size": 1},
        "runtime": {"workers": 1, "cpus_per_worker": 2},
    }
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.long  # two minutes on 2 cores: CI's test-long runs it
def test_killed_predict_resumes_skipping_done_chunks_and_ends_identical(tmp_path):
    scene = smooth_scene(tmp_path / "scene.tif", 512)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene)  # full-size U-Net: slow enough to kill mid-run
    total = 8 * 8

    clean = geoseg("predict", predict_job(tmp_path, scene, checkpoint, "clean"))
    assert clean.wait(timeout=600) == 0, clean.stdout.read()

    job = predict_job(tmp_path, scene, checkpoint, "killed")
    done_path = tmp_path / "killed" / "mosaic.zarr.partial"
    victim = geoseg("predict", job, start_new_session=True)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and victim.poll() is None:
        try:
            done = int(np.asarray(zarr.open_group(str(done_path), mode="r")["done"][:]).sum())
        except Exception:  # not created yet
            done = 0
        if done >= 10:
            break
        time.sleep(0.2)
    assert victim.poll() is None, "predict finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)  # the driver, with no chance to clean up
    victim.wait()
    time.sleep(1)
    os.killpg(victim.pid, signal.SIGKILL)  # then its Ray processes, as a dying node would lose them
    assert not (tmp_path / "killed" / "mosaic.zarr").exists()  # nothing looks complete

    rerun = geoseg("predict", job)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    skipped = int(output.split("resuming: skipped ")[1].split()[0])
    assert done <= skipped < total
    assert chunk_bytes(tmp_path / "killed" / "mosaic.zarr") == chunk_bytes(tmp_path / "clean" / "mosaic.zarr")

    again = geoseg("predict", job)
    # The finished run is recorded: running it again is a no-op that says so.
    assert "already finished in run" in again.communicate(timeout=300)[0]


@pytest.mark.long
def test_a_training_run_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    scene, labels = tiny_scene(tmp_path)
    job_path = tiny_job(tmp_path, scene, labels, stages=["train"])
    job = yaml.safe_load(job_path.read_text())
    job["train"].update(epochs=4, steps_per_epoch=12)
    job_path.write_text(yaml.safe_dump(job))
    paths = JobPaths.of(load_job(job_path))

    victim = geoseg("train", job_path, start_new_session=True)
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

    rerun = geoseg("train", job_path)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert "resuming after epoch" in output
    resumed_after = int(output.split("resuming after epoch ")[1].split("/")[0])
    assert 1 <= resumed_after < 4
    assert "epoch 1/4" not in output.split("resuming after epoch")[1]  # finished epochs are not redone
    card = read_card(paths.checkpoint)
    assert card.training is not None and card.training.epochs_run == 4
    history = json.loads(paths.training_history.read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]

    again = geoseg("train", job_path)
    assert "nothing to do" in again.communicate(timeout=300)[0]
