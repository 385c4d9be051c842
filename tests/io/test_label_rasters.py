"""Label rasters as training labels: a value -> class table (label_map or the raster's category names), any grid."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from numpy.testing import assert_array_equal
from rasterio.warp import Resampling, reproject
from shapely.geometry import box

from geoseg.cli import main
from geoseg.config.train_spec import LabelSource, LabelSources
from geoseg.errors import InputVectorError
from geoseg.io.label_rasters import raster_category_names
from geoseg.io.labels import IGNORE, label_rasters, load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from tests.factories import ORIGIN, UTM33, tiny_job, to_map, write_geotiff

CLASSES = ["background", "water", "building"]
H, W = 64, 80


@pytest.fixture
def scene(tmp_path):
    """64 x 80 px of 0.5 m in UTM 33N, at the factories' ORIGIN."""
    return inspect_scene(write_geotiff(tmp_path / "scene.tif", np.full((3, H, W), 9, np.uint8)))


def values_on_the_grid(choices, seed=0, shape=(H, W), dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(choices), size=shape).astype(dtype)


def target(labels, scene, tmp_path, **options) -> np.ndarray:
    with rasterio.open(rasterize_labels(labels, scene, tmp_path / "target.tif", block=32, **options)) as src:
        return src.read(1)


def lut(table: dict[int, int], values: np.ndarray) -> np.ndarray:
    """The expected target, computed independently: a numpy lookup table indexed by the raster values."""
    lookup = np.full(int(values.max()) + 1, -1, np.int64)
    for value, paint in table.items():
        lookup[value] = paint
    return lookup[values]


def write_categories(raster: Path, names: list[str], table: dict[int, str] | None = None) -> None:
    """The ``.aux.xml`` GDAL writes for SetCategoryNames / SetDefaultRAT (same elements, checked with gdalinfo)."""
    rows = "".join(
        f'<Row index="{i}"><F>{value}</F><F>{name}</F></Row>' for i, (value, name) in enumerate((table or {}).items())
    )
    rat = (
        '<GDALRasterAttributeTable tableType="thematic">'
        '<FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>'
        '<FieldDefn index="1"><Name>Class</Name><Type>2</Type><Usage>2</Usage></FieldDefn>'
        f"{rows}</GDALRasterAttributeTable>"
        if table
        else ""
    )
    categories = "".join(f"<Category>{name}</Category>" for name in names)
    Path(f"{raster}.aux.xml").write_text(
        f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>{rat}'
        "</PAMRasterBand></PAMDataset>"
    )


def test_label_map_names_values_nodata_is_ignored_and_ignored_classes_leave_pixels_unpainted(scene, tmp_path):
    values = values_on_the_grid([1, 2, 3, 7])
    raster = write_geotiff(tmp_path / "landcover.tif", values, nodata=7, block=32)
    labels = load_labels(
        raster,
        scene=scene,
        classes=CLASSES,
        field="class",
        label_map={"1": "water", "2": "building", "3": "shed"},
        ignore=["shed"],
    )
    assert len(labels) == 0 and len(label_rasters(labels)) == 1
    # shed (an ignored class) paints nothing: the background shows; nodata (7) is no label known
    assert_array_equal(target(labels, scene, tmp_path), lut({1: 1, 2: 2, 3: 0, 7: IGNORE}, values))


def test_a_raster_paints_in_its_place_among_the_sources(scene, tmp_path):
    values = values_on_the_grid([1, 3])
    raster = write_geotiff(tmp_path / "water.tif", values, block=32)
    house = tmp_path / "house.geojson"
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[to_map(box(10, 5, 50, 40))], crs=UTM33).to_file(house)
    water = LabelSource(path=raster, label_map={"1": "water", "3": "shed"})
    options = {"scene": scene, "classes": CLASSES, "field": "class", "ignore": ["shed"]}
    below = lut({1: 1, 3: 0}, values)
    over = below.copy()
    over[5:40, 10:50] = 2
    labels = load_labels(LabelSources([water, LabelSource(path=house)]), **options)
    assert_array_equal(target(labels, scene, tmp_path), over)
    under = np.zeros((H, W), np.int64)
    under[5:40, 10:50] = 2
    under[values == 1] = 1  # the raster paints over the house where it names a class, not where it is 'shed'
    labels = load_labels(LabelSources([LabelSource(path=house), water]), **options)
    assert_array_equal(target(labels, scene, tmp_path), under)


