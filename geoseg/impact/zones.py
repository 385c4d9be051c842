"""Zones (districts, parishes…) that impact is totalled by, and the flooded area inside each.

A zones layer is small (tens to thousands of polygons), so each process reads it whole, once, in
the mosaic's CRS. Everything else is assigned to zones here: a building by a point inside its
footprint (one zone each, even on a border), a road stretch by cutting it at zone borders, a flood
pixel by its centre (zones burnt into each chunk of the ``flood`` array, one band of chunk rows per
task, like :mod:`geoseg.impact.flood`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import InputRasterError
from geoseg.evaluate.confusion import chunk_row_bands
from geoseg.impact.flood import FLOOD, FLOODED, MIN_BANDS
from geoseg.io.mosaic import open_mosaic
from geoseg.vectorize.classes import RunTasks, in_process
from geoseg.vectorize.metres import pixel_areas_m2

__all__ = ["OUTSIDE", "ZoneTotals", "Zones", "zone_flood_m2"]

OUTSIDE = ""  # the zone name of what lies in no zone


@dataclass(frozen=True)
class Zones:
    """A zones layer (any CRS) whose ``field`` names each zone, read in ``crs`` (the mosaic's)."""

    path: Path
    field: str
    crs: CRS
    layer: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "field": self.field, "crs": self.crs, "layer": self.layer}

    @cached_property
    def frame(self) -> gpd.GeoDataFrame:
        """The zones in the mosaic's CRS: columns ``zone`` (the name) and ``geometry``, in file order."""
        frame = gpd.read_file(self.path, layer=self.layer, engine="pyogrio")
        if frame.crs is None:
            raise InputRasterError(f"{self.path}: impact.zones: the layer has no CRS; set one (ogr2ogr -a_srs)")
        names = frame[self.field].astype(str) if self.field in frame.columns else None
        if names is None:
            raise InputRasterError(f"{self.path}: impact.zones: no field {self.field!r}")
        zones = gpd.GeoDataFrame({"zone": names}, geometry=frame.geometry.to_crs(self.crs.to_wkt()))
        return zones[~(zones.geometry.isna() | zones.geometry.is_empty)].reset_index(drop=True)

    @property
    def names(self) -> list[str]:
        """Each zone's name once, in file order."""
        return list(dict.fromkeys(self.frame["zone"]))

    def of_points(self, points: np.ndarray) -> np.ndarray:
        """The zone name of each point (object array of shapely Points), :data:`OUTSIDE` where none."""
        names = np.full(len(points), OUTSIDE, dtype=object)
        if len(points) and len(self.frame):
            tree = shapely.STRtree(self.frame.geometry.values)
            point, zone = tree.query(points, predicate="within")
            # On a shared border a point may fall in two: the first zone in file order wins.
            order = np.lexsort((zone, point))[::-1]
            names[point[order]] = self.frame["zone"].to_numpy()[zone[order]]
        return names

    def cut(self, geoms: np.ndarray) -> list[tuple[int, str, Any]]:
        """``(index, zone, piece)`` for each geometry cut at zone borders (the part in no zone: :data:`OUTSIDE`)."""
        pieces: list[tuple[int, str, Any]] = []
        zones = self.frame
        tree = shapely.STRtree(zones.geometry.values)
        for index, geom in enumerate(geoms):
            inside = []
            for z in tree.query(geom, predicate="intersects"):
                part = shapely.intersection(geom, zones.geometry.values[z])
                if not part.is_empty:
                    pieces.append((index, str(zones["zone"].values[z]), part))
                    inside.append(zones.geometry.values[z])
            rest = shapely.difference(geom, shapely.union_all(inside)) if inside else geom
            if not rest.is_empty and rest.length > 0:
                pieces.append((index, OUTSIDE, rest))
        return pieces


def add_per_zone(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two per-zone tallies added, zone by zone (the zones of ``a`` first, in order)."""
    return {key: a.get(key, 0) + b.get(key, 0) for key in dict.fromkeys([*a, *b])}


@dataclass(frozen=True)
class ZoneTotals:
    """Flood-water area (m²) and known area (m²) per zone name, :data:`OUTSIDE` included."""

    flood_m2: dict[str, float]
    known_m2: dict[str, float]

    def __add__(self, other: ZoneTotals) -> ZoneTotals:
        return ZoneTotals(add_per_zone(self.flood_m2, other.flood_m2), add_per_zone(self.known_m2, other.known_m2))


def _zone_raster(zones: Zones, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel's zone number (1-based row of ``zones.frame``; 0: none), burnt by pixel centre."""
    frame = zones.frame
    burnt = np.zeros(shape, np.int32)
    if len(frame):
        # Burnt in reverse file order, so where zones overlap the first one's number is on top (as of_points).
        shapes = [(geom, i + 1) for i, geom in reversed(list(enumerate(frame.geometry.values)))]
        rasterio.features.rasterize(shapes, out=burnt, transform=transform)
    return burnt


def zone_band(mosaic_path: str, zones: Zones, first_row: int, stop_row: int) -> ZoneTotals:
    """Flood-water and known area per zone over the chunks in pixel rows ``first_row:stop_row``."""
    mosaic = open_mosaic(mosaic_path)
    flood = mosaic.array(FLOOD)
    names = np.array([OUTSIDE, *zones.frame["zone"].tolist()], dtype=object)
    flood_m2: dict[str, float] = {}
    known_m2: dict[str, float] = {}
    for row, col, h, w in mosaic.chunk_windows():
        if not first_row <= row < stop_row:
            continue
        codes = np.asarray(flood[row : row + h, col : col + w])
        number = _zone_raster(zones, mosaic.transform @ Affine.translation(col, row), (h, w))
        # One pixel area per chunk, at its centre: exact for a projected CRS, within 0.1% for a geographic one.
        pixel_m2 = float(pixel_areas_m2(mosaic.transform, mosaic.crs, [row + h / 2], [col + w / 2])[0])
        flooded = np.bincount(number[codes == FLOODED], minlength=len(names))
        known = np.bincount(number[codes != 255], minlength=len(names))
        for i in np.flatnonzero(known):
            name = str(names[i])
            flood_m2[name] = flood_m2.get(name, 0.0) + float(flooded[i]) * pixel_m2
            known_m2[name] = known_m2.get(name, 0.0) + float(known[i]) * pixel_m2
    return ZoneTotals(flood_m2, known_m2)


def zone_flood_m2(mosaic_path: str | Path, zones: Zones, run_tasks: RunTasks = in_process) -> ZoneTotals:
    """Flood-water area per zone over the whole ``flood`` array, band of chunk rows by band."""
    mosaic = open_mosaic(mosaic_path)
    requests = [
        (str(mosaic_path), zones, first, stop)
        for first, stop in chunk_row_bands(mosaic.height, mosaic.chunk, MIN_BANDS)
    ]
    total = ZoneTotals({}, {})
    for result in cast(Iterable[ZoneTotals], run_tasks(zone_band, requests)):
        total = total + result
    return total
