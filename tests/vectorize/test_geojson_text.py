"""GeoJSON rendered by GEOS in GDAL's layout: byte for byte what GDAL's RFC 7946 writer gives, where it applies."""

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Polygon

from geoseg.vectorize.geojson_text import renders_here
from geoseg.vectorize.stream import gdal_geojson, render_geojson


def _ring(rng, x0, y0, n=12, clockwise=False):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    if clockwise:
        angles = angles[::-1]
    radius = rng.uniform(0.5e-3, 1e-3, n)
    return list(zip(x0 + radius * np.cos(angles), y0 + radius * np.sin(angles), strict=True))


def _polygons(seed=0, count=40):
    rng = np.random.default_rng(seed)
    shapes = []
    for i in range(count):
        x0, y0 = rng.uniform(-179, 179), rng.uniform(-80, 80)
        outer = _ring(rng, x0, y0, clockwise=bool(i % 2))  # both windings: RFC 7946 wants counter-clockwise
        hole = [(x0 + 1e-4 * dx, y0 + 1e-4 * dy) for dx, dy in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
        shapes.append(Polygon(outer, [hole] if i % 3 == 0 else []))
    return shapes


def _frame(geometries, **columns):
    return gpd.GeoDataFrame(columns, geometry=list(geometries), crs="EPSG:4326")


def _same_as_gdal(frame, declared):
    """Same header, same geometry text, properties of the same values (GDAL writes reals in 17 digits)."""
    ours, gdals = render_geojson(frame, "layer", declared), gdal_geojson(frame, "layer", declared)
    assert renders_here(frame)
    assert ours[0] == gdals[0]
    lines, gdal_lines = ours[1].split(",\n"), gdals[1].split(",\n")
    assert len(lines) == len(gdal_lines) == len(frame)
    for line, gdal_line in zip(lines, gdal_lines, strict=True):
        properties, geometry = line.split(', "geometry": ')
        gdal_properties, gdal_geometry = gdal_line.split(', "geometry": ')
        assert geometry == gdal_geometry
        ours_values, gdal_values = json.loads(properties + "}"), json.loads(gdal_properties + "}")
        for name, value in ours_values["properties"].items():
            if frame[name].dtype == np.float32 and value is not None:  # both the same float32, in other digits
                assert np.float32(value) == np.float32(gdal_values["properties"][name])
            else:
                assert value == gdal_values["properties"][name]


def test_polygons_with_holes_and_both_windings_render_as_gdal_does():
    shapes = _polygons()
    n = len(shapes)
    frame = _frame(
        shapes,
        **{
            "class": np.array(["water", 'bâtiment "B"', "road\\1", "forêt"] * (n // 4)),
            "class_id": np.arange(n, dtype=np.int32),
            "area_m2": np.linspace(0.25, 1e6, n),
            "score": np.r_[np.nan, np.linspace(0, 1, n - 1)].astype(np.float32),
            "flooded": np.arange(n) % 2 == 0,
        },
    )
    _same_as_gdal(frame, "Polygon")


def test_multipolygon_layers_promote_polygons_as_gdal_does():
    shapes = _polygons(seed=1, count=9)
    mixed = [MultiPolygon(shapes[:3]), *shapes[3:]]
    _same_as_gdal(_frame(mixed, class_id=np.arange(len(mixed))), "MultiPolygon")


def test_lines_render_as_gdal_does():
    rng = np.random.default_rng(2)
    lines = [LineString(rng.uniform(10, 11, (5, 2))) for _ in range(6)]
    lines.append(MultiLineString([rng.uniform(10, 11, (3, 2)), rng.uniform(10, 11, (4, 2))]))
    _same_as_gdal(_frame(lines, length_m=rng.uniform(0, 100, len(lines))), "LineString")


def test_coordinates_are_rounded_to_seven_decimals_and_exteriors_counter_clockwise():
    clockwise = Polygon([(0.123456789, 0.0), (0.0, 0.1), (0.1, 0.123456749)])
    text = render_geojson(_frame([clockwise]), "layer", "Polygon")[1]
    ring = json.loads(text)["geometry"]["coordinates"][0]
    assert ring[0] == [0.1234568, 0.0] and [0.1, 0.1234567] in ring
    assert shapely.is_ccw(shapely.LinearRing(ring))


def test_what_gdal_would_render_differently_is_left_to_gdal():
    crossing = Polygon([(179.5, 0), (-179.5, 0), (-179.5, 1), (179.5, 1)])
    assert not renders_here(_frame([crossing]))
    assert not renders_here(_frame(_polygons(count=1), when=[np.datetime64("2026-01-01")]))
    assert not renders_here(_frame([shapely.Point(1, 2)]))
    assert renders_here(_frame([], class_id=np.array([], dtype=np.int32)))


@pytest.mark.parametrize("declared", ["Polygon", "MultiPolygon"])
def test_an_empty_batch_has_the_same_header(declared):
    empty = _frame([], class_id=np.array([], dtype=np.int32))
    assert render_geojson(empty, "polygons", declared) == gdal_geojson(empty, "polygons", declared)