def test_category_names_and_attribute_tables_name_values_and_label_map_renames_them(scene, tmp_path):
    values = values_on_the_grid([0, 1, 2, 3])
    raster = write_geotiff(tmp_path / "classes.tif", values, block=32)
    write_categories(raster, ["", "Water", "Building"], table={3: "Lake"})
    assert raster_category_names(raster) == {1.0: "Water", 2.0: "Building", 3.0: "Lake"}
    labels = load_labels(
        raster,
        scene=scene,
        classes=CLASSES,
        field="class",
        label_map={"0": "background", "Water": "water", "Building": "building", "Lake": "water"},
    )
    assert_array_equal(target(labels, scene, tmp_path), lut({0: 0, 1: 1, 2: 2, 3: 1}, values))


def problem_lines(raster, scene, **options) -> list[str]:
    with pytest.raises(InputVectorError) as info:
        load_labels(raster, scene=scene, classes=CLASSES, field="class", source="train.scenes[0].labels", **options)
    assert str(info.value).splitlines() == info.value.problems
    return info.value.problems


def test_without_a_table_values_are_class_indexes_and_others_are_listed(scene, tmp_path):
    values = values_on_the_grid([0, 1, 2, 255])
    raster = write_geotiff(tmp_path / "indexes.tif", values, block=32)
    labels = load_labels(raster, scene=scene, classes=CLASSES, field="class")
    assert_array_equal(target(labels, scene, tmp_path), values)
    values[:3, :3] = [[5, 9, 5]] * 3
    write_geotiff(raster, values, block=32)
    assert problem_lines(raster, scene) == [
        f"{raster}: train.scenes[0].labels: values [5, 9] are not class indexes (0 to 2 for classes: background, "
        "water, building; 255: no label) and the raster has no category names; name each value's class with "
        'label_map: {"5": <class>, "9": <class>}'
    ]


def test_values_missing_from_the_table_and_unknown_classes_are_listed_at_once(scene, tmp_path):
    values = values_on_the_grid([1, 2, 300, 4000], dtype=np.uint16)
    raster = write_geotiff(tmp_path / "codes.tif", values, block=32)
    assert problem_lines(raster, scene, label_map={"1": "water", "2": "forest"}) == [
        f"{raster}: train.scenes[0].labels: values [300, 4000] are in neither label_map nor the raster's category "
        'names; add them to label_map: {"300": <class>, "4000": <class>} (a class of train.ignore_classes leaves '
        "them unpainted)",
        f"{raster}: train.scenes[0].labels: class names ['forest'] (of values 2) are not in the job's classes "
        "['background', 'water', 'building']; add them to `classes:` or `train.ignore_classes:`, or map them "
        "with label_map",
    ]


def test_a_raster_on_another_grid_is_reprojected_window_by_window(scene, tmp_path):
    # 1 m pixels (2x2 scene pixels) starting 8 columns and 4 rows into the scene, reaching past its right edge
    values = values_on_the_grid([1, 2], shape=(20, 40))
    coarse = Affine(1.0, 0, ORIGIN.c + 8 * 0.5, 0, -1.0, ORIGIN.f - 4 * 0.5)
    raster = write_geotiff(tmp_path / "coarse.tif", values, transform=coarse, block=16)
    labels = load_labels(raster, scene=scene, classes=CLASSES, field="class", label_map={"1": "water", "2": "building"})
    assert label_rasters(labels)[0].warped
    expected = np.zeros((H, W), np.int64)
    fine = np.repeat(np.repeat(values, 2, axis=0), 2, axis=1)  # each 1 m pixel covers 2 x 2 scene pixels
    expected[4:44, 8:W] = fine[:, : W - 8]  # outside the raster nothing is painted
    assert_array_equal(target(labels, scene, tmp_path), expected)


