"""The impact stage's outputs on the report: its per-zone table, the flood extent, flooded buildings and roads.

Everything is read from what the stage left in ``<output_dir>/impact/`` (and ``metrics.json``), so a
page rebuilt later shows the same; nothing is recomputed. The table's numbers are those of
``metrics.json`` → ``impact`` (the copy evaluate keeps and scores), each tagged with its pointer
there, so they can be checked against the file like every other number of the page. The flood
extent is the mosaic's ``flood`` array, decimated and warped onto the very grid of the prediction
image; the vector layers are the stage's GeoJSONs, thinned like the run's own polygons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyogrio

from geoseg.config.paths import JobPaths
from geoseg.errors import InputRasterError
from geoseg.impact.assess import ALL
from geoseg.impact.flood import FLOOD, FLOODED, PERMANENT
from geoseg.io.mosaic import open_mosaic
from geoseg.io.pixel_arrays import labels_view
from geoseg.report.content import (
    ImageOverlay,
    ImpactRow,
    ImpactTable,
    LegendEntry,
    ReportExtras,
    VectorLayer,
    json_pointer,
)
from geoseg.report.overlays import MAX_SIDE, MercatorGrid, class_palette, classes_png, mercator_grid
from geoseg.report.vectors import MAX_FEATURES, thinned_layer

__all__ = ["FLOOD_COLOUR", "IMPACT_COLUMNS", "IMPACT_LAYERS", "PERMANENT_COLOUR", "impact_extras"]

# Flood water must stand out from the prediction's own water (#1f5fbf) under it; permanent water recedes.
FLOOD_COLOUR, FLOOD_ALPHA = "#00e5ff", 230
PERMANENT_COLOUR, PERMANENT_ALPHA = "#a6cee3", 160


@dataclass(frozen=True)
class ImpactColumn:
    """A column of the table: its heading, its member in a zone's row and in the totals (the top level)."""

    title: str
    zone_key: str
    total_key: str


IMPACT_COLUMNS = (
    ImpactColumn("flooded area (km²)", "flooded_km2", "flood_km2"),
    ImpactColumn("mapped area (km²)", "mapped_km2", "mapped_km2"),
    ImpactColumn("buildings flooded", "buildings_flooded", "buildings_flooded"),
    ImpactColumn("buildings", "buildings", "buildings"),
    ImpactColumn("road km flooded", "road_km_flooded", "road_km_flooded"),
    ImpactColumn("road km", "road_km", "road_km"),
)


@dataclass(frozen=True)
class ImpactLayer:
    """One of the stage's GeoJSONs as a map layer: what its pop-ups list, what "largest" means, its colour."""

    file: str  # under impact/
    id: str
    name: str
    popup: tuple[str, ...]
    size: str  # kept largest first by this when thinned
    legend: str  # its features' ``class``: the page colours a feature by its class's legend entry
    colour: str
    where: str | None = None  # OGR SQL: the subset drawn
    shown: bool = True


# In drawing order: the zones (large, under everything, off until chosen), roads, then buildings on top.
IMPACT_LAYERS = (
    ImpactLayer(
        "zones.geojson",
        "zones",
        "zones",
        ("zone", "flooded_km2", "mapped_km2", "buildings", "buildings_flooded", "road_km", "road_km_flooded"),
        "flooded_km2",
        "zone",
        "#7b3294",
        shown=False,
    ),
    ImpactLayer(
        "roads.geojson",
        "roads",
        "flooded roads",
        ("road_id", "name", "zone", "flooded_m"),
        "flooded_m",
        "flooded road",
        "#ff7f00",
    ),
    ImpactLayer(
        "buildings.geojson",
        "buildings",
        "flooded buildings",
        ("building_id", "zone", "flooded_share", "water_confidence", "area_m2"),
        "area_m2",
        "flooded building",
        "#e7298a",
        where="flooded = 1",
    ),
)


def _summary(paths: JobPaths) -> tuple[dict[str, Any], str, str]:
    """(the impact totals, the file they are read from, their pointer there): metrics.json's copy if it has one."""
    if paths.metrics.exists():
        metrics = json.loads(paths.metrics.read_text())
        if isinstance(metrics.get("impact"), dict) and "zones" in metrics["impact"]:
            return metrics["impact"], paths.metrics.name, json_pointer("impact")
    summary = paths.impact / "impact.json"
    return json.loads(summary.read_text()), str(summary.relative_to(paths.root)), ""


