"""The run's polygons for the map: the largest ones, simplified, so a survey's page stays light.

A 2,500 km² survey can hold millions of polygons and a GeoJSON of gigabytes; a browser draws a
few thousand SVG paths smoothly. The GeoJSON is streamed in batches of rows (never whole in
memory) keeping the ``max_features`` largest by area, then those are simplified to about half a
pixel of the map's overlays and cut further to a budget of vertices. The page states how many
were left out: the file itself holds them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyogrio import open_arrow

from geoseg.report.content import LatLonBounds, VectorLayer

__all__ = ["MAX_FEATURES", "MAX_VERTICES", "POPUP", "thinned_layer"]

MAX_FEATURES = 2000
MAX_VERTICES = 200_000  # across all kept features: ~4 MB of coordinates
POPUP = ("id", "row", "class", "class_id", "score", "area_m2")
_ROW = "row"  # a feature's 0-based row in the GeoJSON (GDAL's FID there), its id when the file has no ``id``
_AREA = "area_m2"
_FID = "OGC_FID"  # pyogrio's column of GDAL's FIDs
_DEGREE_DIGITS = 7  # 1e-7 degree is about a centimetre: finer digits only make the page bigger


def _largest(
    path: Path, max_features: int, batch_size: int, size: str = _AREA, where: str | None = None
) -> tuple[pa.Table, str, int]:
    """The ``max_features`` rows largest by ``size`` (the first ones without it), and the count of rows read.

    With ``where`` (an OGR SQL filter) only matching rows are read, and each keeps its row in the file (GDAL's FID).
    """
    kept: pa.Table | None = None
    total = 0
    subset = {"where": where, "return_fids": True} if where is not None else {}
    with open_arrow(path, use_pyarrow=True, batch_size=batch_size, **subset) as (meta, reader):
        geometry = meta["geometry_name"] or "wkb_geometry"
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if where is not None:
                table = table.rename_columns([_ROW if c == _FID else c for c in table.column_names])
            else:
                table = table.append_column(_ROW, pa.array(np.arange(total, total + len(table), dtype=np.int64)))
            total += len(table)
            kept = table if kept is None else pa.concat_tables([kept, table], promote_options="permissive")
            if len(kept) > max_features:
                if size in kept.column_names:  # ties by row, so the same file always gives the same page
                    order = pc.sort_indices(kept, sort_keys=[(size, "descending"), (_ROW, "ascending")])
                    kept = kept.take(order[:max_features])
                else:
                    kept = kept.slice(0, max_features)
    if kept is None:
        kept = pa.table({geometry: pa.array([], pa.binary()), _ROW: pa.array([], pa.int64())})
    elif size in kept.column_names:
        kept = kept.take(pc.sort_indices(kept, sort_keys=[(size, "descending"), (_ROW, "ascending")]))
    return kept, geometry, total


def _within_budget(geoms: np.ndarray, max_vertices: int) -> int:
    """How many of ``geoms`` (largest first) fit in ``max_vertices``; at least one."""
    counts = np.cumsum(shapely.get_num_coordinates(geoms))
    return max(1, int(np.searchsorted(counts, max_vertices, side="right"))) if len(geoms) else 0


def _feature(geom: Any, properties: dict[str, Any]) -> dict[str, Any]:
    # NaN is not JSON: the page's JSON.parse would refuse the whole map for one missing score.
    clean = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in properties.items()}
    shape = None if geom is None else json.loads(shapely.to_geojson(geom))
    return {"type": "Feature", "properties": clean, "geometry": shape}


def thinned_layer(
    path: Path,
    *,
    tolerance_deg: float,
    max_features: int = MAX_FEATURES,
    max_vertices: int = MAX_VERTICES,
    name: str = "polygons",
    batch_size: int = 65_536,
    popup: tuple[str, ...] = POPUP,
    size: str = _AREA,
    where: str | None = None,
) -> VectorLayer:
    """``path`` (GeoJSON in EPSG:4326) as a map layer of its largest features, simplified by ``tolerance_deg``.

    Simplifying in degrees is for display only (the areas shown are the file's own ``area_m2``):
    the tolerance is about half a pixel of the overlays, which are the finest thing on the map.
    Another stage's layer names its pop-up fields (``popup``), what "largest" is measured by
    (``size``: a length, a flooded area) and, with ``where`` (OGR SQL), the subset it shows.
    """
    table, geometry, total = _largest(path, max_features, batch_size, size, where)
    geoms = shapely.from_wkb(table.column(geometry).to_numpy(zero_copy_only=False))
    if tolerance_deg > 0:
        geoms = shapely.simplify(geoms, tolerance_deg, preserve_topology=True)
    geoms = shapely.transform(geoms, lambda xy: np.round(xy, _DEGREE_DIGITS))
    count = _within_budget(geoms, max_vertices)
    rows = table.drop_columns([geometry]).slice(0, count).to_pylist()
    has_id = "id" in table.column_names
    features = [
        _feature(geom, {k: v for k, v in row.items() if not (k == _ROW and has_id)})
        for geom, row in zip(geoms[:count], rows, strict=True)
    ]
    west, south, east, north = shapely.total_bounds(geoms[:count]) if count else (np.nan,) * 4
    bounds = LatLonBounds(south, west, north, east) if count else None
    left_out = total - count
    source = f"{path.name} where {where}" if where else path.name
    if not left_out:
        note = f"{name}: all {total:,} features of {source}"
    else:
        note = (
            f"{name}: the {count:,} largest of {total:,} features of {source} (by {size}); "
            f"{left_out:,} smaller ones are left out of this page to keep it responsive (the file has them all)"
        )
    return VectorLayer(
        id=name,
        name=f"{name} ({count:,} of {total:,})" if left_out else name,
        features={"type": "FeatureCollection", "features": features},
        popup=tuple(key for key in popup if key in table.column_names and not (key == _ROW and has_id)),
        total=total,
        bounds=bounds,
        note=note,
    )
