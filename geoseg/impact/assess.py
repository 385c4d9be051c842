"""Flood impact of one post-event mosaic: extent, buildings, roads and totals per zone.

:func:`assess_impact` runs, each step band of chunk rows by band (Ray tasks through ``run_tasks``):

1. the ``flood`` array against the reference (:mod:`geoseg.impact.flood`; resumable), and its overview
   levels beside the labels' (:mod:`geoseg.impact.flood_overviews`);
2. its flood water as polygons, merged across seams by the vectorizer (``flood_extent``);
3. buildings (:mod:`geoseg.impact.buildings`) and road lines (:mod:`geoseg.impact.roads`);
4. flood area per zone (:mod:`geoseg.impact.zones`);

then writes the outputs (:mod:`geoseg.impact.outputs`) and returns an :class:`ImpactSummary`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pyogrio

from geoseg.evaluate.confusion import chunk_row_bands
from geoseg.impact.assets import AssetLayer
from geoseg.impact.buildings import BuildingBand, BuildingCounts, building_band, buildings_frame
from geoseg.impact.flood import FLOOD, FLOOD_CLASSES, MIN_BANDS, FloodSummary, write_flood
from geoseg.impact.flood_overviews import write_flood_overviews
from geoseg.impact.outputs import ImpactWriter
from geoseg.impact.reference import Reference
from geoseg.impact.roads import RoadBand, RoadLengths, road_band, roads_frame
from geoseg.impact.zones import OUTSIDE, Zones, ZoneTotals, zone_flood_m2
from geoseg.io.mosaic import open_mosaic
from geoseg.vectorize.classes import RunTasks, in_process, vectorize_mosaic

__all__ = ["ALL", "ImpactInputs", "ImpactSummary", "ZoneImpact", "assess_impact"]

ALL, NO_ZONE = "(all)", "(outside zones)"
SLICE = 2000  # rows per append: the driver's memory follows this


@dataclass(frozen=True)
class ImpactInputs:
    """What :func:`assess_impact` works from (paths; the stage resolves them from the job)."""

    mosaic: Path  # the post-event mosaic.zarr
    reference: Reference  # what was water before
    water_class: int
    folder: Path  # <output_dir>/impact
    buildings: AssetLayer | None = None
    roads: AssetLayer | None = None
    zones: Zones | None = None
    buffer_m: float = 2.0
    min_share: float = 0.1


@dataclass(frozen=True)
class ZoneImpact:
    """One zone's totals (``zone`` is :data:`ALL` for the whole survey)."""

    zone: str
    flooded_km2: float
    mapped_km2: float  # where both the mosaic and the reference have data
    buildings: int
    buildings_flooded: int
    road_km: float
    road_km_flooded: float


@dataclass(frozen=True)
class ImpactSummary:
    flood: FloodSummary
    zones: tuple[ZoneImpact, ...]  # the layer's zones in file order, then NO_ZONE where anything is there
    total: ZoneImpact
    flood_polygons: int
    files: tuple[Path, ...]

    def as_json(self) -> dict[str, Any]:
        pixels = asdict(self.flood.pixels)
        return {
            "flood_pixels": pixels,
            "flood_km2": self.total.flooded_km2,
            "mapped_km2": self.total.mapped_km2,
            "flood_polygons": self.flood_polygons,
            "buildings": self.total.buildings,
            "buildings_flooded": self.total.buildings_flooded,
            "road_km": self.total.road_km,
            "road_km_flooded": self.total.road_km_flooded,
            "zones": [asdict(z) for z in self.zones],
        }


def _bands(mosaic_path: Path) -> list[tuple[int, int]]:
    mosaic = open_mosaic(mosaic_path)
    return chunk_row_bands(mosaic.height, mosaic.chunk, MIN_BANDS)


def _parts(paths: list[Path], empty: gpd.GeoDataFrame) -> Iterator[gpd.GeoDataFrame]:
    """The rows of each part file in order, SLICE at a time, typed as ``empty``."""
    for path in paths:
        frame = gpd.read_parquet(path)
        for start in range(0, len(frame), SLICE):
            yield frame.iloc[start : start + SLICE].astype(empty.dtypes.to_dict())


