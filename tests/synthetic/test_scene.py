"""The demo scene generator: deterministic, georeferenced, labels that agree with pixels."""

import hashlib

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from geoseg.evaluate.colour_baseline import colour_baseline
from geoseg.synthetic import DEMO_CLASSES, make_scene


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("a"), size=640, seed=3, nodata_collar=True)


def test_same_seed_same_bytes_other_seed_other_scene(scene, tmp_path):
    again = make_scene(tmp_path / "b", size=640, seed=3, nodata_collar=True)
    other = make_scene(tmp_path / "c", size=512, seed=4, nodata_collar=True)
    for name in ("scene", "labels_gpkg", "labels_tif"):
        assert digest(getattr(scene, name)) == digest(getattr(again, name)), name
    assert digest(scene.scene) != digest(other.scene)


def test_scene_is_a_tiled_compressed_utm_geotiff(scene):
    with rasterio.open(scene.scene) as src:
        assert src.crs.to_epsg() == 32633
        assert (src.transform.a, src.transform.e) == (0.5, -0.5)
        assert src.count == 3 and src.dtypes == ("uint8",) * 3 and src.nodata == 0
        assert src.profile["tiled"] and src.profile["compress"].lower() == "deflate"
        rgb, valid = src.read(), src.dataset_mask() > 0
    with rasterio.open(scene.labels_tif) as lab:
        assert lab.crs == src.crs and lab.transform == src.transform
        labels = lab.read(1)
    assert 0.01 < (~valid).mean() < 0.2  # the no-data collar
    assert (labels[~valid] == 255).all() and (labels[valid] < 255).all()
    assert (rgb[:, valid].max(axis=0) > 0).all()  # a valid pixel is never all-zero (nodata)
    assert set(np.unique(labels[valid])) == set(range(len(DEMO_CLASSES)))


def test_polygons_burned_in_file_order_equal_the_label_raster(scene):
    frame = gpd.read_file(scene.labels_gpkg, layer="labels")
    assert set(frame["class"]) <= set(DEMO_CLASSES[1:])
    assert frame.geometry.is_valid.all()
    buildings = frame[frame["class"] == "building"]
    assert len(buildings) > 10 and (buildings.geom_type == "Polygon").all()  # one polygon per building
    with rasterio.open(scene.labels_tif) as lab:
        labels, transform = lab.read(1), lab.transform
    index = {name: i for i, name in enumerate(DEMO_CLASSES)}
    burned = rasterize(
        [(g, index[c]) for g, c in zip(frame.geometry, frame["class"], strict=True)],
        out_shape=labels.shape,
        transform=transform,
        fill=0,
        dtype="uint8",
    )
    valid = labels != 255
    assert (burned[valid] == labels[valid]).all()


def test_colour_baseline_scores_a_real_but_imperfect_miou(scene, tmp_path):
    train = make_scene(tmp_path / "t", size=512, seed=5)
    scores = colour_baseline(
        train.scene, train.labels_tif, scene.scene, scene.labels_tif, DEMO_CLASSES, sample_pixels=20_000
    )
    assert 0.1 < scores["mean_iou"] < 0.9
    with rasterio.open(scene.labels_tif) as lab:
        assert scores["pixels"] == int((lab.read(1) != 255).sum())
