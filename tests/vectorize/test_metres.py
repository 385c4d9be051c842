"""Metres are metres: areas, the area filter and simplification tolerances measured on the ground in any CRS.

Every expectation is computed independently of geoseg: the same polygon built
in its local UTM zone (where planar metres are ground metres to 0.1 %), or
pyproj's Geod on its longitude/latitude corners.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.io.instances import read_instance_table, table_from_columns
from geoseg.vectorize import vectorize_mosaic
from geoseg.vectorize.export import metres_per_unit as exported_metres_per_unit
from geoseg.vectorize.export import regions_to_frame
from geoseg.vectorize.instances import instances_to_frame
from geoseg.vectorize.metres import areas_m2, metres_per_unit, pixel_areas_m2, simplify_tolerance
from tests.factories import real_raster
from tests.vectorize.test_vectorize import make_mosaic

GEOD = pyproj.Geod(ellps="WGS84")
MERCATOR, WGS84, UTM33 = CRS.from_epsg(3857), CRS.from_epsg(4326), CRS.from_epsg(32633)
# cogeo.tif's grid: 0.6 m Web Mercator pixels at 37.7° N, 128.6° E (UTM zone 52N).
COGEO = Affine(0.6, 0, 14321853.115736904, 0, -0.6, 4533021.525424092)
COGEO_UTM = CRS.from_epsg(32652)
# The Nebraska scene's latitude, in 1e-5° pixels (about 0.84 m × 1.11 m); UTM zone 14N.
NEBRASKA = Affine(1e-5, 0, -101.25, 0, -1e-5, 41.84)
NEBRASKA_UTM = CRS.from_epsg(32614)


def ground_area_via_utm(geom, crs: CRS, utm: CRS) -> float:
    """The polygon's area built in its UTM zone: edges densified, then planar square metres."""
    to_utm = pyproj.Transformer.from_crs(crs, utm, always_xy=True)
    dense = shapely.segmentize(geom, max_segment_length=(geom.length / 400))
    return shapely.transform(dense, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1]))).area


def lonlat(crs: CRS, x, y):
    return pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)


