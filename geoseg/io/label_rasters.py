"""Label rasters: class values on a grid, named through a value -> class table, painted onto the scene grid.

A label raster's value names its class through, in this order: the source's ``label_map``
(keys are the values as text, ``"1"``, ``"255"``); else the raster's own category names (GDAL
keeps them for a GeoTIFF in the ``.aux.xml`` beside it: a ``CategoryNames`` list, or the name
column of a raster attribute table), which ``label_map`` may rename too. Without either, the
values are indexes into the job's ``classes`` and 255 means no label, as ``evaluate.labels``
reads a label raster. A colour table alone names nothing.

Painting, window by window: a value naming a class paints that class; one naming a class of
``train.ignore_classes`` paints nothing (as vector features of those classes are left out); the
raster's nodata paints :data:`~geoseg.io.labels.IGNORE` (no label is known there, so training skips
it); outside the raster nothing is painted. A raster on another grid than the scene is reprojected
as it is read (GDAL's warped VRT, nearest neighbour), never resampled whole.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from shapely.geometry import box

from geoseg.config.label_values import label_text
from geoseg.config.locations import is_uri
from geoseg.io.label_geometry import no_overlap
from geoseg.io.raster import SceneInfo, iter_blocks

__all__ = ["IGNORE", "UNPAINTED", "LabelRaster", "load_label_raster", "raster_category_names"]

IGNORE = 255  # as geoseg.io.labels.IGNORE: no label known, skipped by losses and metrics
UNPAINTED = -1  # a pixel this source leaves as the sources before it painted it
_NAME_USAGE, _MIN_MAX_USAGE, _MIN_USAGE, _STRING_TYPE = "2", "5", "3", "2"  # GDAL's GFU_Name, GFU_MinMax, ...


@dataclass(frozen=True)
class LabelRaster:
    """A checked label raster: what each of its values paints on the scene grid.

    ``lookup`` pairs each raster value with a class index, :data:`IGNORE` or :data:`UNPAINTED`;
    ``layer`` is its place among the scene's label sources (later ones paint over earlier ones).
    """

    path: str
    where: str
    lookup: tuple[tuple[float, int], ...]
    warped: bool
    layer: int = 0

    @contextmanager
    def reader(self, scene: SceneInfo) -> Iterator[rasterio.io.DatasetReaderBase]:
        """The raster on the scene's grid: itself, or a warped view (NaN outside the raster) when not on it."""
        with rasterio.open(self.path) as src:
            if not self.warped:
                yield src
                return
            # Source nodata NaN never matches an integer value, so nodata pixels keep their value (and
            # paint IGNORE); only pixels outside the raster come out NaN (and paint nothing).
            with WarpedVRT(
                src,
                crs=scene.crs,
                transform=scene.transform,
                width=scene.width,
                height=scene.height,
                resampling=Resampling.nearest,
                src_nodata=np.nan,
                nodata=np.nan,
                dtype="float64",
            ) as vrt:
                yield vrt

    def paint(self, out: np.ndarray, reader: rasterio.io.DatasetReaderBase, window: Window) -> None:
        """Paint this raster's classes over ``out`` (a window of the scene) where it has one."""
        values = reader.read(1, window=window)
        found, inverse = np.unique(values, return_inverse=True)
        table = dict(self.lookup)
        codes = np.array([table.get(float(value), UNPAINTED) for value in found], np.int64)
        painted = codes[inverse.reshape(values.shape)]
        where = painted != UNPAINTED
        out[where] = painted[where]


def load_label_raster(
    path: str | Path,
    *,
    scene: SceneInfo,
    classes: list[str],
    where: str,
    label_map: Mapping[str, str],
    ignore: list[str] | tuple[str, ...] = (),
) -> tuple[LabelRaster | None, list[str]]:
    """Check a label raster against the scene and classes: the raster, or every problem found (one line each)."""
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        missing = not is_uri(path) and not Path(path).exists()
        reason = "file not found; check the path in the job file" if missing else f"not a readable raster ({exc})"
        return None, [f"{where}: {reason}"]
    with src:
        crs = src.crs
        same_grid = (src.height, src.width) == (scene.height, scene.width) and src.transform.almost_equals(
            scene.transform
        )
        if crs is None and not same_grid:
            return None, [
                f"{where}: label raster has no CRS and is not on the scene's grid; save it with its CRS "
                "(gdal_edit.py -a_srs EPSG:<code>)"
            ]
        crs = crs or scene.crs
        warped = not (same_grid and crs == scene.crs)
        problems = _outside(src, crs, scene, where)
        if problems:
            return None, problems
        values = _values_over(src, crs, scene)
        nodata = src.nodata
    names = raster_category_names(path)
    lookup, problems = _lookup(values, nodata, names, label_map, classes, ignore, where)
    if problems:
        return None, problems
    return LabelRaster(path=str(path), where=where, lookup=lookup, warped=warped), []


def _outside(src, crs, scene: SceneInfo, where: str) -> list[str]:
    """A line when the raster and the scene do not overlap (the same message as for label features)."""
    footprint = gpd.GeoDataFrame(geometry=[box(*src.bounds)], crs=crs).to_crs(scene.crs)
    return no_overlap(footprint, crs, np.array(src.bounds), scene, where, what="pixel of the label raster")


