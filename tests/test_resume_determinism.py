"""Prediction is deterministic and resumable: same bytes whatever the workers,
batch size or tile order, and a killed run resumes without redoing finished chunks."""

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from scipy.ndimage import gaussian_filter

from conftest import write_geotiff
from geoseg.infer import TilePredictor
from geoseg.io.mosaic import create_mosaic
from geoseg.io.raster import inspect_scene
from geoseg.models import build_model
from geoseg.tiling import plan_tiles
from geoseg.io.normalization import band_statistics
from geoseg.models.checkpoint import save_checkpoint

CLASSES = ["background", "water", "building"]


def smooth_scene(path: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    image = np.stack([gaussian_filter(rng.normal(size=(size, size)), 6) for _ in range(3)])
    image = (image - image.min()) / (image.max() - image.min()) * 250 + 1
    return write_geotiff(path, image.astype(np.uint8), block=128)


def random_checkpoint(folder: Path, scene_path: Path, **options) -> Path:
    scene = inspect_scene(scene_path)
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=len(CLASSES), **options)
    mean, std = band_statistics([scene_path], scene.bands, step=8)
    card = {"arch": "unet", "encoder": "resnet18", "options": options, "classes": CLASSES, "bands": [1, 2, 3],
            "dtype": "uint8", "normalization": {"mean": mean, "std": std}}
    return save_checkpoint(folder, model, card)


def chunk_bytes(mosaic: Path) -> dict[str, bytes]:
    """Every stored chunk of the labels and valid arrays, by relative path."""
    files = {}
    for name in ("labels", "valid"):
        for path in sorted((mosaic / name).rglob("*")):
            if path.is_file() and not path.name.startswith(".z"):
                files[str(path.relative_to(mosaic))] = path.read_bytes()
    return files


def new_mosaic(path: Path, scene_path: Path, core: int):
    scene = inspect_scene(scene_path)
    return create_mosaic(path, height=scene.height, width=scene.width, chunk=core, crs=scene.crs,
                         transform=scene.transform, class_names=CLASSES)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    scene = smooth_scene(folder / "scene.tif", 300)
    checkpoint = random_checkpoint(folder / "ckpt", scene, encoder_depth=3, decoder_channels=[32, 16, 8])
    return folder, scene, checkpoint


def test_same_bytes_for_any_batch_size_and_tile_order(small):
    folder, scene, checkpoint = small
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    runs = {}
    for name, batch, shuffle, callers in (("b1", 1, False, 1), ("b8_shuffled", 8, True, 1),
                                          ("b3_three_threads", 3, True, 3)):
        mosaic = folder / f"{name}.zarr"
        new_mosaic(mosaic, scene, 64)
        order = list(tiles)
        if shuffle:
            random.Random(1).shuffle(order)
        predictor = TilePredictor(checkpoint, scene, mosaic, threads=2)
        batches = [order[start:start + batch] for start in range(0, len(order), batch)]
        # Several threads call one predictor at once, as a Ray actor with two calls in flight does.
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(predictor, batches))
        predictor.close()
        runs[name] = chunk_bytes(mosaic)
    assert len(runs["b1"]) == len(tiles) * 2
    assert runs["b1"] == runs["b8_shuffled"] == runs["b3_three_threads"]


def test_same_bytes_for_one_and_two_ray_workers(small, ray_local):
    from geoseg.runtime import predict_tiles

    folder, scene, checkpoint = small
    tiles = plan_tiles(300, 300, tile_size=96, halo=16)
    runs = []
    for workers, batch in ((1, 1), (2, 8)):
        mosaic = folder / f"ray{workers}.zarr"
        new_mosaic(mosaic, scene, 64)
        order = list(tiles)
        random.Random(workers).shuffle(order)
        written = predict_tiles(order, checkpoint=checkpoint, scene=scene, mosaic=mosaic, batch_size=batch,
                                workers=workers, cpus_per_worker=1, use_gpu=False)
        assert written == len(tiles)
        runs.append(chunk_bytes(mosaic))
    assert runs[0] == runs[1]
    assert np.asarray(zarr.open_group(str(folder / "ray2.zarr"), mode="r")["done"][:]).all()


def predict_job(folder: Path, scene: Path, checkpoint: Path, out: str) -> Path:
    job = {"name": "resume", "output_dir": str(folder / out), "classes": CLASSES, "stages": ["predict"],
           "model": {"arch": "unet"}, "tiling": {"tile_size": 128, "halo": 32},
           "predict": {"scene": str(scene), "checkpoint": str(checkpoint), "batch_size": 1},
           "runtime": {"workers": 1, "cpus_per_worker": 2}}
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def geoseg(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "geoseg.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_killed_predict_resumes_skipping_done_chunks_and_ends_identical(tmp_path):
    scene = smooth_scene(tmp_path / "scene.tif", 512)
    checkpoint = random_checkpoint(tmp_path / "ckpt", scene)  # full-size U-Net: slow enough to kill mid-run
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
