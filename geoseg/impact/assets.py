"""Reading what a flood may touch (buildings, roads) one band of the mosaic at a time.

An :class:`AssetLayer` is a vector layer in any CRS (the vectorize stage's polygons, a user's road
lines); a band task reads only the features whose envelope crosses the band (the GeoPackage's
R-tree answers a ``bbox`` filter without a scan), in the mosaic's CRS. Each feature belongs to
exactly one band, the one holding a point inside it (clamped onto the mosaic), so features that
cross band seams are neither lost nor counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio.warp
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS

from geoseg.errors import InputRasterError
from geoseg.impact.reference import bounds_window
from geoseg.io.mosaic import MosaicInfo
from geoseg.vectorize.metres import metres_per_unit

__all__ = [
    "AssetLayer",
    "BandArea",
    "band_area",
    "buffer_units",
    "lengths_m",
    "pixel_window",
    "read_band_features",
    "read_crossing",
    "window_transform",
    "write_part",
]

DENSIFY = 21  # points per edge when a band's bounds go to another CRS
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class AssetLayer:
    """A vector layer of assets; ``where``: an OGR SQL filter (e.g. ``"class" = 'building'``)."""

    path: Path
    layer: str | None = None
    where: str | None = None

    def crs(self) -> CRS:
        info = pyogrio.read_info(self.path, layer=self.layer)
        if not info["crs"]:
            raise InputRasterError(f"{self.path}: the layer has no CRS; set one (ogr2ogr -a_srs EPSG:…)")
        return CRS.from_user_input(info["crs"])


@dataclass(frozen=True)
class BandArea:
    """A band of whole chunk rows of the mosaic: its pixel rows and its bounds in map coordinates."""

    first_row: int
    stop_row: int
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in the mosaic's CRS


def band_area(mosaic: MosaicInfo, first_row: int, stop_row: int) -> BandArea:
    """The band of pixel rows ``first_row:stop_row`` across the whole mosaic."""
    corners = [mosaic.transform @ (col, row) for col in (0, mosaic.width) for row in (first_row, stop_row)]
    xs, ys = zip(*corners, strict=True)
    return BandArea(first_row, stop_row, (min(xs), min(ys), max(xs), max(ys)))


def _home_rows(mosaic: MosaicInfo, geoms: np.ndarray) -> np.ndarray:
    """The pixel row of a point inside each geometry, clamped onto the mosaic."""
    points = shapely.point_on_surface(geoms)
    inverse = ~mosaic.transform
    _, rows = inverse @ (shapely.get_x(points), shapely.get_y(points))
    return np.clip(np.floor(np.asarray(rows, dtype=np.float64)), 0, mosaic.height - 1).astype(np.int64)


def read_crossing(layer: AssetLayer, crs: CRS, bounds: tuple[float, float, float, float]) -> gpd.GeoDataFrame:
    """The layer's features whose envelope crosses ``bounds`` (in ``crs``), in ``crs``, their FID as ``fid``."""
    source_crs = layer.crs()
    bbox = rasterio.warp.transform_bounds(crs, source_crs, *bounds, densify_pts=DENSIFY)
    frame = pyogrio.read_dataframe(layer.path, layer=layer.layer, bbox=bbox, where=layer.where, fid_as_index=True)
    frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)].rename_axis("fid").reset_index()
    # Set, then reprojected: a layer's CRS as pyogrio reads it is not always the one info reports.
    return frame.set_crs(source_crs.to_wkt(), allow_override=True).to_crs(crs.to_wkt())


def read_band_features(layer: AssetLayer, mosaic: MosaicInfo, band: BandArea) -> gpd.GeoDataFrame:
    """The layer's features that belong to ``band``, in the mosaic's CRS, with their FID as ``fid``.

    Features whose envelope misses the band are not read; of those read, a feature belongs to the
    band that holds a point on its surface (see the module's docstring).
    """
    frame = read_crossing(layer, mosaic.crs, band.bounds)
    if not len(frame):
        return frame
    rows = _home_rows(mosaic, frame.geometry.values)
    return frame[(rows >= band.first_row) & (rows < band.stop_row)].reset_index(drop=True)


def write_part(frame: gpd.GeoDataFrame, path: str) -> None:
    """A band's rows as GeoParquet at ``path``, complete or not there at all."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(path + ".partial")
    frame.to_parquet(partial, index=False)
    partial.replace(path)


def buffer_units(crs: CRS, metres: float) -> float:
    """``metres`` in the CRS's units (nominal for a geographic CRS: a degree as 111.32 km)."""
    return metres / metres_per_unit(crs)


def lengths_m(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    """Geodesic length in metres of each (multi)line, on the WGS84 ellipsoid, for any CRS."""
    if not len(geoms):
        return np.zeros(0, np.float64)
    lonlat = gpd.GeoSeries(geoms, crs=crs.to_wkt()).to_crs("EPSG:4326")
    return np.array([_GEOD.geometry_length(g) if not g.is_empty else 0.0 for g in lonlat.values], np.float64)


def pixel_window(mosaic: MosaicInfo, geoms: np.ndarray, margin: int = 1) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)`` of the mosaic pixels under the geometries' envelope, plus ``margin``."""
    if not len(geoms):
        return None
    return bounds_window(mosaic, tuple(shapely.total_bounds(geoms)), margin)


def window_transform(mosaic: MosaicInfo, row0: int, col0: int) -> Affine:
    return mosaic.transform @ Affine.translation(col0, row0)
