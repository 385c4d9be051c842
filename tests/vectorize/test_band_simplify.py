"""``vectorize.simplify_m`` by bands: one coverage per band with its edges pinned, joined across seams."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.io.mosaic import open_mosaic
from geoseg.vectorize import vectorize_mosaic
from geoseg.vectorize.band_simplify import OpenPieces, scene_tolerance, simplify_band
from tests.vectorize.test_vectorize import CHUNK, UTM, UTM_CRS, WATER, blank, make_mosaic, smooth_classes


def test_scene_tolerance_is_the_finest_ground_scale_of_the_scene():
    assert scene_tolerance(UTM, UTM_CRS, 300, 260, 1.5) == pytest.approx(1.5)  # UTM: metres, true scale assumed
    # Web Mercator between 50° and 60° N: a map unit is cos(latitude) m on the ground (sphere), so the
    # tolerance that moves nothing more than 2 m is 2 / cos(50°) map units, set by the southern edge.
    to_merc = pyproj.Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y_south = to_merc.transform(10.0, 50.0)
    _, y_north = to_merc.transform(10.0, 60.0)
    size = 1000
    transform = Affine((y_north - y_south) / size, 0, x0, 0, -(y_north - y_south) / size, y_north)
    tolerance = scene_tolerance(transform, CRS.from_epsg(3857), size, size, 2.0)
    assert tolerance == pytest.approx(2.0 / np.cos(np.radians(50.0)), rel=5e-3)


def test_a_band_keeps_its_edges_and_moves_shared_borders_once():
    # A staircase of class 1 over class 2, both touching the band's top and bottom edges (rows 0 and 8).
    stairs = shapely.Polygon([(0, 0), (10, 0), (10, 2), (8, 2), (8, 4), (6, 4), (6, 6), (4, 6), (4, 8), (0, 8)])
    rest = shapely.difference(shapely.box(0, 0, 20, 8), stairs)
    geoms = np.array([stairs, rest], dtype=object)
    out = simplify_band(geoms, 0, 8, 20, Affine.identity(), 1.5)
    assert shapely.get_num_coordinates(out[0]) < shapely.get_num_coordinates(stairs)  # the staircase went
    assert shapely.area(out).sum() == pytest.approx(160.0)  # the two still tile the band: no gap, no overlap
    assert shapely.area(shapely.intersection(out[0], out[1])) == pytest.approx(0.0, abs=1e-9)
    for y in (0.0, 8.0):  # the band's edges: the vertices where the border meets them stay
        edge = shapely.LineString([(0, y), (20, y)])
        assert shapely.equals(shapely.intersection(out[0].boundary, edge), shapely.intersection(stairs.boundary, edge))


def test_open_pieces_are_joined_by_the_region_that_contains_them():
    pieces = OpenPieces()
    top, bottom = shapely.box(0, 0, 4, 4), shapely.box(0, 4, 4, 8)
    other = shapely.box(10, 0, 12, 4)
    pieces.add(np.array([[0.5, 0.5], [10.5, 0.5]]), np.array([top, other], dtype=object))
    pieces.add(np.array([[0.5, 4.5]]), np.array([bottom], dtype=object))
    (joined,) = pieces.take([(1, shapely.box(0, 0, 4, 8))])
    assert shapely.equals(joined, shapely.box(0, 0, 4, 8)) and len(pieces) == 1  # the other piece waits


def test_simplified_regions_crossing_band_seams_are_whole_and_tile_without_overlap(tmp_path):
    lab = smooth_classes(seed=5)
    lab[:, 100:110] = WATER  # a river across every band seam (each chunk row of 64 is a band here)
    mosaic = make_mosaic(tmp_path / "mosaic.zarr", lab)
    exact = vectorize_mosaic(mosaic, tmp_path / "exact")
    simple = vectorize_mosaic(mosaic, tmp_path / "simple", simplify_m=1.5)
    gdf, exact_gdf = pyogrio.read_dataframe(simple.vectors), pyogrio.read_dataframe(exact.vectors)
    assert simple.features == exact.features and (gdf.geom_type == "Polygon").all() and gdf.is_valid.all()
    assert shapely.union_all(gdf.geometry.values).area == pytest.approx(gdf.geometry.area.sum(), rel=1e-9)
    # The river is one feature spanning all 300 rows, simplified (fewer vertices than its pixel outline).
    river = gdf[gdf.geometry.bounds["maxy"] - gdf.geometry.bounds["miny"] >= 300 * 0.5 - 1e-6]
    exact_river = exact_gdf[exact_gdf.geometry.bounds["maxy"] - exact_gdf.geometry.bounds["miny"] >= 150 - 1e-6]
    assert len(river) == len(exact_river) >= 1
    assert (
        shapely.get_num_coordinates(river.geometry.values).sum()
        < shapely.get_num_coordinates(exact_river.geometry.values).sum()
    )
    # A border meets each band seam (y of rows 64, 128, ...) where the exact border does.
    top = UTM.f
    for row in range(CHUNK, 300, CHUNK):
        seam = shapely.LineString([(UTM.c, top - row * 0.5), (UTM.c + 260 * 0.5, top - row * 0.5)])
        ours = shapely.intersection(shapely.union_all(gdf.geometry.boundary.values), seam)
        theirs = shapely.intersection(shapely.union_all(exact_gdf.geometry.boundary.values), seam)
        assert shapely.equals(ours, theirs), row


def test_blank_scene_simplifies_to_nothing(tmp_path):
    out = vectorize_mosaic(make_mosaic(tmp_path / "m.zarr", blank()), tmp_path / "v", simplify_m=2.0)
    assert out.features == 0


def test_simplified_instance_polygons_keep_the_ids_of_the_exact_ones(tmp_path):
    lab = smooth_classes(seed=6)
    lab[:, 100:110] = WATER
    mosaic = make_mosaic(tmp_path / "mosaic.zarr", lab)
    exact = vectorize_mosaic(mosaic, tmp_path / "exact", fmt="parquet", instances_table=tmp_path / "exact.parquet")
    exact_raster = np.asarray(open_mosaic(mosaic).array("instances")[:])
    simple = vectorize_mosaic(
        mosaic, tmp_path / "simple", fmt="parquet", simplify_m=1.5, instances_table=tmp_path / "simple.parquet"
    )
    assert np.array_equal(np.asarray(open_mosaic(mosaic).array("instances")[:]), exact_raster)
    got, want = gpd.read_parquet(simple.vectors), gpd.read_parquet(exact.vectors)
    assert simple.instances == exact.instances == len(got) == len(want) > 50
    assert list(got["id"]) == list(want["id"]) == list(range(1, len(got) + 1))
    assert list(got["class"]) == list(want["class"]) and got.is_valid.all()
    # Each simplified polygon lies over its exact one (same id): it meets it, and covers most of any
    # region not small against the tolerance; fewer vertices overall.
    assert shapely.intersects(got.geometry.values, want.geometry.values).all()
    overlap = shapely.area(shapely.intersection(got.geometry.values, want.geometry.values))
    exact_area = shapely.area(want.geometry.values)
    assert (overlap >= 0.5 * exact_area)[exact_area >= 20.0].all()
    assert (
        shapely.get_num_coordinates(got.geometry.values).sum() < shapely.get_num_coordinates(want.geometry.values).sum()
    )
    assert shapely.union_all(got.geometry.values).area == pytest.approx(got.geometry.area.sum(), rel=1e-9)
