"""Metres are metres: ground areas and ground tolerances in any CRS.

A map unit is a metre on the ground only where the projection's scale is
true. Web Mercator (EPSG:3857) stretches both axes by 1/cos(latitude), so a
planar area there is 1/cos²(latitude) too large (1.60× at 37.7° N); a degree of
longitude is cos(latitude) × a degree of latitude. So:

* Where the projection's linear scale at a feature is within
  :data:`TRUE_SCALE_TOLERANCE` of 1 on both axes (UTM inside its zone, national
  transverse Mercator grids, ...) planar measures in the CRS's linear unit are
  kept: they are within about 0.2 % of the ground and cost nothing.
* Everywhere else (Web Mercator, geographic CRSs, a UTM zone used far outside
  itself) an area is geodesic: the geometry is taken to longitude/latitude on
  its own datum and measured on the ellipsoid with pyproj's
  :meth:`pyproj.Geod.geometry_area_perimeter` (Karney, "Algorithms for
  geodesics", J. Geodesy 87, 2013), and a tolerance in metres becomes map units
  from the geodesic length of a small step along x and along y.

Scale factors come from PROJ (:meth:`pyproj.Proj.get_factors`). A CRS with no
geodetic datum (a local engineering grid) is measured as planar in its unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

__all__ = ["TRUE_SCALE_TOLERANCE", "areas_m2", "metres_per_unit", "pixel_areas_m2", "simplify_tolerance"]

# Largest departure of the linear scale from 1 (on either axis) at which planar
# measures count as ground measures: 0.1 % of length, about 0.2 % of area. UTM's
# scale runs from 0.9996 on the central meridian to about 1.001 at a zone's edge.
TRUE_SCALE_TOLERANCE = 1e-3
# Metres per degree of latitude (mean): the nominal unit of a geographic CRS,
# for callers that want one number per CRS. Measures here never use it.
_METRES_PER_DEGREE = 111_320.0


def metres_per_unit(crs: CRS) -> float:
    """Nominal length of one CRS unit in metres (1 for metres, 0.3048 for feet, ...).

    The declared unit only: true on the ground only where the projection's scale
    is true (see the module notes). Use :func:`areas_m2` and
    :func:`simplify_tolerance` for ground measures.
    """
    if crs.is_geographic:
        return _METRES_PER_DEGREE
    try:
        return float(crs.linear_units_factor[1])
    except CRSError:  # a local or engineering CRS without declared units: assume metres
        return 1.0


@dataclass(frozen=True)
class _Ground:
    """What measuring on the ground in one CRS needs, built once per CRS."""

    unit: float  # nominal metres per map unit
    geographic: bool
    geod: pyproj.Geod | None  # None: no datum, planar only
    proj: pyproj.Proj | None  # projected CRSs: their scale factors
    to_lonlat: pyproj.Transformer | None  # projected CRSs: map -> lon/lat degrees on their datum


@lru_cache(maxsize=16)
def _ground(wkt: str) -> _Ground:
    crs = CRS.from_wkt(wkt)
    unit = metres_per_unit(crs)
    pcrs = pyproj.CRS.from_wkt(wkt)
    geodetic = pcrs.geodetic_crs
    geod = pcrs.get_geod()
    if geodetic is None or geod is None:
        return _Ground(unit, False, None, None, None)
    if crs.is_geographic:
        return _Ground(unit, True, geod, None, None)
    to_lonlat = pyproj.Transformer.from_crs(pcrs, geodetic, always_xy=True)
    return _Ground(unit, False, geod, pyproj.Proj(pcrs), to_lonlat)


def _lonlat(ground: _Ground, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if ground.to_lonlat is None:
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    lon, lat = ground.to_lonlat.transform(x, y)
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def _true_scale(ground: _Ground, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether planar measures count as ground measures at each map point."""
    if ground.geod is None:
        return np.ones(len(x), dtype=bool)
    if ground.proj is None:  # geographic: degrees are never metres
        return np.zeros(len(x), dtype=bool)
    lon, lat = _lonlat(ground, x, y)
    factors = ground.proj.get_factors(lon, lat)
    h, k = np.asarray(factors.meridional_scale), np.asarray(factors.parallel_scale)
    return (np.abs(h - 1) <= TRUE_SCALE_TOLERANCE) & (np.abs(k - 1) <= TRUE_SCALE_TOLERANCE)


