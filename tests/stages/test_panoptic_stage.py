"""The panoptic stage in a job: an instance mosaic's things over the predicted stuff, scored with PQ."""

import json

import numpy as np
import pytest
import yaml
from rasterio.features import rasterize
from shapely.geometry import box

from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.mosaic import open_mosaic
from geoseg.io.panoptic import PANOPTIC_CLASS, PANOPTIC_ID
from geoseg.io.raster import inspect_scene
from tests.factories import TINY_UNET, UTM33, scene_mosaic, tiny_scene, to_map, unet_checkpoint

CLASSES = ["background", "water", "vegetation"]


# Four fields apart from the water strip (rows 86-106) and from each other, two across chunk seams.
FIELDS = [box(20, 20, 44, 44), box(140, 52, 164, 76), box(120, 130, 150, 160), box(30, 150, 70, 180)]


def _labels(folder):
    """Reference polygons: the water strip and four vegetation fields."""
    import geopandas as gpd

    shapes = [("water", box(0, 86.4, 192, 105.6)), *(("vegetation", field) for field in FIELDS)]
    frame = gpd.GeoDataFrame({"class": [c for c, _ in shapes]}, geometry=[to_map(g) for _, g in shapes], crs=UTM33)
    frame.to_file(folder / "fields.gpkg", driver="GPKG")
    return folder / "fields.gpkg"


def _instance_mosaic(folder, scene, labels):
    """The vegetation fields of the labels as a perfect instance job's output (ids 1..N, score 0.9)."""
    import geopandas as gpd

    info = inspect_scene(scene)
    squares = gpd.read_file(labels).query("`class` == 'vegetation'").reset_index(drop=True)
    things = scene_mosaic(folder / "mosaic.zarr", scene, 64, classes=("background", "vegetation"))
    shapes = [(geom, i + 1) for i, geom in enumerate(squares.geometry)]
    ids = rasterize(shapes, out_shape=(info.height, info.width), transform=info.transform, dtype="uint32")
    create_instance_array(things)[:] = ids
    boxes, areas = [], []
    for i in range(1, len(squares) + 1):
        rows, cols = np.nonzero(ids == i)
        boxes.append((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
        areas.append(len(rows))
    n = len(squares)
    table = table_from_columns(range(1, n + 1), [1] * n, ["background", "vegetation"], [0.9] * n, boxes, areas, 0.25)
    write_instance_table(table, folder / "instances.parquet")
    return folder / "mosaic.zarr", ids


@pytest.mark.parametrize("workers", [2])  # the bands as Ray tasks
def test_a_panoptic_job_writes_things_over_stuff_and_scores_it(tmp_path, ray_local, workers):
    from geoseg.job import run_job

    scene, _ = tiny_scene(tmp_path)
    labels = _labels(tmp_path)
    things, ids = _instance_mosaic(tmp_path / "instances", scene, labels)
    checkpoint = unet_checkpoint(tmp_path / "ckpt", scene, classes=tuple(CLASSES), **TINY_UNET)
    job = {
        "name": "panoptic",
        "output_dir": str(tmp_path / "out"),
        "classes": CLASSES,
        "stages": ["predict", "panoptic", "evaluate"],
        "tiling": {"tile_size": 96, "halo": 16},
        "model": {"arch": "unet", "options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
        "predict": {"scene": str(scene), "checkpoint": str(checkpoint)},
        "panoptic": {"things": str(things)},
        "evaluate": {"labels": str(labels)},
        "runtime": {"workers": workers, "cpus_per_worker": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    lines = []
    summary = run_job(path, log=lines.append)
    assert [name for name in summary if name != "run"] == ["predict", "panoptic", "evaluate"]
    assert [f.rsplit("/", 1)[1] for f in summary["panoptic"]["files"]] == [PANOPTIC_CLASS, PANOPTIC_ID]
    mosaic = open_mosaic(tmp_path / "out" / "mosaic.zarr")
    panoptic_ids, classes = mosaic.array(PANOPTIC_ID)[:], mosaic.array(PANOPTIC_CLASS)[:]
    np.testing.assert_array_equal(panoptic_ids, ids)  # every kept instance, whole, with its id
    assert (classes[ids > 0] == 2).all()
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())["panoptic"]
    assert report["thing_classes"] == ["vegetation"] and report["splits"] == 0 and report["duplicates"] == 0
    assert report["per_class"]["vegetation"]["pq"] == pytest.approx(1.0)  # the things are the reference's own
    assert report["per_class"]["vegetation"]["tp"] == int(ids.max())
    assert any(line.startswith("evaluate: panoptic quality") for line in lines)
