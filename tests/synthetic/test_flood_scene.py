"""The demo's flood: before and after on one grid, and truth files that agree with the labels."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geoseg.config.impact_spec import DEFAULT_BUFFER_M, DEFAULT_MIN_FLOODED_SHARE
from geoseg.synthetic import DEMO_CLASSES, flood_demo_files, generate_demo, make_scene

WATER, BUILDING, ROAD = (DEMO_CLASSES.index(c) for c in ("water", "building", "road"))
SIZES = {"train_size": 256, "survey_size": 1024, "seed": 3}


def read(path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo(out, **SIZES), flood_demo_files(out)


@pytest.fixture(scope="module")
def labels(demo):
    _, scenes, _ = demo
    return read(scenes["pre_event"].labels_tif)[0][0], read(scenes["survey"].labels_tif)[0][0]


def test_pre_event_is_the_survey_grid_without_collar_and_another_flight(demo, labels):
    _, scenes, files = demo
    pre_rgb, pre_transform, pre_crs = read(scenes["pre_event"].scene)
    post_rgb, post_transform, post_crs = read(scenes["survey"].scene)
    truth, truth_transform, truth_crs = read(files.flood_truth)
    assert pre_transform == post_transform == truth_transform and pre_crs == post_crs == truth_crs
    assert pre_rgb.shape == post_rgb.shape and (pre_rgb.max(axis=0) > 0).all()  # no collar
    pre, post = labels
    dry_same = (truth[0] == 0) & (pre == post)
    assert np.abs(pre_rgb[:, dry_same].astype(int) - post_rgb[:, dry_same]).mean() > 3  # other colours and noise


def test_flood_only_turns_ground_to_water_and_leaves_buildings(demo, labels):
    pre, post = labels
    truth = read(demo[2].flood_truth)[0][0]
    collar = post == 255
    same = (truth != 2) & ~collar
    assert np.array_equal(pre[same], post[same])
    flood = truth == 2
    assert 0.02 < flood.mean() < 0.12
    assert (post[flood] == WATER).all() and (pre[flood] != WATER).all()
    assert not (post[flood] == BUILDING).any()
    assert np.array_equal(pre == BUILDING, (post == BUILDING) | collar & (pre == BUILDING))


def test_flood_truth_codes_recompute_from_the_labels(demo, labels):
    pre, post = labels
    with rasterio.open(demo[2].flood_truth) as src:
        assert src.nodata == 255 and src.dtypes == ("uint8",)
        truth = src.read(1)
    expected = np.zeros_like(post)
    expected[(post == WATER) & (pre == WATER)] = 1
    expected[(post == WATER) & (pre != WATER)] = 2
    expected[post == 255] = 255
    assert np.array_equal(truth, expected)
    assert np.array_equal(truth == 255, post == 255) and (truth == 255).any()


def test_flooded_buildings_recompute_from_the_label_polygons(demo):
    _, scenes, files = demo
    pre = gpd.read_file(scenes["pre_event"].labels_gpkg, layer="labels")
    post = gpd.read_file(scenes["survey"].labels_gpkg, layer="labels")
    got = gpd.read_file(files.flooded_buildings, layer="buildings")
    flood = shapely.difference(
        shapely.union_all(post.geometry[post["class"] == "water"].values),
        shapely.union_all(pre.geometry[pre["class"] == "water"].values),
    )
    buildings = post.geometry[post["class"] == "building"].reset_index(drop=True)
    grown = buildings.buffer(DEFAULT_BUFFER_M)
    share = grown.intersection(flood).area / grown.area
    assert got.crs == post.crs and len(got) == len(buildings)
    assert list(got["building_id"]) == list(range(1, len(buildings) + 1))
    assert got.geometry.geom_equals(buildings).all()
    # The union of the post-event water nodes the shared shore lines its own way: equal up to rounding.
    np.testing.assert_allclose(got["flooded_share"], share, atol=1e-3)
    assert got["flooded"].dtype == bool
    clear = (share - DEFAULT_MIN_FLOODED_SHARE).abs().to_numpy() > 1e-3
    assert np.array_equal(got["flooded"].to_numpy()[clear], (share >= DEFAULT_MIN_FLOODED_SHARE).to_numpy()[clear])
    assert got["flooded"].sum() >= 3 and (~got["flooded"]).sum() >= 3


def test_roads_lie_on_road_pixels_of_the_pre_event_labels(demo, labels):
    _, scenes, files = demo
    roads = gpd.read_file(files.roads, layer="roads")
    _, transform, crs = read(scenes["pre_event"].labels_tif)
    assert roads.crs == crs and (roads.geom_type == "LineString").all()
    assert list(roads["road_id"]) == list(range(1, len(roads) + 1))
    assert set(roads["kind"]) == {"main_road", "street"}
    assert roads["name"].str.match(r"^(Main road|Street) \d+$").all()
    points = np.concatenate([shapely.line_interpolate_point(g, np.arange(0.5, g.length, 2.0)) for g in roads.geometry])
    cols, rows = ~transform * (shapely.get_x(points), shapely.get_y(points))
    size = labels[0].shape[0]
    assert (cols >= 0).all() and (cols <= size).all() and (rows >= 0).all() and (rows <= size).all()
    rows, cols = np.clip(rows.astype(int), 0, size - 1), np.clip(cols.astype(int), 0, size - 1)
    assert (labels[0][rows, cols] == ROAD).mean() >= 0.95


def test_zones_cover_the_survey_exactly(demo):
    out, scenes, files = demo
    assert files.zones == out / "zones.gpkg"
    zones = gpd.read_file(files.zones, layer="zones")
    assert zones.crs.to_epsg() == 4326 and len(zones) == 6 and zones["name"].nunique() == 6
    assert sorted(zones["zone_id"]) == list(range(1, 7))
    with rasterio.open(scenes["survey"].scene) as src:
        bounds, crs = src.bounds, src.crs
    scene = shapely.box(*bounds)
    union = shapely.union_all(zones.to_crs(crs).geometry.values)
    assert abs(union.area - scene.area) / scene.area < 1e-3
    assert union.symmetric_difference(scene).area / scene.area < 1e-3


def test_same_arguments_same_rasters_and_tables(demo, tmp_path):
    _, scenes, files = demo
    again = generate_demo(tmp_path, **SIZES)
    again_files = flood_demo_files(tmp_path)
    for name in ("train", "survey", "pre_event"):
        for kind in ("scene", "labels_tif"):
            assert np.array_equal(read(getattr(scenes[name], kind))[0], read(getattr(again[name], kind))[0])
        a = gpd.read_file(scenes[name].labels_gpkg)
        b = gpd.read_file(again[name].labels_gpkg)
        assert a.equals(b), name
    assert np.array_equal(read(files.flood_truth)[0], read(again_files.flood_truth)[0])
    for name in ("roads", "zones", "flooded_buildings"):
        a, b = gpd.read_file(getattr(files, name)), gpd.read_file(getattr(again_files, name))
        assert a.equals(b), name


def test_the_training_scene_is_flooded_too(demo, tmp_path):
    """A flood survey's model learns from flood imagery: the training scene is its seed's layout plus a flood."""
    _, scenes, _ = demo
    flooded = make_scene(tmp_path / "a", size=SIZES["train_size"], seed=SIZES["seed"], flood=True)
    assert np.array_equal(read(scenes["train"].labels_tif)[0], read(flooded.labels_tif)[0])
    assert np.array_equal(read(scenes["train"].scene)[0], read(flooded.scene)[0])


def test_flood_leaves_the_rest_of_the_layout_alone(tmp_path):
    with_flood = make_scene(tmp_path / "a", size=512, seed=11, flood=True)
    without = make_scene(tmp_path / "b", size=512, seed=11)
    a = gpd.read_file(with_flood.labels_gpkg)
    b = gpd.read_file(without.labels_gpkg)
    # The flood polygons are water burned just before the buildings; everything else is the same, in order.
    assert len(a) > len(b)
    n_before = int((b["class"] != "building").sum())
    n_flood = len(a) - len(b)
    kept = a.drop(index=range(n_before, n_before + n_flood)).reset_index(drop=True)
    assert kept.equals(b)
    assert (a["class"].iloc[n_before : n_before + n_flood] == "water").all()