def _centres(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bounds = shapely.bounds(geoms)
    return (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2


def _geodesic_areas(ground: _Ground, geoms: np.ndarray) -> np.ndarray:
    assert ground.geod is not None
    geod = ground.geod

    def lonlat(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(_lonlat(ground, xy[:, 0], xy[:, 1]))

    # pyproj's area is signed by ring orientation: shells counter-clockwise in lon/lat.
    oriented = shapely.orient_polygons(shapely.transform(geoms, lonlat) if ground.to_lonlat else geoms)
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in oriented], dtype=np.float64)


def areas_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    """Ground area of each geometry (in map coordinates of ``crs``) in m².

    Planar × unit² where the projection's scale at the geometry's centre is true;
    geodesic on the CRS's ellipsoid otherwise (see the module notes).
    """
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.float64)
    ground = _ground(crs.to_wkt())
    areas = np.full(len(geoms), np.nan)  # a missing geometry has no area, as shapely.area says
    present = ~shapely.is_missing(geoms)
    planar = _true_scale(ground, *_centres(geoms)) & present
    areas[planar] = shapely.area(geoms[planar]) * ground.unit**2
    geodesic = present & ~planar
    if geodesic.any():
        areas[geodesic] = _geodesic_areas(ground, geoms[geodesic])
    return areas


def _metres_per_step(ground: _Ground, x: np.ndarray, y: np.ndarray, step: float) -> np.ndarray:
    """Ground metres per map unit at each point: the larger of a step along x and along y."""
    assert ground.geod is not None
    lon0, lat0 = _lonlat(ground, x, y)
    lengths = []
    for dx, dy in ((step, 0.0), (0.0, step)):
        lon1, lat1 = _lonlat(ground, x + dx, y + dy)
        lengths.append(np.asarray(ground.geod.inv(lon0, lat0, lon1, lat1)[2]) / step)
    return np.maximum(*lengths)


def simplify_tolerance(geoms: np.ndarray, crs: CRS, metres: float) -> np.ndarray:
    """A simplification tolerance of ``metres`` on the ground, in map units, per geometry.

    Where the scale is true this is ``metres / unit``. Elsewhere the local scale
    is measured at the centre and the four corners of each geometry's bounds,
    and the largest (the most metres per map unit) is used, so a vertex moved by
    the tolerance in any direction anywhere in the geometry moves at most
    ``metres`` on the ground.
    """
    geoms = np.asarray(geoms, dtype=object)
    ground = _ground(crs.to_wkt())
    out = np.full(len(geoms), metres / ground.unit, dtype=np.float64)
    if not len(geoms) or ground.geod is None:
        return out
    cx, cy = _centres(geoms)
    local = ~_true_scale(ground, cx, cy)
    if not local.any():
        return out
    b = shapely.bounds(geoms[local])
    xs = np.column_stack([cx[local], b[:, 0], b[:, 0], b[:, 2], b[:, 2]])
    ys = np.column_stack([cy[local], b[:, 1], b[:, 3], b[:, 1], b[:, 3]])
    # A step small against any feature, large against float rounding: 1e-3 of a nominal metre.
    step = 1e-3 / ground.unit
    scale = _metres_per_step(ground, xs.ravel(), ys.ravel(), step).reshape(xs.shape).max(axis=1)
    out[local] = metres / scale
    return out


def pixel_areas_m2(transform: Affine, crs: CRS, rows, cols) -> np.ndarray:
    """Ground area in m² of the pixel at each (row, col) of a grid (fractional indices allowed).

    For a table of pixel counts: ``area_px * pixel_areas_m2(...)`` at an
    instance's centre is its ground area to well within 0.1 % for any object
    smaller than a few kilometres.
    """
    rows = np.atleast_1d(np.asarray(rows, dtype=np.float64))
    cols = np.atleast_1d(np.asarray(cols, dtype=np.float64))
    if rows.size == 0:
        return np.zeros(0, dtype=np.float64)
    a, b, c, d, e, f = tuple(transform)[:6]
    corner_cols = cols[:, None] + np.array([0, 1, 1, 0])
    corner_rows = rows[:, None] + np.array([0, 0, 1, 1])
    x, y = a * corner_cols + b * corner_rows + c, d * corner_cols + e * corner_rows + f
    ground = _ground(crs.to_wkt())
    # Where the scale is true, the exact affine pixel area (a polygon's shoelace over large map
    # coordinates would differ from it in the last bits); geodesic pixel polygons elsewhere.
    areas = np.full(len(rows), abs(a * e - b * d) * ground.unit**2)
    curved = ~_true_scale(ground, x.mean(axis=1), y.mean(axis=1))
    if curved.any():
        rings = np.stack([x[curved], y[curved]], axis=-1)  # (n, 4 corners, xy)
        areas[curved] = _geodesic_areas(ground, shapely.polygons(rings))
    return areas
