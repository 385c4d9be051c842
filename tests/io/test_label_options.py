"""Label options: class from label_map / label_class, lines and points given a width, every problem at once."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import LineString, Point, box

from geoseg.errors import InputVectorError
from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from tests.factories import ORIGIN, UTM33

CLASSES = ["background", "building", "road"]


def scene_of(make_geotiff):
    """150 x 130 px of 0.5 m in UTM 33N: (500000, 4999925) to (500065, 5000000)."""
    return inspect_scene(make_geotiff("scene.tif", np.full((3, 150, 130), 9, np.uint8)))


def write(tmp_path, geoms, crs=UTM33, **columns):
    path = tmp_path / "labels.geojson"
    gpd.GeoDataFrame(columns, geometry=geoms, crs=crs).to_file(path, driver="GeoJSON")
    return path


def problem_lines(**kwargs) -> list[str]:
    with pytest.raises(InputVectorError) as info:
        load_labels(**kwargs)
    assert info.value.problems == str(info.value).splitlines()
    assert "np." not in str(info.value)
    return info.value.problems


def near(dx=0.0, size=5.0):
    return box(ORIGIN.c + dx, ORIGIN.f - size, ORIGIN.c + dx + size, ORIGIN.f)


def test_label_map_sends_several_values_to_one_class_and_passes_others_through(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    labels = write(tmp_path, [near(0), near(10), near(20), near(30)], kind=["house", "garage", "road", "shed"])
    frame = load_labels(
        labels,
        scene=scene,
        classes=CLASSES,
        field="kind",
        label_map={"house": "building", "garage": "building"},
        ignore=["shed"],
    )
    assert frame.class_id.tolist() == [1, 1, 2]


def test_label_map_keys_compare_as_text_and_yaml_booleans_match_their_words(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    values = ["yes", "Yes", "no", "true"]
    labels = write(tmp_path, [near(10 * i) for i in range(4)], building=values)
    # YAML reads `yes: building` as {True: building}; the schema keeps the key as the text "true".
    frame = load_labels(
        labels, scene=scene, classes=CLASSES, field="building", label_map={"true": "building"}, ignore=["no"]
    )
    assert frame.class_id.tolist() == [1, 1, 1]
    numbers = write(tmp_path, [near(0), near(10)], lanes=[1.0, 2.0])  # GeoJSON numbers, read as floats
    frame = load_labels(numbers, scene=scene, classes=CLASSES, field="lanes", label_map={"1": "road", "2": "road"})
    assert frame.class_id.tolist() == [2, 2]


def test_label_class_names_every_feature_without_a_class_column(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    labels = write(tmp_path, [near(0), near(10)], ID=[724, 725])
    frame = load_labels(labels, scene=scene, classes=CLASSES, field="class", label_class="building")
    assert frame.class_id.tolist() == [1, 1]


def test_every_problem_of_one_label_file_at_once(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    far = LineString([(0, 0), (10, 10)])
    labels = write(tmp_path, [far, far, Point(5, 5), box(0, 0, 10, 10)], kind=["road", "road", "road", "lava"])
    lines = problem_lines(path=labels, scene=scene, classes=CLASSES, field="kind", source="train.scenes[0].labels")
    where = f"{labels}: train.scenes[0].labels"
    assert lines == [
        f"{where}: class names ['lava'] are not in the job's classes ['background', 'building', 'road']; "
        "add them to `classes:` or `train.ignore_classes:`, map them with label_map, or fix the labels",
        f"{where}: 2 LineString feature(s) of class 'road' have no area; give them a width with "
        "train.buffer_m: {road: 3.0} (half-width in metres)",
        f"{where}: 1 Point feature(s) of class 'road' have no area; give them a width with "
        "train.buffer_m: {road: 3.0} (half-width in metres)",
        f"{where}: no label polygon overlaps the scene scene.tif: labels bounds (0.0, 0.0, 10.0, 10.0) in "
        "EPSG:32633, scene bounds (500000.0, 4999925.0, 500065.0, 5000000.0) in EPSG:32633 (west, south, east, "
        "north); check that the labels belong to this scene and were saved with their true CRS",
    ]
    lines = problem_lines(path=labels, scene=scene, classes=CLASSES, field="class")
    assert len(lines) == 2 and "no attribute 'class'" in lines[0] and "label_class" in lines[0]
    assert "no label polygon overlaps" in lines[1]


def test_no_overlap_gives_degrees_to_six_decimals_and_the_scene_in_both_crs(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    labels = write(tmp_path, [box(10.0, 45.0, 10.001, 45.001)], crs="EPSG:4326", kind=["road"])
    (line,) = problem_lines(path=labels, scene=scene, classes=CLASSES, field="kind")
    assert "labels bounds (10.000000, 45.000000, 10.001000, 45.001000) in EPSG:4326" in line
    assert "scene bounds (500000.0, 4999925.0, 500065.0, 5000000.0) in EPSG:32633, i.e. (" in line
    degrees = line.split("i.e. (")[1].split(")")[0].split(", ")
    assert all(len(v.split(".")[1]) == 6 for v in degrees) and float(degrees[0]) == pytest.approx(15.0, abs=1e-3)


def test_lines_and_points_in_metres_burn_length_times_width(make_geotiff, tmp_path):
    scene = scene_of(make_geotiff)
    x0, y0 = ORIGIN.c, ORIGIN.f
    road = LineString([(x0 + 10, y0 - 20), (x0 + 50, y0 - 20)])  # 40 m long, 20 m from the top
    well = Point(x0 + 30, y0 - 55)
    labels = write(tmp_path, [road, well], kind=["road", "building"])
    frame = load_labels(labels, scene=scene, classes=CLASSES, field="kind", buffer_m={"road": 2.0, "building": 8.0})
    with rasterio.open(rasterize_labels(frame, scene, tmp_path / "l.tif", block=64)) as src:
        raster = src.read(1)
    pixel = 0.25  # m² of a 0.5 m pixel
    # A buffered segment is a 2r-wide band plus two half-discs: L*2r + πr² (polygonal circles lose < 0.2%).
    assert (raster == 2).sum() * pixel == pytest.approx(40 * 4 + np.pi * 4, rel=0.02)
    assert (raster == 1).sum() * pixel == pytest.approx(np.pi * 64, rel=0.02)
