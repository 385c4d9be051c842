"""Several label sources per scene: each its own options, later ones painting over earlier ones, problems at once."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from numpy.testing import assert_array_equal
from shapely.geometry import LineString, box

from geoseg.cli import main
from geoseg.config.load import read_job_file, rebase_job_paths
from geoseg.config.train_spec import LabelSource, LabelSources
from geoseg.errors import InputVectorError, JobConfigError
from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.job.runrecord import input_fingerprints
from tests.factories import UTM33, tiny_job, to_map, write_geotiff

CLASSES = ["background", "road", "building"]
ROAD = (10, 10, 40, 30)  # pixel boxes (x0, y0, x1, y1): numpy [y0:y1, x0:x1]
HOUSE = (30, 20, 60, 50)


def scene_of(folder: Path):
    """80 x 100 px of 0.5 m in UTM 33N, at the factories' ORIGIN."""
    return inspect_scene(write_geotiff(folder / "scene.tif", np.full((3, 80, 100), 9, np.uint8)))


def layer(path: Path, pixel_boxes, **columns) -> Path:
    gpd.GeoDataFrame(columns, geometry=[to_map(box(*b)) for b in pixel_boxes], crs=UTM33).to_file(path)
    return path


def painted(*boxes_and_classes) -> np.ndarray:
    """The expected target, computed independently: numpy slices painted in order."""
    expected = np.zeros((80, 100), np.uint8)
    for (x0, y0, x1, y1), class_id in boxes_and_classes:
        expected[y0:y1, x0:x1] = class_id
    return expected


def burned(labels, scene, tmp_path) -> np.ndarray:
    with rasterio.open(rasterize_labels(labels, scene, tmp_path / "target.tif", block=32)) as src:
        return src.read(1)


@pytest.fixture
def two_layers(tmp_path):
    roads = layer(tmp_path / "roads.geojson", [ROAD], highway=["primary"])  # no class column: label_class
    buildings = layer(tmp_path / "buildings.gpkg", [HOUSE], building=["yes"])  # OSM: building=yes
    return (
        LabelSource(path=roads, label_class="road"),
        LabelSource(path=buildings, label_field="building", label_map={"yes": "building"}),
    )


def test_each_source_names_its_classes_and_later_sources_paint_over_earlier_ones(tmp_path, two_layers):
    scene = scene_of(tmp_path)
    roads, buildings = two_layers
    labels = load_labels(LabelSources([roads, buildings]), scene=scene, classes=CLASSES, field="class")
    assert labels.class_id.tolist() == [1, 2]
    assert_array_equal(burned(labels, scene, tmp_path), painted((ROAD, 1), (HOUSE, 2)))
    labels = load_labels(LabelSources([buildings, roads]), scene=scene, classes=CLASSES, field="class")
    assert_array_equal(burned(labels, scene, tmp_path), painted((HOUSE, 2), (ROAD, 1)))


def test_every_problem_of_every_source_at_once(tmp_path):
    scene = scene_of(tmp_path)
    line = LineString([to_map(box(*ROAD)).centroid, to_map(box(*HOUSE)).centroid])
    roads = tmp_path / "roads.geojson"
    gpd.GeoDataFrame({"highway": ["primary"]}, geometry=[line], crs=UTM33).to_file(roads)
    buildings = layer(tmp_path / "buildings.gpkg", [HOUSE], building=["yes"])
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": ["road"]}, geometry=[box(0, 0, 5, 5)], crs=UTM33).to_file(far)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("xmin,ymin,xmax,ymax,label\n5,5,2,9,road\n")
    sources = LabelSources(
        [
            LabelSource(path=roads, label_class="road"),
            LabelSource(path=buildings, label_field="kind"),
            LabelSource(path=tmp_path / "missing.gpkg"),
            LabelSource(path=far),
            LabelSource(path=boxes, box_coords="pixel"),
        ]
    )
    with pytest.raises(InputVectorError) as info:
        load_labels(sources, scene=scene, classes=CLASSES, field="class", source="train.scenes[0].labels")
    where = [f"{source.path}: train.scenes[0].labels[{i}]" for i, source in enumerate(sources)]
    assert info.value.problems == [
        f"{where[0]}: 1 LineString feature(s) of class 'road' have no area; give them a width with "
        "train.buffer_m: {road: 3.0} (half-width in metres)",
        f"{where[1]}: no attribute 'kind' (has ['building']); set label_field (train.label_field, or the scene's "
        "or source's) to the column holding class names, or label_class: <name> on the scene (or source) when "
        "every feature is one class",
        f"{where[2]}: file not found; check the path in the job file",
        f"{where[3]}: no label polygon overlaps the scene scene.tif: labels bounds (0.0, 0.0, 5.0, 5.0) in "
        "EPSG:32633, scene bounds (500000.0, 4999960.0, 500050.0, 5000000.0) in EPSG:32633 (west, south, east, "
        "north); check that the labels belong to this scene and were saved with their true CRS",
        f"{where[4]}: 1 box(es) with xmax <= xmin or ymax <= ymin (first: line 2: 5, 5, 2, 9); give each box its "
        "low edges in xmin, ymin and its high edges in xmax, ymax",
    ]
    assert str(info.value).splitlines() == info.value.problems