def test_a_raster_in_degrees_agrees_with_reprojecting_it_whole(scene, tmp_path):
    west, south, east, north = rasterio.warp.transform_bounds(UTM33, "EPSG:4326", *scene.bounds)
    values = values_on_the_grid([1, 2], shape=(50, 50))
    degrees = rasterio.transform.from_bounds(west, south, east, north, 50, 50)
    raster = write_geotiff(tmp_path / "degrees.tif", values, crs="EPSG:4326", transform=degrees, block=16)
    labels = load_labels(raster, scene=scene, classes=CLASSES, field="class", label_map={"1": "water", "2": "building"})
    whole = np.zeros((H, W), np.uint8)
    reproject(
        values,
        whole,
        src_transform=degrees,
        src_crs="EPSG:4326",
        dst_transform=scene.transform,
        dst_crs=UTM33,
        resampling=Resampling.nearest,
        dst_nodata=0,
    )
    agree = (target(labels, scene, tmp_path) == whole).mean()
    assert (whole > 0).all() and agree > 0.99, agree  # the same warp, window by window: a few edge pixels at most


def test_an_instance_job_refuses_a_label_raster_naming_the_file_and_field(tmp_path, capsys):
    scene_path = write_geotiff(tmp_path / "scene.tif", np.full((3, H, W), 9, np.uint8))
    raster = write_geotiff(tmp_path / "classes.tif", values_on_the_grid([0, 1, 2]), block=32)
    job = tiny_job(tmp_path, scene_path, raster)
    data = yaml.safe_load(job.read_text())
    data.update(stages=["train"], model={"arch": "maskrcnn_resnet18_fpn"}, tiling={"tile_size": 512, "halo": 64})
    job.write_text(yaml.safe_dump(data))
    assert main(["validate", str(job)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"geoseg: error: {raster}: train.scenes[0].labels: a label raster holds classes, not objects; "
        "maskrcnn_resnet18_fpn needs polygons or a box table (one object each)"
    ]


def test_instance_ids_come_from_polygons_only_a_raster_holds_no_objects(scene, tmp_path):
    raster = write_geotiff(tmp_path / "water.tif", values_on_the_grid([1, 2]), block=32)
    house = tmp_path / "house.geojson"
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[to_map(box(10, 5, 50, 40))], crs=UTM33).to_file(house)
    sources = LabelSources(
        [LabelSource(path=raster, label_map={"1": "water", "2": "building"}), LabelSource(path=house)]
    )
    labels = load_labels(sources, scene=scene, classes=CLASSES, field="class")
    expected = np.zeros((H, W), np.uint32)
    expected[5:40, 10:50] = 1  # U-Net border weights (border_ce) see the house as object 1, nothing else
    assert_array_equal(target(labels, scene, tmp_path, instances=True), expected)


def test_a_raster_beside_the_scene_says_where_both_lie(scene, tmp_path):
    far = Affine(0.5, 0, ORIGIN.c + 1000, 0, -0.5, ORIGIN.f)
    raster = write_geotiff(tmp_path / "far.tif", values_on_the_grid([1]), transform=far, block=32)
    assert problem_lines(raster, scene, label_map={"1": "water"}) == [
        f"{raster}: train.scenes[0].labels: no pixel of the label raster overlaps the scene scene.tif: labels bounds "
        "(501000.0, 4999968.0, 501040.0, 5000000.0) in EPSG:32633, scene bounds (500000.0, 4999968.0, 500040.0, "
        "5000000.0) in EPSG:32633 (west, south, east, north); check that the labels belong to this scene and were "
        "saved with their true CRS"
    ]
