"""Label geometry in metres: widths for line and point labels, and where labels and scene lie.

Widths are measured on the ground. A projected CRS in metres whose scale factor
at the labels is within 0.2% of 1 (UTM in its zone, national grids) buffers
directly; anything else (degrees, Web Mercator, world projections) buffers in an
azimuthal equidistant projection centred on the labels, where distances from the
centre are true and the scale across them grows as (d/R)/sin(d/R) ≈ 1 + (d/R)²/6
(Snyder 1987, *Map Projections: A Working Manual*, USGS PP 1395, p. 195): under
0.01% within 100 km, so farther-flung labels get a centre each.
"""

from __future__ import annotations

from collections.abc import Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS, Geod, Proj
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import AzimuthalEquidistantConversion
from rasterio.warp import transform_bounds
from shapely.geometry import box

from geoseg.io.raster import SceneInfo

__all__ = ["needs_width", "no_overlap", "with_width"]

_SCALE_TOLERANCE = 0.002  # a projected CRS buffers in its own metres when its scale is this close to 1
_ONE_CENTRE_M = 100_000.0  # labels within this of their centre share one azimuthal projection


def needs_width(frame: gpd.GeoDataFrame) -> np.ndarray:
    """Features without an area (lines, points, collections of them)."""
    return ~frame.geom_type.isin(["Polygon", "MultiPolygon"]).to_numpy()


def with_width(frame: gpd.GeoDataFrame, names: pd.Series, buffer_m: Mapping[str, float]) -> gpd.GeoDataFrame:
    """``frame`` with each line and point grown ``buffer_m[its class]`` metres on every side."""
    thin = needs_width(frame)
    if not thin.any():
        return frame
    radii = names.to_numpy()[thin]
    widened = metric_buffer(frame.geometry[thin], np.array([float(buffer_m[name]) for name in radii]))
    geometry = frame.geometry.to_numpy().copy()
    geometry[thin] = widened.to_numpy()
    return frame.set_geometry(gpd.GeoSeries(geometry, index=frame.index, crs=frame.crs))


def metric_buffer(geoms: gpd.GeoSeries, radii: np.ndarray) -> gpd.GeoSeries:
    """Buffer each geometry by its radius in metres on the ground; the result is in ``geoms``' CRS."""
    crs = CRS.from_user_input(geoms.crs)
    lonlat = geoms.to_crs(crs.geodetic_crs)
    west, south, east, north = lonlat.total_bounds
    lon, lat = (west + east) / 2, (south + north) / 2
    geod = Geod(ellps="WGS84")
    reach = max(geod.inv([lon] * 4, [lat] * 4, [west, west, east, east], [south, north, south, north])[2])
    if reach <= _ONE_CENTRE_M and _true_metres(crs, lon, lat):
        return geoms.buffer(radii)
    if reach <= _ONE_CENTRE_M:
        centres = [(lon, lat, np.arange(len(geoms)))]
    else:
        points = lonlat.representative_point()
        centres = [(p.x, p.y, np.array([i])) for i, p in enumerate(points)]
    out = np.empty(len(geoms), dtype=object)
    for lon0, lat0, rows in centres:
        local = ProjectedCRS(AzimuthalEquidistantConversion(lat0, lon0), geodetic_crs=crs.geodetic_crs)
        part = gpd.GeoSeries(lonlat.to_numpy()[rows], crs=lonlat.crs).to_crs(local)
        out[rows] = part.buffer(radii[rows]).to_crs(crs).to_numpy()
    return gpd.GeoSeries(out, index=geoms.index, crs=geoms.crs)


def _true_metres(crs: CRS, lon: float, lat: float) -> bool:
    """A projected CRS in metres whose scale near (lon, lat) is 1 within :data:`_SCALE_TOLERANCE`."""
    if not crs.is_projected or any(axis.unit_name not in ("metre", "meter") for axis in crs.axis_info):
        return False
    factors = Proj(crs).get_factors(lon, lat)
    return max(abs(factors.meridional_scale - 1), abs(factors.parallel_scale - 1)) <= _SCALE_TOLERANCE


def no_overlap(
    frame: gpd.GeoDataFrame,
    labels_crs: object,
    labels_bounds: np.ndarray,
    scene: SceneInfo,
    where: str,
    what: str = "label polygon",
) -> list[str]:
    """A line saying where labels and scene lie when no label (``frame``, in the scene CRS) touches it, else nothing.

    ``labels_crs`` and ``labels_bounds`` are the labels' own, as read from the file; ``what`` names one label.
    """
    if frame.empty:
        return [f"{where}: no label features left (all empty, or in train.ignore_classes); check the labels"]
    if frame.intersects(box(*scene.bounds)).any():
        return []
    scene_crs, native = CRS.from_user_input(scene.crs), CRS.from_user_input(labels_crs)
    scene_there = ""
    if native != scene_crs:
        there = transform_bounds(scene_crs, native, *scene.bounds, densify_pts=21)
        scene_there = f", i.e. {_bounds(there, native)} in {_crs_name(native)}"
    return [
        f"{where}: no {what} overlaps the scene {scene.path.name}: labels bounds "
        f"{_bounds(labels_bounds, native)} in {_crs_name(native)}, scene bounds "
        f"{_bounds(scene.bounds, scene_crs)} in {_crs_name(scene_crs)}{scene_there} (west, south, east, north); "
        "check that the labels belong to this scene and were saved with their true CRS"
    ]


def _bounds(values, crs: CRS) -> str:
    """Plain numbers: degrees to 6 decimals (~0.1 m), projected units to 0.1."""
    digits = 6 if crs.is_geographic else 1
    return "(" + ", ".join(f"{float(v):.{digits}f}" for v in values) + ")"


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name
