"""A whole job through the real CLI on the tiny scene: train, predict, vectorize, evaluate, then export a COG."""

import json
import subprocess
import sys

import geopandas as gpd
import pytest

from tests.factories import tiny_job


@pytest.mark.long  # a minute and a half on 2 cores: CI's test-long runs it
def test_end_to_end_run_on_a_tiny_scene(tiny):
    """The real CLI in a subprocess: Ray Train, Ray actors, Zarr, vectors, metrics."""
    folder, scene, labels = tiny
    job = tiny_job(folder, scene, labels, vectorize={"classes": ["water"]}, tiling="auto")
    result = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "run", str(job)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = folder / "out"
    assert result.stdout.count("train: epoch 2/2") == 1  # a Ray Train worker's line, forwarded once
    for stage in ("train:", "predict:", "vectorize:", "evaluate:"):
        assert stage in result.stdout
    # The seams measured after training choose the tiling: halos in 32 px steps up to the radius of this 3-level
    # U-Net (72); halo 64 already changes nothing here, so the cheapest is one exact tile of it over the 192² scene.
    assert "train: seams measured on train.scenes[0] validation strip, 192 x 29 px" in result.stdout
    assert "predict: tiling auto: tile 320 / halo 64 (0.0000% changed, 2.78x pixels) on this scene" in result.stdout
    assert "predict: tiles 1/1" in result.stdout
    assert "Failed to query Ray Train Controller" not in result.stdout + result.stderr  # Ray Train has its state API
    assert (out / "checkpoint" / "model.safetensors").is_file()
    card = json.loads((out / "checkpoint" / "model_card.json").read_text())
    assert card["classes"] == ["background", "water", "vegetation"] and card["bands"] == [1, 2, 3]
    edges = {edge["halo"]: edge["changed_px"] for edge in card["seams"]["edges"]}
    assert sorted(edges) == [32, 64, 72] and edges[64] == edges[72] == 0
    assert {(t["tile_size"], t["halo"]) for t in card["seams"]["tilings"]} >= {(512, 32), (256, 64), (1024, 72)}
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

    # A model trained before seams were measured gets them when the job runs again, without training again.
    card_path = out / "checkpoint" / "model_card.json"
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "seams"}))
    again = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "train", str(job)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already holds this job's model" in again.stdout and "train: seams measured on" in again.stdout
    assert json.loads(card_path.read_text())["seams"] == card["seams"]

    cog = out / "labels.tif"
    export = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "export", str(out / "mosaic.zarr"), "--cog", str(cog)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    import rasterio

    with rasterio.open(cog) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs.to_epsg() == 32633 and src.shape == (192, 192)
