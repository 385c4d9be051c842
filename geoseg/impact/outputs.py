"""The impact outputs: ``impact.gpkg`` (four layers), a GeoJSON per layer, ``impact.csv``, ``impact.json``.

Everything goes under ``<output_dir>/impact/``:

- ``impact.gpkg`` (GeoPackage 1.2, the scene's CRS), layers ``flood_extent`` (flood-water polygons),
  ``buildings`` (every building with ``flooded``, ``flooded_share``, ``water_confidence``, ``zone``),
  ``roads`` (the flooded stretches of the road lines, ``road_id`` joining them to the source layer)
  and ``zones`` (each zone with its totals);
- ``<layer>.geojson`` for each layer, in EPSG:4326 (RFC 7946: longitude, latitude);
- ``impact.csv``: one row per zone (and ``(outside zones)``, ``(all)``); ``impact.json``: the same and the totals.

Layers are appended a slice at a time (one GeoPackage transaction and one block of GeoJSON per
slice), so memory follows a slice, not the survey. The GeoPackage and every GeoJSON are written
under hidden partial names and renamed only when all are complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio

from geoseg.vectorize.geojson_text import collection_header
from geoseg.vectorize.stream import render_geojson

__all__ = ["IMPACT_GPKG", "ImpactWriter", "LayerStream"]

IMPACT_GPKG = "impact.gpkg"
_MULTI = {"Polygon": "MultiPolygon", "LineString": "MultiLineString"}


def _partial(final: Path) -> Path:
    return final.with_name(f".{final.stem}.partial{final.suffix}")


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class LayerStream:
    """One layer of the GeoPackage and its GeoJSON, appended slice by slice."""

    def __init__(self, gpkg: Path, folder: Path, layer: str, geometry: str) -> None:
        self.gpkg, self.layer, self.geometry = gpkg, layer, _MULTI.get(geometry, geometry)
        self.geojson = folder / f"{layer}.geojson"
        self.rows = 0
        self._json = open(_partial(self.geojson), "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._json.write(collection_header(layer))

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if not len(frame):
            return
        pyogrio.write_dataframe(
            frame,
            self.gpkg,
            layer=self.layer,
            driver="GPKG",
            geometry_type=self.geometry,
            promote_to_multi=True,
            append=self.rows > 0,
            **({"dataset_options": {"VERSION": "1.2"}} if not self.gpkg.exists() else {}),
        )
        # "Unknown": each feature keeps its own type in the GeoJSON (the GeoPackage layer is Multi-).
        features = render_geojson(frame.to_crs("EPSG:4326"), self.layer, "Unknown")[1]
        self._json.write((",\n" if self.rows else "") + features)
        self.rows += len(frame)

    def close(self, empty: gpd.GeoDataFrame) -> None:
        """Finish the GeoJSON; give the GeoPackage the layer's schema if no slice had a row."""
        if not self.rows:
            pyogrio.write_dataframe(
                empty, self.gpkg, layer=self.layer, driver="GPKG", geometry_type=self.geometry, promote_to_multi=True
            )
        self._json.write("\n]\n}\n")
        self._json.close()

    def abort(self) -> None:
        self._json.close()
        _partial(self.geojson).unlink(missing_ok=True)


class ImpactWriter:
    """The impact folder's files, completed together (use as a context manager)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.gpkg = self.folder / IMPACT_GPKG
        self.streams: list[LayerStream] = []

    def __enter__(self) -> ImpactWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        _partial(self.gpkg).unlink(missing_ok=True)  # left by a killed run: GDAL would add to it
        return self

    def layer(self, name: str, geometry: str) -> LayerStream:
        stream = LayerStream(_partial(self.gpkg), self.folder, name, geometry)
        self.streams.append(stream)
        return stream

    def write_layer(self, name: str, geometry: str, slices: Iterable[gpd.GeoDataFrame], empty: gpd.GeoDataFrame) -> int:
        """Append every slice to layer ``name``; its row count."""
        stream = self.layer(name, geometry)
        for frame in slices:
            stream.write(frame)
        stream.close(empty)
        return stream.rows

    def write_table(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """``impact.csv`` (one row per zone) and ``impact.json`` (``summary``), under partial names."""
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        table.writeheader()
        table.writerows([{key: _json_value(value) for key, value in row.items()} for row in rows])
        _partial(self.folder / "impact.csv").write_text(text.getvalue(), encoding="utf-8")
        _partial(self.folder / "impact.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this writer completes: the GeoPackage, the tables, each layer's GeoJSON."""
        tables = (self.folder / "impact.csv", self.folder / "impact.json")
        return (self.gpkg, *tables, *(stream.geojson for stream in self.streams))

    def __exit__(self, kind, exc, trace) -> None:
        finals = self.files
        if exc is None:
            for final in finals:
                if _partial(final).exists():
                    os.replace(_partial(final), final)
            return
        for stream in self.streams:
            stream.abort()
        for final in finals:
            _partial(final).unlink(missing_ok=True)