def _flood_extent(inputs: ImpactInputs, run_tasks: RunTasks) -> Path:
    """The flood water as polygons merged across seams (the vectorizer on the ``flood`` array)."""
    out = inputs.folder / ".flood-extent"
    vectorize_mosaic(inputs.mosaic, out, classes=[FLOOD_CLASSES[2]], labels=FLOOD, run_tasks=run_tasks)
    return out / "polygons.gpkg"


def _gpkg_slices(path: Path) -> Iterator[gpd.GeoDataFrame]:
    rows = int(pyogrio.read_info(path)["features"])
    for start in range(0, rows, SLICE):
        frame = pyogrio.read_dataframe(path, skip_features=start, max_features=SLICE)
        yield frame.drop(columns=["class", "class_id"])


def _measure_buildings(
    inputs: ImpactInputs, bands: list[tuple[int, int]], scratch: Path, run_tasks: RunTasks
) -> tuple[BuildingCounts, list[Path]]:
    """Every band's buildings measured (a part file each, in band order) and counted per zone."""
    if inputs.buildings is None:
        return BuildingCounts({}, {}), []
    parts = [scratch / f"buildings_{i:05d}.parquet" for i in range(len(bands))]
    requests = [
        (
            BuildingBand(
                str(inputs.mosaic),
                inputs.buildings,
                inputs.zones,
                first,
                stop,
                inputs.buffer_m,
                inputs.min_share,
                inputs.water_class,
                str(part),
            ),
        )
        for (first, stop), part in zip(bands, parts, strict=True)
    ]
    counts = BuildingCounts({}, {})
    for result in cast(Iterable[BuildingCounts], run_tasks(building_band, requests)):
        counts = counts + result
    return counts, parts


def _measure_roads(
    inputs: ImpactInputs, bands: list[tuple[int, int]], scratch: Path, run_tasks: RunTasks
) -> tuple[RoadLengths, list[Path]]:
    """Every band's road stretches measured (flooded ones to a part file each) and totalled per zone."""
    if inputs.roads is None:
        return RoadLengths({}, {}), []
    parts = [scratch / f"roads_{i:05d}.parquet" for i in range(len(bands))]
    requests = [
        (RoadBand(str(inputs.mosaic), inputs.roads, inputs.zones, first, stop, inputs.buffer_m, str(part)),)
        for (first, stop), part in zip(bands, parts, strict=True)
    ]
    lengths = RoadLengths({}, {})
    for result in cast(Iterable[RoadLengths], run_tasks(road_band, requests)):
        lengths = lengths + result
    return lengths, parts


def assess_impact(
    inputs: ImpactInputs, run_tasks: RunTasks = in_process, log: Callable[[str], None] = lambda _: None
) -> ImpactSummary:
    """Write the flood, measure what it touches, and write the impact outputs (see the module)."""
    flood = write_flood(inputs.mosaic, inputs.reference, inputs.water_class, run_tasks)
    levels = write_flood_overviews(str(inputs.mosaic))
    log(
        f"impact: flood extent: {flood.chunks_computed} of {flood.chunks} chunks computed now; "
        f"overviews {levels or 'none'}"
    )
    extent = _flood_extent(inputs, run_tasks)
    scratch = inputs.folder / ".parts"
    shutil.rmtree(scratch, ignore_errors=True)
    bands = _bands(inputs.mosaic)
    counts, building_parts = _measure_buildings(inputs, bands, scratch, run_tasks)
    lengths, road_parts = _measure_roads(inputs, bands, scratch, run_tasks)
    areas = zone_flood_m2(inputs.mosaic, inputs.zones, run_tasks) if inputs.zones else _whole_area(flood)
    rows = _zone_rows(inputs.zones, areas, counts, lengths)
    crs_wkt = open_mosaic(inputs.mosaic).crs.to_wkt()
    buildings, roads = _empty_buildings(crs_wkt), _empty_roads(crs_wkt)
    with ImpactWriter(inputs.folder) as writer:
        polygons = writer.write_layer("flood_extent", "Polygon", _gpkg_slices(extent), _empty_extent(crs_wkt))
        writer.write_layer("buildings", "Polygon", _parts(building_parts, buildings), buildings)
        writer.write_layer("roads", "LineString", _parts(road_parts, roads), roads)
        zones = _zones_frame(inputs.zones, rows, crs_wkt)
        writer.write_layer("zones", "Polygon", [zones], zones.iloc[:0])
        summary = ImpactSummary(flood, tuple(rows), _total(rows), polygons, writer.files)
        writer.write_table([asdict(r) for r in [*rows, summary.total]], summary.as_json())
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(extent.parent, ignore_errors=True)
    return summary