def _values_over(src, crs, scene: SceneInfo, rows: int = 512) -> set[float]:
    """Every value the raster holds over the scene, read a strip of rows at a time."""
    bounds = transform_bounds(scene.crs, crs, *scene.bounds, densify_pts=21) if crs != scene.crs else scene.bounds
    cover = from_bounds(*bounds, transform=src.transform)  # fractional: widened to whole pixels, clipped
    row0, col0 = max(0, math.floor(cover.row_off)), max(0, math.floor(cover.col_off))
    row1 = min(src.height, math.ceil(cover.row_off + cover.height))
    col1 = min(src.width, math.ceil(cover.col_off + cover.width))
    if row1 <= row0 or col1 <= col0:  # touching at most along an edge: nothing to read
        return set()
    area = Window(col0, row0, col1 - col0, row1 - row0)
    found: set[float] = set()
    for strip in iter_blocks(int(area.height), int(area.width), rows):
        window = Window(area.col_off + strip.col_off, area.row_off + strip.row_off, strip.width, strip.height)
        found.update(float(v) for v in np.unique(src.read(1, window=window)))
    return found


def _lookup(
    values: set[float],
    nodata: float | None,
    names: Mapping[float, str],
    label_map: Mapping[str, str],
    classes: list[str],
    ignore: list[str] | tuple[str, ...],
    where: str,
) -> tuple[tuple[tuple[float, int], ...], list[str]]:
    """Each value's paint (class index, IGNORE or UNPAINTED), and a line per kind of value that has none."""
    indexes = not label_map and not names  # no table: values are class indexes, as evaluate.labels reads them
    lookup: dict[float, int] = {}
    unnamed: list[float] = []
    unknown: dict[str, float] = {}
    for value in sorted(values):
        if nodata is not None and (value == nodata or (value != value and nodata != nodata)):
            lookup[value] = IGNORE
            continue
        if indexes:
            if value == IGNORE or (value.is_integer() and 0 <= value < len(classes)):
                lookup[value] = int(value)
            else:
                unnamed.append(value)
            continue
        name = _name_of(value, names, label_map)
        if name is None:
            unnamed.append(value)
        elif name in classes:
            lookup[value] = classes.index(name)
        elif name in ignore:
            lookup[value] = UNPAINTED
        else:
            unknown.setdefault(name, value)
    return tuple(lookup.items()), _table_problems(unnamed, unknown, indexes, classes, where)


def _name_of(value: float, names: Mapping[float, str], label_map: Mapping[str, str]) -> str | None:
    """The class name ``label_map`` gives the value (as text), else its category name (which label_map may rename)."""
    text = label_text(value)
    if text in label_map:
        return label_map[text]
    if value in names:
        return label_map.get(names[value], names[value])
    return None


def _table_problems(
    unnamed: list[float], unknown: dict[str, float], indexes: bool, classes: list[str], where: str
) -> list[str]:
    problems = []
    listed = "[" + ", ".join(label_text(v) for v in unnamed) + "]"
    example = ", ".join(f'"{label_text(v)}": <class>' for v in unnamed[:3])
    if unnamed and indexes:
        problems.append(
            f"{where}: values {listed} are not class indexes (0 to {len(classes) - 1} for classes: "
            f"{', '.join(classes)}; 255: no label) and the raster has no category names; name each value's "
            f"class with label_map: {{{example}}}"
        )
    elif unnamed:
        problems.append(
            f"{where}: values {listed} are in neither label_map nor the raster's category names; add them to "
            f"label_map: {{{example}}} (a class of train.ignore_classes leaves them unpainted)"
        )
    if unknown:
        problems.append(
            f"{where}: class names {sorted(unknown)!r} (of values "
            f"{', '.join(label_text(unknown[name]) for name in sorted(unknown))}) are not in the job's classes "
            f"{classes!r}; add them to `classes:` or `train.ignore_classes:`, or map them with label_map"
        )
    return problems


def raster_category_names(path: str | Path) -> dict[float, str]:
    """Value -> name from the raster's GDAL metadata (``<file>.aux.xml``), empty where it has none.

    Its ``CategoryNames`` (entry i names value i) and a raster attribute table's name column.

    rasterio exposes neither (only band descriptions and colour tables), so the sidecar GDAL
    writes for a GeoTIFF is read here; an object-storage raster has no names read.
    """
    aux = Path(f"{path}.aux.xml")
    if is_uri(path) or not aux.is_file():
        return {}
    band = next((b for b in ElementTree.parse(aux).getroot().iter("PAMRasterBand") if b.get("band", "1") == "1"), None)
    if band is None:
        return {}
    names: dict[float, str] = {}
    categories = band.find("CategoryNames")
    if categories is not None:
        names = {float(i): (c.text or "").strip() for i, c in enumerate(categories.findall("Category"))}
    table = band.find("GDALRasterAttributeTable")
    if table is not None:
        names = {**names, **_attribute_table_names(table)}  # the table's names win where both name a value
    return {value: name for value, name in names.items() if name}


def _attribute_table_names(table: ElementTree.Element) -> dict[float, str]:
    """Value -> name of a GDAL raster attribute table (PAM XML).

    Names: the Name-usage column, else the first text column. Values: the MinMax (else Min) column,
    else linear binning (Row0Min + row * BinSize).
    """
    usage = {
        int(f.get("index", "0")): (f.findtext("Usage", "0"), f.findtext("Type", "1")) for f in table.iter("FieldDefn")
    }
    name_col = next((i for i, (u, _) in sorted(usage.items()) if u == _NAME_USAGE), None)
    if name_col is None:
        name_col = next((i for i, (_, t) in sorted(usage.items()) if t == _STRING_TYPE), None)
    value_col = next((i for i, (u, _) in sorted(usage.items()) if u in (_MIN_MAX_USAGE, _MIN_USAGE)), None)
    if name_col is None:
        return {}
    start, step = float(table.get("Row0Min", "0")), float(table.get("BinSize", "1"))
    names = {}
    for row in table.iter("Row"):
        fields = [f.text or "" for f in row.findall("F")]
        value = float(fields[value_col]) if value_col is not None else start + int(row.get("index", "0")) * step
        names[value] = fields[name_col].strip() if name_col < len(fields) else ""
    return names
