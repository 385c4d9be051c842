"""The report's interactive map: which layers a run's outputs give, and the JSON the page's script reads."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.config.paths import JobPaths
from geoseg.errors import InputRasterError
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.report.content import ImageOverlay, LatLonBounds, LegendEntry, ReportExtras, VectorLayer
from geoseg.report.overlays import MAX_SIDE, MercatorGrid, legend, mercator_grid, prediction_overlay, scene_overlay
from geoseg.report.vectors import MAX_FEATURES, thinned_layer
from geoseg.vectorize.export import LAYER

__all__ = ["MapContent", "geojson_path", "map_json", "run_map"]


@dataclass(frozen=True)
class MapContent:
    bounds: LatLonBounds | None  # what the map opens on; None: nothing to show, no map
    overlays: tuple[ImageOverlay, ...]
    vectors: tuple[VectorLayer, ...]
    legend: tuple[LegendEntry, ...]
    notes: tuple[str, ...]  # said under the map: what was thinned, what is missing and why


def geojson_path(paths: JobPaths) -> Path:
    """The vectorize stage's features in EPSG:4326 (RFC 7946), the form the map draws."""
    return paths.vectors / f"{LAYER}.geojson"


def _mosaic(paths: JobPaths) -> tuple[MosaicInfo | None, str]:
    """The run's mosaic, or why there is none (the page says so; a run without predict is a fine run)."""
    if not paths.mosaic.exists():
        return None, "no prediction mosaic in the output folder: no scene or prediction images"
    try:
        return open_mosaic(paths.mosaic), ""
    except InputRasterError as exc:
        return None, f"the prediction mosaic could not be opened: {exc}"


def _raster_layers(mosaic: MosaicInfo, max_side: int) -> tuple[list[ImageOverlay], list[str], MercatorGrid]:
    grid = mercator_grid(mosaic, max_side)
    overlays, notes = [], []
    scene = scene_overlay(mosaic, grid, max_side)
    if isinstance(scene, str):
        notes.append(f"scene image not shown: {scene}")
    else:
        overlays.append(scene)
    overlays.append(prediction_overlay(mosaic, grid, max_side))
    return overlays, notes, grid


def run_map(
    paths: JobPaths,
    class_names: list[str] | tuple[str, ...],
    *,
    extras: ReportExtras | None = None,
    max_side: int = MAX_SIDE,
    max_features: int = MAX_FEATURES,
) -> MapContent:
    """The map of what the run left: scene and prediction images, its polygons, and a later stage's ``extras``."""
    overlays: list[ImageOverlay] = []
    vectors: list[VectorLayer] = []
    notes: list[str] = []
    bounds: LatLonBounds | None = None
    tolerance = 0.0  # without images, the features are drawn as the file has them
    mosaic, missing = _mosaic(paths)
    if mosaic is not None:
        overlays, notes, grid = _raster_layers(mosaic, max_side)
        bounds, class_names = grid.bounds, mosaic.class_names
        # Half a pixel of the images: finer detail would not show beside them, and it weighs on the page.
        tolerance = grid.pixel_deg / 2
    else:
        notes.append(missing)
    geojson = geojson_path(paths)
    if geojson.exists():
        layer = thinned_layer(geojson, tolerance_deg=tolerance, max_features=max_features, name=LAYER)
        vectors.append(layer)
        notes.append(layer.note)
    extras = extras or ReportExtras()
    overlays += extras.overlays
    vectors += extras.vectors
    notes += [layer.note for layer in extras.vectors if layer.note]
    for extent in [o.bounds for o in overlays] + [v.bounds for v in vectors if v.bounds is not None]:
        bounds = extent if bounds is None else bounds.union(extent)
    return MapContent(bounds, tuple(overlays), tuple(vectors), legend(class_names) + extras.legend, tuple(notes))


def _overlay(overlay: ImageOverlay) -> dict[str, Any]:
    return {
        "id": overlay.id,
        "name": overlay.name,
        "url": "data:image/png;base64," + base64.b64encode(overlay.png).decode("ascii"),
        "bounds": overlay.bounds.leaflet(),
        "opacity": overlay.opacity,
        "shown": overlay.shown,
    }


def _vectors(layer: VectorLayer) -> dict[str, Any]:
    return {
        "id": layer.id,
        "name": layer.name,
        "features": layer.features,
        "popup": list(layer.popup),
        "shown": layer.shown,
    }


def map_json(content: MapContent) -> str:
    """The map as JSON safe inside ``<script type="application/json">`` (no ``<``, ``>`` or ``&`` can end it)."""
    data = {
        "bounds": content.bounds.leaflet() if content.bounds else None,
        "overlays": [_overlay(o) for o in content.overlays],
        "vectors": [_vectors(v) for v in content.vectors],
        "colours": {entry.name: entry.colour for entry in content.legend},
        "legend": [{"name": e.name, "colour": e.colour, "note": e.note} for e in content.legend],
        "legend_title": "classes",
    }
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
