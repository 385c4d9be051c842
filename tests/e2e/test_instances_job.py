"""Instance jobs end to end: validation of instance settings, the instance outputs. (The Mask R-CNN models
themselves: tests/models/test_models.py.)"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import yaml
from shapely.geometry import box

from geoseg.cli import main
from tests.factories import ORIGIN, REPO, UTM33, to_map, write_geotiff


def _building_scene(folder, size: int = 256, seed: int = 0):
    """Grey rectangles (buildings) on green, with roads the labels carry but the job ignores."""
    rng = np.random.default_rng(seed)
    shapes = [("road", box(0, 120, size, 132))]
    for row in range(10, size - 40, 46):
        for col in range(10, size - 40, 46):
            if 90 < row < 140:  # the road
                continue
            h, w = rng.integers(14, 34, 2)
            shapes.append(("building", box(col, row, col + w, row + h)))
    image = np.zeros((3, size, size), np.float32) + np.array([60, 130, 60], np.float32)[:, None, None]
    for cls, geom in shapes:
        c0, r0, c1, r1 = (int(v) for v in geom.bounds)
        image[:, r0:r1, c0:c1] = np.array([200, 200, 205] if cls == "building" else [90, 90, 90])[:, None, None]
    image += rng.normal(0, 5, image.shape)
    scene = write_geotiff(folder / "scene.tif", np.clip(image, 1, 255).astype(np.uint8), nodata=0)
    labels = gpd.GeoDataFrame({"class": [c for c, _ in shapes]}, geometry=[to_map(g) for _, g in shapes], crs=UTM33)
    labels.to_file(folder / "labels.gpkg", layer="labels", driver="GPKG")
    return scene, folder / "labels.gpkg"


def _job(folder, scene, labels, **overrides) -> str:
    job = {
        "name": "houses",
        "output_dir": str(folder / "out"),
        "classes": ["background", "building"],
        "model": {"arch": "maskrcnn_resnet18_fpn"},
        "tiling": {"tile_size": 128, "halo": 32},
        "train": {
            "scenes": [{"image": str(scene), "labels": str(labels)}],
            "ignore_classes": ["road"],
            "tile_size": 96,
            "batch_size": 2,
            "epochs": 1,
            "steps_per_epoch": 2,
            "validation_fraction": 0.25,
        },
        "predict": {"scene": str(scene), "batch_size": 2},
        # An untrained model is unsure of everything: a low threshold still gives it detections to merge.
        "instances": {"score_threshold": 0.05},
        "evaluate": {"labels": str(labels)},
        "runtime": {"workers": 1, "cpus_per_worker": 1},
    }
    job.update(overrides)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_instance_settings_are_checked(tmp_path, capsys):
    scene, labels = _building_scene(tmp_path)
    assert main(["validate", _job(tmp_path, scene, labels, tiling={"tile_size": 128, "halo": "auto"})]) == 2
    assert "tiling.halo: 'auto'" in capsys.readouterr().err
    # The labels also hold roads: without ignore_classes that is an unknown class, and the message says what to do.
    path = _job(tmp_path, scene, labels)
    with open(path) as file:
        spec = yaml.safe_load(file)
    spec["train"].pop("ignore_classes")
    with open(path, "w") as file:
        file.write(yaml.safe_dump(spec))
    assert main(["validate", path]) == 2
    assert "train.ignore_classes" in capsys.readouterr().err


@pytest.mark.long  # 40 s on 2 cores: CI's test-long runs it
def test_instance_job_end_to_end(tmp_path, capsys):
    import pandas as pd
    import zarr

    scene, labels = _building_scene(tmp_path)
    path = _job(tmp_path, scene, labels, vectorize={"format": "parquet"})
    assert main(["run", path]) == 0
    out = tmp_path / "out"
    table = pd.read_parquet(out / "instances.parquet")
    group = zarr.open_group(str(out / "mosaic.zarr"), mode="r")
    ids, classes = group["instances"][:], group["labels"][:]
    assert ids.dtype == np.uint32 and group["instances"].attrs["grid_mapping"] == "spatial_ref"
    # The table lists exactly the ids in the raster, 1..N, with their pixel counts; labels hold their class.
    assert list(table["id"]) == list(range(1, len(table) + 1))
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    assert list(present) == list(table["id"]) and list(counts) == list(table["area_px"])
    assert set(np.unique(classes[ids > 0])) <= {1} and not classes[ids == 0].any()
    assert (table["score"] >= 0.05).all()
    polygons = gpd.read_parquet(out / "vectors" / "polygons.parquet")
    assert polygons.crs.to_epsg() == 32633
    assert list(polygons["id"]) == list(table["id"]) and polygons.is_valid.all()
    assert np.allclose(polygons.area, table["area_px"] * abs(ORIGIN.a * ORIGIN.e))
    report = json.loads((out / "metrics.json").read_text())["instances"]
    assert report["count_truth"] == 20 and report["count_pred"] == len(table)
    assert report["duplicates"] == 0
    assert {"f1", "precision", "recall", "ap", "ap50", "splits", "merged"} <= set(report)
    # Raw detections stay for `geoseg bench merge`; a rerun reuses them and the finished mosaic.
    assert len(list((out / "detections").glob("tile_*.npz"))) == 16  # cores of 64 px
    # Merged row of tiles by row of tiles, the mosaic holds what merging the whole scene at once gives.
    from geoseg.infer.merge import merge_detections, resolve_overlaps, tile_windows
    from geoseg.io.masks import load_masks
    from geoseg.tiling import plan_tiles

    tiles = plan_tiles(256, 256, tile_size=128, halo=32)
    raw = [d for tile in tiles for d in load_masks(out / "detections" / f"tile_{tile.index:06d}.npz")]
    merged = merge_detections(raw, windows=tile_windows(tiles, 256, 256), scene_shape=(256, 256))
    whole = resolve_overlaps(merged, min_area=16)
    expected = np.zeros((256, 256), np.uint32)
    for number, instance in enumerate(whole, start=1):
        expected[instance.row : instance.bbox[2], instance.col : instance.bbox[3]][instance.mask] = number
    assert len(whole) == len(table) > 0 and np.array_equal(ids, expected)
    assert main(["predict", path]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_building_job_on_the_demo_survey(tmp_path):
    """The README's building job as it is (about 25 minutes on 2 cores): on the demo survey scene, with
    tiles overlapping by more than the largest building, no building comes out twice, none is merged
    with a neighbour, and none is split by the tiling."""
    from geoseg.synthetic import generate_demo

    root = REPO
    demo = root / "data" / "demo"
    if not (demo / "survey" / "scene.tif").exists():
        generate_demo(demo)
    spec = yaml.safe_load((root / "jobs" / "building_instances.yaml").read_text())
    spec["output_dir"] = str(tmp_path / "out")
    for section in (spec["train"]["scenes"][0], spec["predict"], spec["evaluate"]):
        for field in ("image", "labels", "scene"):
            if field in section:
                section[field] = str((root / "jobs" / section[field]).resolve())
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path)]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["instances"]
    assert report["duplicates"] == 0 and report["merged"] == 0
    assert report["f1"] > 0.95
    # Splits: only those the model made itself (one tile's own detections already hold both pieces,
    # e.g. an L-shaped building as body and wing); none made by cutting the scene into tiles.
    from geoseg.bench.merge import bench_merge

    merged = bench_merge(path, log=lambda message: None)["geoseg"]
    assert merged["splits"] == merged["splits_by_the_model"] == report["splits"]
