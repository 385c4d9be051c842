"""Which buildings the flood reaches: per building its flooded share, a flag and a confidence.

A roof stays above the water around a flooded house, so a building is judged on its footprint
grown by ``buffer_m`` (the ring of ground around it): ``flooded_share`` is the share of that
buffered footprint's known pixels (by pixel centre) that are flood water in the ``flood`` array,
and ``flooded`` is ``flooded_share >= min_share``. ``water_confidence`` is the model's mean water
probability over those flood pixels (from ``mosaic.zarr/scores`` when the job writes them; empty
otherwise). Each band of chunk rows is one task (:mod:`geoseg.impact.assets` says which buildings
are its own); it writes its rows to a Parquet part, and returns its counts per zone.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely

from geoseg.impact.assets import (
    AssetLayer,
    band_area,
    buffer_units,
    pixel_window,
    read_band_features,
    window_transform,
    write_part,
)
from geoseg.impact.flood import FLOOD, FLOODED, UNKNOWN
from geoseg.impact.zones import OUTSIDE, Zones, add_per_zone
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.vectorize.metres import areas_m2

__all__ = ["BuildingBand", "BuildingCounts", "building_band", "buildings_frame"]


@dataclass(frozen=True)
class BuildingBand:
    """One task: the buildings of pixel rows ``first_row:stop_row`` of a mosaic with a ``flood`` array."""

    mosaic: str
    buildings: AssetLayer
    zones: Zones | None
    first_row: int
    stop_row: int
    buffer_m: float
    min_share: float
    water_class: int
    part: str  # where the band's rows go (GeoParquet)


@dataclass(frozen=True)
class BuildingCounts:
    """Buildings and flooded buildings, in all and per zone name."""

    total: dict[str, int]
    flooded: dict[str, int]

    def __add__(self, other: BuildingCounts) -> BuildingCounts:
        return BuildingCounts(add_per_zone(self.total, other.total), add_per_zone(self.flooded, other.flooded))


def buildings_frame(rows: dict, geoms, crs_wkt: str) -> gpd.GeoDataFrame:
    """The ``buildings`` layer's columns, in order (also its empty schema)."""
    columns = {
        "building_id": np.asarray(rows.get("building_id", []), np.int64),
        "area_m2": np.asarray(rows.get("area_m2", []), np.float64),
        "flooded": np.asarray(rows.get("flooded", []), bool),
        "flooded_share": np.asarray(rows.get("flooded_share", []), np.float64),
        "water_confidence": np.asarray(rows.get("water_confidence", []), np.float64),
        "zone": np.asarray(rows.get("zone", []), dtype=object),
    }
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=crs_wkt))


def _measure(mosaic: MosaicInfo, buffered: np.ndarray, water_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Each buffered footprint's flooded share of known pixels and its mean water probability (NaN: none)."""
    share = np.full(len(buffered), np.nan)
    confidence = np.full(len(buffered), np.nan)
    window = pixel_window(mosaic, buffered)
    if window is None:
        return share, confidence
    row0, row1, col0, col1 = window
    codes = np.asarray(mosaic.array(FLOOD)[row0:row1, col0:col1])
    water = np.asarray(mosaic.array("scores")[water_class, row0:row1, col0:col1]) if mosaic.has_scores else None
    scale = 255.0 if water is not None and water.dtype == np.uint8 else 1.0
    for i, geom in enumerate(buffered):
        own = pixel_window(mosaic, np.array([geom]))
        if own is None:
            continue
        r0, r1, c0, c1 = own
        inside = rasterio.features.geometry_mask(
            [geom], out_shape=(r1 - r0, c1 - c0), transform=window_transform(mosaic, r0, c0), invert=True
        )
        block = codes[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]
        known = inside & (block != UNKNOWN)
        flooded = known & (block == FLOODED)
        if known.any():
            share[i] = flooded.sum() / known.sum()
        if water is not None and flooded.any():
            confidence[i] = water[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0][flooded].mean() / scale
    return share, confidence


def building_band(band: BuildingBand) -> BuildingCounts:
    """Measure the band's buildings, write them to ``band.part``, and count them per zone."""
    mosaic = open_mosaic(band.mosaic)
    crs_wkt = mosaic.crs.to_wkt()
    frame = read_band_features(band.buildings, mosaic, band_area(mosaic, band.first_row, band.stop_row))
    geoms = frame.geometry.values
    buffered = shapely.buffer(geoms, buffer_units(mosaic.crs, band.buffer_m)) if len(geoms) else geoms
    share, confidence = _measure(mosaic, np.asarray(buffered), band.water_class)
    flooded = np.nan_to_num(share, nan=0.0) >= band.min_share
    zones = (
        band.zones.of_points(shapely.point_on_surface(geoms))
        if band.zones is not None
        else np.full(len(geoms), OUTSIDE, dtype=object)
    )
    rows = {
        "building_id": frame["fid"].to_numpy() if len(frame) else [],
        "area_m2": areas_m2(np.asarray(geoms), mosaic.crs) if len(geoms) else [],
        "flooded": flooded,
        "flooded_share": share,
        "water_confidence": confidence,
        "zone": zones,
    }
    out = buildings_frame(rows, np.asarray(geoms), crs_wkt)
    write_part(out, band.part)
    total: dict[str, int] = {}
    hit: dict[str, int] = {}
    for zone, is_flooded in zip(zones.tolist(), flooded.tolist(), strict=True):
        total[zone] = total.get(zone, 0) + 1
        hit[zone] = hit.get(zone, 0) + int(is_flooded)
    return BuildingCounts(total, hit)