def impact_table(paths: JobPaths) -> ImpactTable:
    """One row per zone, then the ``(all)`` totals; every number tagged with its pointer in the file read."""
    summary, file, key = _summary(paths)
    rows = [
        ImpactRow(
            str(zone["zone"]),
            tuple(zone[c.zone_key] for c in IMPACT_COLUMNS),
            tuple(f"{key}{json_pointer('zones', r, c.zone_key)}" for c in IMPACT_COLUMNS),
        )
        for r, zone in enumerate(summary.get("zones", []))
    ]
    if all(c.total_key in summary for c in IMPACT_COLUMNS):
        totals = tuple(summary[c.total_key] for c in IMPACT_COLUMNS)
        rows.append(ImpactRow(ALL, totals, tuple(f"{key}{json_pointer(c.total_key)}" for c in IMPACT_COLUMNS)))
    return ImpactTable(tuple(c.title for c in IMPACT_COLUMNS), tuple(rows), file=file, key=f"{key}/zones")


def flood_overlay(paths: JobPaths, max_side: int = MAX_SIDE) -> tuple[ImageOverlay, MercatorGrid] | None:
    """The mosaic's ``flood`` array on the prediction image's grid (and that grid); None without one.

    Flood water and permanent water in their colours; dry land and unknown pixels clear.
    """
    try:
        mosaic = open_mosaic(paths.mosaic)
    except InputRasterError:
        return None
    if FLOOD not in mosaic.group:
        return None
    try:
        flood = labels_view(mosaic, FLOOD)
    except ValueError:  # not the impact stage's array (no class names): not drawn as if it were
        return None
    grid = mercator_grid(mosaic, max_side)  # from the mosaic as run_map's: the same grid, the same bounds
    palette = class_palette(
        {PERMANENT: PERMANENT_COLOUR, FLOODED: FLOOD_COLOUR}, {PERMANENT: PERMANENT_ALPHA, FLOODED: FLOOD_ALPHA}
    )
    png = classes_png(flood, grid, palette, max_side)
    return ImageOverlay("flood", "flood extent", png, grid.bounds, opacity=1.0), grid


def _vector_layer(path: Path, spec: ImpactLayer, tolerance_deg: float, max_features: int) -> VectorLayer:
    # An empty GeoJSON has no fields to filter on (and nothing to filter).
    where = spec.where if spec.where and pyogrio.read_info(path)["fields"].size else None
    layer = thinned_layer(
        path,
        tolerance_deg=tolerance_deg,
        max_features=max_features,
        name=spec.name,
        popup=spec.popup,
        size=spec.size,
        where=where,
    )
    for feature in layer.features["features"]:
        feature["properties"]["class"] = spec.legend  # drawn in its legend colour, not in a class's
    return replace(layer, id=spec.id, shown=spec.shown)


def impact_extras(paths: JobPaths, max_side: int = MAX_SIDE, max_features: int = MAX_FEATURES) -> ReportExtras | None:
    """What the impact stage adds to the page (None when it has not run: no ``impact/impact.json``).

    Args:
        paths: the job's output folders.
        max_side: pixels a side of the flood image (as the prediction image's).
        max_features: the most features drawn of each layer (the largest; the page says how many were left out).
    """
    if not (paths.impact / "impact.json").exists():
        return None
    legend: list[LegendEntry] = []
    overlays: tuple[ImageOverlay, ...] = ()
    tolerance = 0.0
    flood = flood_overlay(paths, max_side)
    if flood is not None:
        overlay, grid = flood
        overlays, tolerance = (overlay,), grid.pixel_deg / 2
        legend += [LegendEntry("flood water", FLOOD_COLOUR), LegendEntry("permanent water", PERMANENT_COLOUR)]
    vectors = []
    for spec in IMPACT_LAYERS:
        path = paths.impact / spec.file
        if path.exists():
            vectors.append(_vector_layer(path, spec, tolerance, max_features))
            legend.append(LegendEntry(spec.legend, spec.colour))
    return ReportExtras(impact=impact_table(paths), overlays=overlays, vectors=tuple(vectors), legend=tuple(legend))