def job_with_sources(tmp_path, sources: list[dict], **scene_options) -> Path:
    scene = scene_of(tmp_path)
    job = tiny_job(tmp_path, scene.path, tmp_path / "unused.gpkg")
    data = yaml.safe_load(job.read_text())
    data["classes"] = CLASSES
    data["stages"] = ["train"]
    data["train"]["scenes"] = [{"image": "scene.tif", "labels": sources, **scene_options}]
    job.write_text(yaml.safe_dump(data, sort_keys=False))
    return job


def test_validate_lists_the_problems_of_every_source_one_line_each_exit_2(tmp_path, capsys):
    layer(tmp_path / "roads.geojson", [ROAD], highway=["primary"])
    layer(tmp_path / "buildings.gpkg", [HOUSE], building=["shed"])
    job = job_with_sources(
        tmp_path,
        [
            {"path": "roads.geojson", "label_field": "highway", "label_map": {"primary": "road"}},
            {"path": "buildings.gpkg", "label_field": "building", "label_map": {"yes": "building"}},
            {"path": "trees.csv", "box_coords": "pixel"},
        ],
    )
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"geoseg: error: {tmp_path / 'buildings.gpkg'}: train.scenes[0].labels[1]: class names ['shed'] are not in "
        "the job's classes ['background', 'road', 'building']; add them to `classes:` or `train.ignore_classes:`, "
        "map them with label_map, or fix the labels",
        f"geoseg: error: {tmp_path / 'trees.csv'}: train.scenes[0].labels[2]: file not found; check the path in the "
        "job file",
    ]


def test_paths_of_sources_are_relative_to_the_job_file_here_and_on_a_cluster(tmp_path, two_layers):
    job = job_with_sources(
        tmp_path,
        [{"path": "roads.geojson", "label_class": "road"}, {"path": "s3://bucket/b.gpkg", "label_field": "b"}],
    )
    spec = read_job_file(job).train
    sources = spec.scenes[0].labels
    assert isinstance(sources, LabelSources) and sources.name == "roads.geojson + b.gpkg"
    assert [str(s.path) for s in sources] == [str(tmp_path / "roads.geojson"), "s3://bucket/b.gpkg"]
    rebased = rebase_job_paths(yaml.safe_load(job.read_text()), "/cluster/jobs")
    assert [s["path"] for s in rebased["train"]["scenes"][0]["labels"]] == [
        "/cluster/jobs/roads.geojson",
        "s3://bucket/b.gpkg",
    ]
    assert spec.label_namings() == [
        ("train.scenes[0].labels[0]", {}, "road"),
        ("train.scenes[0].labels[1]", {}, None),
    ]


def test_the_run_record_lists_every_source(tmp_path, two_layers):
    job = job_with_sources(
        tmp_path,
        [{"path": "roads.geojson", "label_class": "road"}, {"path": "buildings.gpkg", "label_field": "building"}],
    )
    inputs = input_fingerprints(read_job_file(job), ["train"])
    assert [(i["role"], Path(i["path"]).name) for i in inputs] == [
        ("train.scenes[0].image", "scene.tif"),
        ("train.scenes[0].labels[0]", "roads.geojson"),
        ("train.scenes[0].labels[1]", "buildings.gpkg"),
    ]
    assert all(i["size"] > 0 for i in inputs)


def config_problems(job: Path) -> list[str]:
    with pytest.raises(JobConfigError) as info:
        read_job_file(job)
    return info.value.problems


def test_source_options_are_checked_where_they_are_written(tmp_path):
    job = job_with_sources(
        tmp_path,
        [
            {"path": "a.gpkg", "colour": "red"},
            {"label_field": "b"},
            {"path": "t.csv"},
            {"path": "x.tif", "label_class": "road"},
        ],
    )
    assert config_problems(job) == [
        f"{job}: train.scenes.0.labels.0.colour: unknown key; remove it or use one of: label_field, label_map, "
        "label_class, box_coords, path",
        f"{job}: train.scenes.0.labels.1.path: required field is missing",
        f"{job}: train.scenes.0.labels.2: t.csv is a box table: add box_coords: pixel (xmin..ymax in columns and "
        "rows of the image) or box_coords: map (in the image's CRS)",
        f"{job}: train.scenes.0.labels.3: x.tif is a label raster: its pixel values name classes through label_map "
        "or its category names; remove label_field and label_class",
    ]
    job = job_with_sources(tmp_path, [{"path": "a.gpkg"}], label_map={"a": "road"})
    assert config_problems(job) == [
        f"{job}: train.scenes.0: labels is a list of sources: give label_map, label_class and box_coords on each "
        "source (a scene's label_field is the default of its sources)"
    ]
