"""Labels as people have them, on real files: road centre-lines in degrees, fields without a class column."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.warp import transform
from rasterio.windows import from_bounds
from shapely.geometry import LineString, box

from geoseg.errors import InputVectorError
from geoseg.io.labels import IGNORE, load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from tests.factories import real_raster

GEOD = Geod(ellps="WGS84")


def pixel_areas(scene) -> np.ndarray:
    """Ground area (m²) of one pixel in each row of a scene in degrees, on the WGS84 ellipsoid."""
    t = scene.transform
    top = t.f + t.e * np.arange(scene.height)
    return np.array([abs(GEOD.polygon_area_perimeter([0, t.a, t.a, 0], [y, y, y + t.e, y + t.e])[0]) for y in top])


def burned_area(raster: np.ndarray, value: int, areas: np.ndarray) -> float:
    rows, _ = np.nonzero(raster == value)
    return float(areas[rows].sum())


def test_road_lines_are_refused_without_a_width_and_burn_their_width_with_one(tmp_path):
    scene = inspect_scene(real_raster("spacenet_vegas_roads_pan.tif"))
    lines = real_raster("spacenet_vegas_road_lines.geojson")
    with pytest.raises(InputVectorError) as info:
        load_labels(lines, scene=scene, classes=["background", "road"], field="road_type", label_map={"5": "road"})
    assert str(info.value) == (
        f"{lines}: labels: 9 LineString feature(s) of class 'road' have no area; give them a width with "
        "train.buffer_m: {road: 3.0} (half-width in metres)"
    )
    # Independently: the centre-lines' geodesic length inside the tile, times the road's full width.
    inside = gpd.read_file(lines).clip(box(*scene.bounds))
    length = sum(GEOD.geometry_length(line) for line in inside.geometry)
    areas = pixel_areas(scene)
    for half_width in (2.0, 3.5):
        frame = load_labels(
            lines,
            scene=scene,
            classes=["background", "road"],
            field="road_type",
            label_map={"5": "road"},
            buffer_m={"road": half_width},
        )
        with rasterio.open(rasterize_labels(frame, scene, tmp_path / f"roads{half_width}.tif")) as src:
            raster = src.read(1)
        # Measured: 0.4% under (crossings count once); a buffer in degrees, or without cos(latitude), is far off.
        assert burned_area(raster, 1, areas) == pytest.approx(length * 2 * half_width, rel=0.02)


def test_fields_without_a_class_column_all_burn_with_label_class(tmp_path):
    scene = inspect_scene(real_raster("nebraska_landsat5_int16.tif"))
    fields = real_raster("nebraska_fields.geojson")
    with pytest.raises(InputVectorError, match=r"no attribute 'class'.*label_class: <name>"):
        load_labels(fields, scene=scene, classes=["background", "field"], field="class")
    frame = load_labels(fields, scene=scene, classes=["background", "field"], field="class", label_class="field")
    assert frame.class_id.tolist() == [1] * 9
    ids_path = rasterize_labels(frame, scene, tmp_path / "ids.tif", instances=True)
    with rasterio.open(rasterize_labels(frame, scene, tmp_path / "fields.tif")) as src, rasterio.open(ids_path) as ids:
        raster, instance = src.read(1), ids.read(1)
    assert set(np.unique(instance)) == set(range(10))  # every field is burned
    areas = pixel_areas(scene)
    whole = 0
    for i, field in enumerate(gpd.read_file(fields).geometry, start=1):
        window = from_bounds(*field.bounds, transform=scene.transform).round_offsets().round_lengths()
        if (raster[window.toslices()] == IGNORE).any():
            continue  # partly over the scene's nodata, which is never labelled
        whole += 1
        expected = abs(GEOD.geometry_area_perimeter(field)[0])
        assert burned_area(instance, i, areas) == pytest.approx(expected, rel=0.01)
    assert whole == 7  # measured: two of the nine fields reach into the nodata third


def test_lines_over_web_mercator_are_buffered_in_ground_metres(tmp_path):
    scene = inspect_scene(real_raster("cogeo.tif"))
    west, south, east, north = scene.bounds
    y = (south + north) / 2
    line = LineString([(west + 100, y), (east - 100, y)])  # an east-west road across the tile, in EPSG:3857
    labels = tmp_path / "road.geojson"
    gpd.GeoDataFrame({"kind": ["road"]}, geometry=[line], crs=scene.crs).to_file(labels, driver="GeoJSON")
    frame = load_labels(labels, scene=scene, classes=["background", "road"], field="kind", buffer_m={"road": 10.0})
    with rasterio.open(rasterize_labels(frame, scene, tmp_path / "road.tif")) as src:
        burned = int((src.read(1) == 1).sum())
    # Independently: ground length on the ellipsoid, and the ground size of a pixel at that latitude.
    (lon0, lon1), (lat, _) = transform(scene.crs, "EPSG:4326", [line.coords[0][0], line.coords[1][0]], [y, y])
    ground = GEOD.inv(lon0, lat, lon1, lat)[2]
    scale = abs(line.length / ground)  # Web Mercator map units per ground metre here (1/cos(latitude))
    pixel_m2 = abs(scene.transform.a * scene.transform.e) / scale**2
    assert scale > 1.2  # far enough north for a buffer in map units to be clearly wrong
    assert burned * pixel_m2 == pytest.approx(ground * 20 + np.pi * 100, rel=0.02)
