"""Which stretches of road the flood covers: flooded lengths of a road-line layer.

A road line is flooded where flood water lies within ``buffer_m`` of it: the band's flood pixels
are grown by the buffer (a disk), turned into polygons, and each line is cut by them. Lines are
cut at band seams first (:func:`shapely.clip_by_rect`), so a road crossing many bands is measured a
band at a time with bounded memory; its flooded stretches come out as one row per band and zone,
with the road's FID (``road_id``) to join them back. Lengths are geodesic metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from geoseg.impact.assets import AssetLayer, band_area, buffer_units, lengths_m, read_crossing, write_part
from geoseg.impact.flood import FLOOD, FLOODED
from geoseg.impact.zones import OUTSIDE, Zones, add_per_zone
from geoseg.io.mosaic import MosaicInfo, open_mosaic

__all__ = ["RoadBand", "RoadLengths", "road_band", "roads_frame"]


@dataclass(frozen=True)
class RoadBand:
    """One task: the road lines crossing pixel rows ``first_row:stop_row`` of a mosaic with a ``flood`` array."""

    mosaic: str
    roads: AssetLayer
    zones: Zones | None
    first_row: int
    stop_row: int
    buffer_m: float
    part: str  # where the band's flooded stretches go (GeoParquet)


@dataclass(frozen=True)
class RoadLengths:
    """Road length and flooded road length in metres, per zone name."""

    total_m: dict[str, float]
    flooded_m: dict[str, float]

    def __add__(self, other: RoadLengths) -> RoadLengths:
        return RoadLengths(add_per_zone(self.total_m, other.total_m), add_per_zone(self.flooded_m, other.flooded_m))


def roads_frame(rows: dict, geoms, crs_wkt: str) -> gpd.GeoDataFrame:
    """The ``roads`` layer's columns, in order (also its empty schema)."""
    columns = {
        "road_id": np.asarray(rows.get("road_id", []), np.int64),
        "name": np.asarray(rows.get("name", []), dtype=object),
        "zone": np.asarray(rows.get("zone", []), dtype=object),
        "flooded_m": np.asarray(rows.get("flooded_m", []), np.float64),
    }
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=crs_wkt))


def _flood_cover(mosaic: MosaicInfo, first_row: int, stop_row: int, grow: int) -> np.ndarray:
    """Polygons (map coordinates) of the band's flood water grown by ``grow`` pixels (a disk)."""
    top, bottom = max(0, first_row - grow), min(mosaic.height, stop_row + grow)
    flooded = np.asarray(mosaic.array(FLOOD)[top:bottom, :]) == FLOODED
    if grow > 0 and flooded.any():
        y, x = np.ogrid[-grow : grow + 1, -grow : grow + 1]
        flooded = ndimage.binary_dilation(flooded, structure=(x * x + y * y) <= grow * grow)
    flooded = flooded[first_row - top : stop_row - top]
    transform = mosaic.transform @ Affine.translation(0, first_row)
    shapes = rasterio.features.shapes(flooded.astype(np.uint8), mask=flooded, transform=transform)
    return np.array([shapely.geometry.shape(geom) for geom, _ in shapes], dtype=object)


def _by_zone(zones: Zones | None, geoms: np.ndarray) -> list[tuple[int, str, object]]:
    if zones is None:
        return [(i, OUTSIDE, g) for i, g in enumerate(geoms)]
    return zones.cut(geoms)


def road_band(band: RoadBand) -> RoadLengths:
    """Measure the band's stretch of every road line; write the flooded stretches to ``band.part``."""
    mosaic = open_mosaic(band.mosaic)
    crs_wkt = mosaic.crs.to_wkt()
    area = band_area(mosaic, band.first_row, band.stop_row)
    frame = read_crossing(band.roads, mosaic.crs, area.bounds)
    lines = shapely.clip_by_rect(frame.geometry.values, *area.bounds) if len(frame) else np.zeros(0, object)
    keep = ~shapely.is_empty(lines) if len(lines) else np.zeros(0, bool)
    fids = frame["fid"].to_numpy()[keep]
    names = frame["name"].astype(str).to_numpy()[keep] if "name" in frame.columns else np.full(keep.sum(), "")
    lines = lines[keep]
    grow = int(np.ceil(buffer_units(mosaic.crs, band.buffer_m) / abs(mosaic.transform.a)))
    cover = _flood_cover(mosaic, band.first_row, band.stop_row, grow) if len(lines) else np.zeros(0, object)
    wet = _flooded_parts(lines, cover)
    total: dict[str, float] = {}
    pieces = _by_zone(band.zones, lines)
    for (_, zone, _), metres in zip(pieces, _lengths(pieces, mosaic.crs), strict=True):
        total[zone] = total.get(zone, 0.0) + metres
    rows: dict[str, list] = {"road_id": [], "name": [], "zone": [], "flooded_m": []}
    geoms: list = []
    flooded: dict[str, float] = {}
    pieces = _by_zone(band.zones, wet)
    for (index, zone, piece), metres in zip(pieces, _lengths(pieces, mosaic.crs), strict=True):
        if metres <= 0:
            continue
        flooded[zone] = flooded.get(zone, 0.0) + metres
        rows["road_id"].append(int(fids[index]))
        rows["name"].append(str(names[index]))
        rows["zone"].append(zone)
        rows["flooded_m"].append(metres)
        geoms.append(shapely.line_merge(piece))  # the stretches of one road in one band and zone, joined
    out = roads_frame(rows, np.array(geoms, dtype=object), crs_wkt)
    write_part(out, band.part)
    return RoadLengths(total, flooded)


def _lengths(pieces: list[tuple[int, str, object]], crs: CRS) -> list[float]:
    """The geodesic length in metres of each piece, measured in one batch."""
    geoms = np.empty(len(pieces), dtype=object)
    geoms[:] = [piece for _, _, piece in pieces]
    return [float(m) for m in lengths_m(geoms, crs)]


def _flooded_parts(lines: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Each line's part inside the flood cover (an empty geometry where none)."""
    wet = np.array([shapely.LineString() for _ in range(len(lines))], dtype=object)
    if not len(lines) or not len(cover):
        return wet
    tree = shapely.STRtree(cover)
    for i, line in enumerate(lines):
        touching = tree.query(line, predicate="intersects")
        if len(touching):
            parts = shapely.get_parts(shapely.intersection(line, shapely.union_all(cover[touching])))
            lines_only = parts[shapely.get_type_id(parts) == 1]  # a line grazing a corner also gives points
            if len(lines_only):
                wet[i] = shapely.multilinestrings(lines_only)
    return wet
