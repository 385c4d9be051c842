"""GeoJSON features rendered by GEOS, in the layout GDAL's RFC 7946 writer uses.

GDAL's GeoJSON driver took most of the vectorize stage's writing time: ~0.5 ms a feature for
pixel-edge polygons (1.7 s of 6 s for the demo's 3,500 features), where GEOS renders the same
geometries ten times faster (``shapely.to_geojson``). This module renders with GEOS and lays
the text out as GDAL does (one feature a line, ``{ "type": "Feature", "properties": { ... },
"geometry": { ... } }``), so that the files read the same and the line-based splicing and
promotion of :mod:`geoseg.vectorize.stream` keep working.

What RFC 7946 (https://www.rfc-editor.org/rfc/rfc7946) asks of the geometry, done here as GDAL's
``RFC7946=YES`` does it: longitude/latitude in WGS 84, exterior rings counter-clockwise and holes
clockwise (§3.1.6), coordinates to 7 decimals (~1 cm; §11.2 advises limiting precision). Geometries
crossing the antimeridian, which GDAL would cut in two (§3.1.9), and columns of types other than
numbers, booleans and text are left to GDAL's writer (:func:`renders_here` says which).

Property reals are written in their shortest round-trip form (float32 columns as float32), where
GDAL writes 17 significant digits and trims what looks like rounding noise (``0.1 + 0.2`` reads
back as 0.3 from GDAL's file and as itself from this one); NaN and missing values are written as
``null``, as GDAL writes unset fields.
"""

from __future__ import annotations

import json
import math
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

__all__ = ["collection_header", "render_features", "renders_here"]

COORDINATE_DECIMALS = 7  # GDAL's RFC 7946 default: ~1 cm on the ground
# A ring's first coordinate follows a "(" directly; its last is followed by a ")".
_RING_OPEN = re.compile(r"\((?=[-\d])")
_RING_CLOSE = re.compile(r"\)(?<=[\d.]\))")
# What is rendered here (WKT name → GeoJSON name): the types whose innermost parentheses hold a coordinate list.
GEOJSON_TYPES = {
    "POLYGON": "Polygon",
    "MULTIPOLYGON": "MultiPolygon",
    "LINESTRING": "LineString",
    "MULTILINESTRING": "MultiLineString",
}


def collection_header(layer: str) -> str:
    """The FeatureCollection's opening lines, as GDAL writes them (the features follow on the next line)."""
    return f'{{\n"type": "FeatureCollection",\n"name": {json.dumps(layer, ensure_ascii=False)},\n"features": [\n'


def renders_here(frame: gpd.GeoDataFrame) -> bool:
    """True when :func:`render_features` renders ``frame`` as GDAL's RFC 7946 writer would.

    False for a geometry spanning more than 180° of longitude (GDAL cuts it at the antimeridian)
    for columns holding anything but numbers, booleans and text, and for geometries other than
    (multi)polygons and (multi)lines.
    """
    for _, column in frame.drop(columns=frame.geometry.name).items():
        if not (
            pd.api.types.is_numeric_dtype(column)
            or pd.api.types.is_bool_dtype(column)
            or pd.api.types.is_string_dtype(column)
        ):
            return False
        if pd.api.types.is_object_dtype(column) and not all(v is None or isinstance(v, str) for v in column):
            return False
    if not len(frame):
        return True
    if not set(frame.geometry.dropna().geom_type) <= set(GEOJSON_TYPES.values()):
        return False
    bounds = shapely.bounds(frame.geometry.values)
    return bool(np.nan_to_num(bounds[:, 2] - bounds[:, 0]).max() <= 180.0)


def _json_value(value) -> str:
    if value is None or value is pd.NA:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.float32):  # its own shortest form, as GDAL writes a Float32 field
        return str(value) if math.isfinite(value) else "null"
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else "null"
    return json.dumps(str(value), ensure_ascii=False)


def _values(column: pd.Series) -> list:
    """The column's values as Python scalars, float32 kept as such (its shortest form is not float64's)."""
    return list(column.to_numpy()) if column.dtype == np.float32 else column.tolist()


def _properties(frame: gpd.GeoDataFrame) -> list[str]:
    """Each row's ``"properties"`` object, GDAL's spacing (``{ "a": 1, "b": "x" }``, ``{ }`` when empty)."""
    columns = [name for name in frame.columns if name != frame.geometry.name]
    if not columns:
        return ["{ }"] * len(frame)
    keys = [json.dumps(str(name), ensure_ascii=False) + ": " for name in columns]
    values = [[_json_value(v) for v in _values(frame[name])] for name in columns]
    return [
        "{ " + ", ".join(key + value for key, value in zip(keys, row, strict=True)) + " }"
        for row in zip(*values, strict=True)
    ]


def _coordinates(wkt: str) -> tuple[str, str]:
    """A WKT geometry's GeoJSON type and coordinates in GDAL's spacing (types of :data:`GEOJSON_TYPES`).

    ``((x y, x y), (x y, ...))`` → ``[ [ [ x, y ], [ x, y ] ], [ [ x, y ], ... ] ]``: string
    replacements, because formatting a million numbers one by one in Python costs as much as
    GDAL's writer.
    """
    kind, body = wkt.split(" ", 1)
    body = body.replace("), (", ")|(").replace(", ", "~").replace(" ", ", ").replace("~", " ], [ ")
    body = _RING_CLOSE.sub(" ] ]", _RING_OPEN.sub("[ [ ", body))
    return GEOJSON_TYPES[kind], body.replace("(", "[ ").replace(")", " ]").replace("|", ", ")


def _geometries(geometries: np.ndarray) -> list[str]:
    """Each geometry as GDAL lays it out (``{ "type": "Polygon", "coordinates": [ [ [ x, y ], ... ] ] }``)."""
    oriented = shapely.orient_polygons(geometries, exterior_cw=False)
    texts = shapely.to_wkt(oriented, rounding_precision=COORDINATE_DECIMALS, trim=True)
    out = []
    for text in texts.tolist():
        if text is None:
            out.append("null")
            continue
        kind, coordinates = _coordinates(text)
        out.append(f'{{ "type": "{kind}", "coordinates": {coordinates} }}')
    return out


def render_features(frame: gpd.GeoDataFrame) -> str:
    """``frame``'s features (EPSG:4326), one a line, comma-separated, no trailing newline.

    Each geometry is written as its own type; a layer declared MultiPolygon promotes Polygon
    lines itself (:func:`geoseg.vectorize.stream.promote_lines`).
    """
    shapes = np.array(frame.geometry.values, dtype=object)
    shapes[shapely.is_empty(shapes)] = None  # GDAL writes "geometry": null for them too
    geometries = _geometries(shapes)
    lines = [
        f'{{ "type": "Feature", "properties": {props}, "geometry": {geom} }}'
        for props, geom in zip(_properties(frame), geometries, strict=True)
    ]
    return ",\n".join(lines)