def pixel_disk(transform: Affine, radius: int = 40, seed: int = 0):
    """An irregular blob of whole pixels in map coordinates: a staircase outline with much to simplify."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: 2 * radius + 4, : 2 * radius + 4] - radius - 2
    wobble = 1 + 0.15 * np.sin(3 * np.arctan2(yy, xx) + rng.uniform(0, 6))
    mask = np.hypot(yy, xx) < radius * wobble
    shapes = rasterio.features.shapes(mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4)
    return shapely.geometry.shape(next(iter(shapes))[0])


def ground_displacement(original, simplified, crs: CRS) -> float:
    """Largest ground distance (m, Geod) from a vertex of ``original`` to the boundary of ``simplified``.

    The nearest point is found in map units, so the ground distance is an upper
    bound of the true one: the test is conservative.
    """
    vertices = shapely.points(shapely.get_coordinates(original))
    nearest = shapely.get_coordinates(shapely.shortest_line(vertices, simplified.boundary))[1::2]
    lon0, lat0 = lonlat(crs, shapely.get_x(vertices), shapely.get_y(vertices))
    lon1, lat1 = lonlat(crs, nearest[:, 0], nearest[:, 1])
    return float(np.max(GEOD.inv(lon0, lat0, lon1, lat1)[2]))


# -- areas ---------------------------------------------------------------------------------------------------------


def test_web_mercator_area_is_the_ground_area_not_the_map_area():
    square = shapely.box(*(COGEO @ (100, 100)), *(COGEO @ (400, 300)))  # 180 m × 120 m of map
    area = areas_m2(np.array([square]), MERCATOR)[0]
    assert area == pytest.approx(ground_area_via_utm(square, MERCATOR, COGEO_UTM), rel=5e-3)
    lat = lonlat(MERCATOR, *square.centroid.coords[0])[1]
    assert area == pytest.approx(square.area * np.cos(np.radians(lat)) ** 2, rel=5e-3)
    assert square.area / area == pytest.approx(1.60, abs=0.01)  # what the planar area overstated


def test_geographic_area_matches_the_polygon_built_in_utm():
    field = shapely.Polygon([(-101.2, 41.6), (-101.1, 41.6), (-101.1, 41.7), (-101.15, 41.75), (-101.2, 41.7)])
    area = areas_m2(np.array([field]), WGS84)[0]
    assert area == pytest.approx(ground_area_via_utm(field, WGS84, NEBRASKA_UTM), rel=5e-3)


def test_utm_area_stays_planar_and_agrees_with_geodesic():
    parts = shapely.MultiPolygon(
        [shapely.box(500000.0, 5e6, 500250.0, 5000100.0), shapely.box(501000, 4999000, 501010, 5e6)]
    )
    (area,) = areas_m2(np.array([parts]), UTM33)
    assert area == parts.area  # planar, bit for bit: UTM outputs do not change
    corner = shapely.box(500000.0, 5000000.0, 500250.0, 5000100.0)
    lon, lat = lonlat(UTM33, *shapely.get_coordinates(shapely.orient_polygons(corner)).T)
    geodesic = abs(GEOD.polygon_area_perimeter(lon, lat)[0])
    assert areas_m2(np.array([corner]), UTM33)[0] == pytest.approx(geodesic, rel=1e-3)


def test_utm_far_outside_its_zone_is_measured_on_the_ellipsoid():
    # 20° east of zone 33's central meridian the scale is ~1.03: planar area would be 6 % too large.
    x, y = pyproj.Transformer.from_crs("EPSG:4326", UTM33, always_xy=True).transform(35.0, 45.0)
    square = shapely.box(x, y, x + 500, y + 500)
    expected = ground_area_via_utm(square, UTM33, CRS.from_epsg(32636))
    assert areas_m2(np.array([square]), UTM33)[0] == pytest.approx(expected, rel=5e-3)
    assert square.area / expected > 1.05


def web_mercator_areal_scale(lat_deg):
    """Ground m² per map unit² of EPSG:3857 on WGS84: M·N·cos²φ / a² = (1 − e²) cos²φ / (1 − e² sin²φ)².

    M and N are the ellipsoid's radii of curvature (Snyder 1987, "Map Projections: A
    Working Manual", eqs. 4-18 and 4-20); Web Mercator's sphere has radius a.
    """
    e2 = 0.00669437999014
    phi = np.radians(lat_deg)
    return (1 - e2) * np.cos(phi) ** 2 / (1 - e2 * np.sin(phi) ** 2) ** 2


def test_pixel_area_follows_latitude():
    rows = np.array([0.0, 20_000.0])
    lat = np.array([lonlat(MERCATOR, *(COGEO @ (0.5, r + 0.5)))[1] for r in rows])
    assert pixel_areas_m2(COGEO, MERCATOR, rows, [0, 0]) == pytest.approx(
        0.36 * web_mercator_areal_scale(lat), rel=1e-5
    )
    assert pixel_areas_m2(Affine(0.5, 0, 500000, 0, -0.5, 5e6), UTM33, [3], [7])[0] == 0.25


def test_metres_per_unit_still_comes_from_export():
    assert exported_metres_per_unit is metres_per_unit
    assert metres_per_unit(UTM33) == 1.0 and metres_per_unit(CRS.from_epsg(2227)) == pytest.approx(0.3048006096)


# -- the area filter and the instance table --------------------------------------------------------------------------

CLASS = 1


def two_squares(shape=(96, 96)):
    """Two squares of class 1 on a 0.6 m Web Mercator grid at 37.7° N: 20 and 30 pixels a side."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[10:30, 10:30] = CLASS  # 144 m² of map, ~90 m² of ground
    lab[50:80, 40:70] = CLASS  # 324 m² of map, ~203 m² of ground
    return lab


@pytest.mark.parametrize("crs, transform, utm", [(MERCATOR, COGEO, COGEO_UTM), (WGS84, NEBRASKA, NEBRASKA_UTM)])
def test_min_area_keeps_and_drops_by_ground_area_and_table_agrees(tmp_path, crs, transform, utm):
    make_mosaic(tmp_path / "m.zarr", two_squares(), chunk=32, crs=crs, transform=transform)
    small = ground_area_via_utm(shapely.box(*(transform @ (10, 30)), *(transform @ (30, 10))), crs, utm)
    big = ground_area_via_utm(shapely.box(*(transform @ (40, 80)), *(transform @ (70, 50))), crs, utm)
    threshold = small * 1.2  # Web Mercator's map area (1.6 × small) would pass it
    out = vectorize_mosaic(
        tmp_path / "m.zarr", tmp_path / "v", min_area_m2=threshold, instances_table=tmp_path / "instances.parquet"
    )
    gdf = pyogrio.read_dataframe(out.vectors)
    assert len(gdf) == 1 and gdf["area_m2"].iloc[0] == pytest.approx(big, rel=5e-3)
    table = read_instance_table(tmp_path / "instances.parquet")
    assert table["area_px"].tolist() == [900]
    assert table["area_m2"].iloc[0] == pytest.approx(big, rel=5e-3)
    kept = vectorize_mosaic(tmp_path / "m.zarr", tmp_path / "v2", min_area_m2=small * 0.99)
    assert kept.features == 2