def _whole_area(flood: FloodSummary) -> ZoneTotals:
    """Without zones: the whole survey as one zone (pixel areas of the mosaic's transform)."""
    pixel = flood.pixel_area_m2 or 0.0
    known = flood.pixels.dry + flood.pixels.permanent + flood.pixels.flood
    return ZoneTotals({OUTSIDE: flood.pixels.flood * pixel}, {OUTSIDE: known * pixel})


def _zone_rows(
    zones: Zones | None, areas: ZoneTotals, counts: BuildingCounts, lengths: RoadLengths
) -> list[ZoneImpact]:
    names = zones.names if zones is not None else []
    # Outside every zone: a row only when something is there (not the slivers zone borders leave
    # when they are reprojected: under a square metre, under a metre of road).
    if areas.known_m2.get(OUTSIDE, 0.0) >= 1 or counts.total.get(OUTSIDE, 0) or lengths.total_m.get(OUTSIDE, 0.0) >= 1:
        names = [*names, OUTSIDE]
    return [
        ZoneImpact(
            zone=NO_ZONE if name == OUTSIDE else name,
            flooded_km2=areas.flood_m2.get(name, 0.0) / 1e6,
            mapped_km2=areas.known_m2.get(name, 0.0) / 1e6,
            buildings=counts.total.get(name, 0),
            buildings_flooded=counts.flooded.get(name, 0),
            road_km=lengths.total_m.get(name, 0.0) / 1000,
            road_km_flooded=lengths.flooded_m.get(name, 0.0) / 1000,
        )
        for name in names
    ]


def _total(rows: list[ZoneImpact]) -> ZoneImpact:
    return ZoneImpact(
        ALL,
        sum(r.flooded_km2 for r in rows),
        sum(r.mapped_km2 for r in rows),
        sum(r.buildings for r in rows),
        sum(r.buildings_flooded for r in rows),
        sum(r.road_km for r in rows),
        sum(r.road_km_flooded for r in rows),
    )


def _empty_extent(crs_wkt: str) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"area_m2": np.zeros(0, np.float64)}, geometry=gpd.GeoSeries([], crs=crs_wkt))


def _empty_buildings(crs_wkt: str) -> gpd.GeoDataFrame:
    return buildings_frame({}, [], crs_wkt)


def _empty_roads(crs_wkt: str) -> gpd.GeoDataFrame:
    return roads_frame({}, [], crs_wkt)


def _zones_frame(zones: Zones | None, rows: list[ZoneImpact], crs_wkt: str) -> gpd.GeoDataFrame:
    """The zones with their totals (one feature per zone name: a zone in several polygons is dissolved)."""
    columns = list(ZoneImpact.__dataclass_fields__)
    if zones is None or not len(zones.frame):
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry=gpd.GeoSeries([], crs=crs_wkt))
    shapes = zones.frame.dissolve(by="zone", sort=False)
    by_name = {r.zone: r for r in rows}
    kept = [name for name in zones.names if name in by_name]
    data = {c: [getattr(by_name[name], c) for name in kept] for c in columns}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(shapes.geometry.loc[kept].values, crs=crs_wkt))