def test_table_from_columns_takes_a_pixel_area_per_instance():
    bboxes = [(0, 0, 10, 10), (20_000, 0, 20_010, 10)]
    centres = pixel_areas_m2(COGEO, MERCATOR, [4.5, 20_004.5], [4.5, 4.5])
    table = table_from_columns([1, 2], [1, 1], ("bg", "tree"), [0.9, 0.8], bboxes, [100, 100], centres)
    assert table["area_m2"].tolist() == pytest.approx((100 * centres).tolist())
    assert table["area_m2"].iloc[1] > table["area_m2"].iloc[0]  # further south: more ground per pixel
    scalar = table_from_columns([1], [1], ("bg", "tree"), [0.9], bboxes[:1], [100], 0.25)
    assert scalar["area_m2"].tolist() == [25.0]


# -- simplification -------------------------------------------------------------------------------------------------


def test_tolerance_is_the_local_scale_in_map_units():
    blob = pixel_disk(COGEO)
    lat = lonlat(MERCATOR, *blob.centroid.coords[0])[1]
    # Web Mercator is conformal: a metre on the ground is 1/(k) map units, k ≈ sec φ (spherical).
    assert simplify_tolerance(np.array([blob]), MERCATOR, 2.0)[0] == pytest.approx(
        2.0 / np.cos(np.radians(lat)), rel=3e-3
    )
    field = pixel_disk(NEBRASKA)
    south, north = field.bounds[1], field.bounds[3]
    # In degrees the metres per unit are largest along the meridian: one degree of latitude there.
    metres_per_degree = GEOD.line_length([-101.2, -101.2], [(south + north) / 2 - 0.5, (south + north) / 2 + 0.5])
    assert simplify_tolerance(np.array([field]), WGS84, 2.0)[0] == pytest.approx(2.0 / metres_per_degree, rel=1e-4)
    utm = pixel_disk(Affine(0.5, 0, 500000, 0, -0.5, 5e6))
    assert simplify_tolerance(np.array([utm]), UTM33, 2.0)[0] == 2.0


@pytest.mark.parametrize("crs, transform", [(MERCATOR, COGEO), (WGS84, NEBRASKA)])
def test_simplify_never_moves_a_vertex_further_than_simplify_m_on_the_ground(crs, transform):
    simplify_m = 3.0
    blobs = [pixel_disk(transform, radius=60, seed=s) for s in range(3)]
    ids = np.arange(1, 4)
    table = pd.DataFrame({"class": ["tree"] * 3, "class_id": [1] * 3, "score": [0.9] * 3}, index=ids)
    to_pixels = ~transform
    pixel_blobs = np.array([shapely.affinity.affine_transform(b, to_pixels.to_shapely()) for b in blobs])
    per_instance = instances_to_frame(ids, pixel_blobs, table, transform=transform, crs=crs, simplify_m=simplify_m)
    coverage = regions_to_frame(
        [(1, pixel_blobs[0])], transform=transform, crs=crs, class_names=("bg", "tree"), simplify_m=simplify_m
    )
    pairs = [*zip(blobs, per_instance.geometry, strict=True), (blobs[0], coverage.geometry.iloc[0])]
    moved = [ground_displacement(original, simplified, crs) for original, simplified in pairs]
    for original, simplified in pairs:
        assert len(shapely.get_coordinates(simplified)) < len(shapely.get_coordinates(original)) / 4
    assert max(moved) <= simplify_m
    # The tolerance is used nearly to the full: a tolerance of simplify_m map units in Web
    # Mercator (the old conversion) moves nothing more than cos(37.7°) = 0.79 × simplify_m.
    assert max(moved[:3]) > 0.85 * simplify_m


# -- the real scenes' grids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, utm",
    [
        ("cogeo.tif", COGEO_UTM),
        ("nebraska_landsat5_int16.tif", NEBRASKA_UTM),
        # UTM 18N but 4° west of its central meridian (scale 1.0015): measured on the ellipsoid.
        ("RGB.byte.tif", CRS.from_epsg(32617)),
        ("neon_osbs_029.tif", None),  # UTM 17N inside its zone: planar square metres, as before
    ],
)
def test_real_scene_grids_give_ground_areas(tmp_path, name, utm):
    with rasterio.open(real_raster(name)) as src:
        crs, transform = src.crs, src.transform
    make_mosaic(tmp_path / "m.zarr", two_squares(), chunk=32, crs=crs, transform=transform)
    out = vectorize_mosaic(tmp_path / "m.zarr", tmp_path / "v", instances_table=tmp_path / "instances.parquet")
    gdf = pyogrio.read_dataframe(out.vectors)
    squares = [
        shapely.box(*(transform @ (10, 30)), *(transform @ (30, 10))),
        shapely.box(*(transform @ (40, 80)), *(transform @ (70, 50))),
    ]
    expected = [s.area if utm is None else ground_area_via_utm(s, crs, utm) for s in squares]
    assert gdf["area_m2"].tolist() == pytest.approx(expected, rel=5e-3 if utm else 0)
    table = read_instance_table(tmp_path / "instances.parquet")
    assert table["area_m2"].tolist() == gdf["area_m2"].tolist()
