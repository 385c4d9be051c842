"""Box tables: one object box per row of a CSV (``xmin, ymin, xmax, ymax, label``), as DeepForest writes them.

``box_coords: pixel`` reads the numbers as columns (x) and rows (y) of the image from its
top-left corner, on pixel edges: the box 10, 20, 15, 30 covers columns 10 to 14 and rows 20 to
29, numpy's ``[20:30, 10:15]``. ``box_coords: map`` reads them as coordinates in the image's CRS
(``ymin`` is then the south edge). Each box becomes a rectangle in the scene's CRS, keeping the
table's other columns as attributes: semantic training paints the rectangle with its class, and
instance training (Mask R-CNN) gets one object per box, with that box and a mask filling it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from geoseg.config.locations import is_uri
from geoseg.errors import InputVectorError
from geoseg.io.raster import SceneInfo

__all__ = ["BOX_COLUMNS", "BOX_FIELD", "read_box_table"]

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
BOX_FIELD = "label"  # DeepForest's class column: the default label_field of a box table
_IMAGE_COLUMN = "image_path"  # DeepForest names each box's image; one table holds one image's boxes here


def read_box_table(
    path: str | Path, *, scene: SceneInfo, where: str, box_coords: Literal["pixel", "map"]
) -> tuple[gpd.GeoDataFrame, list[str]]:
    """The table's boxes as rectangles in the scene CRS, and one line per kind of bad row (all at once).

    Rows with a problem are left out of the frame; any problem is the caller's to raise.
    """
    table = _read_csv(path, where)
    missing = [column for column in BOX_COLUMNS if column not in table.columns]
    if missing:
        attributes = table.drop(columns=[c for c in BOX_COLUMNS if c in table.columns])  # its class column is checked
        return gpd.GeoDataFrame(attributes, geometry=[None] * len(table), crs=scene.crs), [
            f"{where}: missing column(s) {missing!r} (has {list(table.columns)!r}); a box table needs columns "
            "xmin, ymin, xmax, ymax and a class column (label_field; default label)"
        ]
    numbers = table[list(BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    problems = []
    not_numbers = numbers.isna().any(axis=1).to_numpy()
    if not_numbers.any():
        row = int(np.flatnonzero(not_numbers)[0])
        column = next(c for c in BOX_COLUMNS if pd.isna(numbers[c].iloc[row]))
        problems.append(
            f"{where}: {int(not_numbers.sum())} row(s) with a coordinate that is not a number (first: line "
            f"{row + 2}, {column} {table[column].iloc[row]!r}); write plain numbers (e.g. 12.5) or remove the rows"
        )
    usable = ~not_numbers
    flipped = usable & ((numbers.xmax <= numbers.xmin) | (numbers.ymax <= numbers.ymin)).to_numpy()
    if flipped.any():
        problems.append(
            f"{where}: {int(flipped.sum())} box(es) with xmax <= xmin or ymax <= ymin (first: "
            f"{_row(numbers, flipped)}); give each box its low edges in xmin, ymin and its high edges in xmax, ymax"
        )
    usable &= ~flipped
    outside = usable & _outside(numbers, scene, box_coords)
    if outside.any():
        problems.append(
            f"{where}: {int(outside.sum())} of {len(table)} box(es) lie wholly outside the image "
            f"{scene.path.name} ({_extent(scene, box_coords)}) (first: {_row(numbers, outside)}); check box_coords "
            "(pixel or map) and that the table belongs to this image"
        )
    problems += _several_images(table, scene, where)
    keep = usable & ~outside
    return _rectangles(table[keep], numbers[keep], scene, box_coords), problems


def _read_csv(path: str | Path, where: str) -> pd.DataFrame:
    if not is_uri(path) and not Path(path).exists():
        raise InputVectorError(f"{where}: file not found; check the path in the job file")
    try:  # GDAL's CSV reader (as for vector labels): local files and s3:// alike, every column as text
        return pyogrio.read_dataframe(str(path), read_geometry=False)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        raise InputVectorError(f"{where}: not a readable CSV table ({exc})") from None


def _outside(numbers: pd.DataFrame, scene: SceneInfo, box_coords: str) -> np.ndarray:
    """Boxes that share no area with the image (touching an edge is outside)."""
    if box_coords == "pixel":
        west, south, east, north = 0.0, 0.0, float(scene.width), float(scene.height)  # y: rows, top down
    else:
        west, south, east, north = scene.bounds
    return (
        (numbers.xmax <= west) | (numbers.xmin >= east) | (numbers.ymax <= south) | (numbers.ymin >= north)
    ).to_numpy()


def _extent(scene: SceneInfo, box_coords: str) -> str:
    if box_coords == "pixel":
        return f"x 0 to {scene.width}, y 0 to {scene.height} pixels"
    west, south, east, north = (_number(v) for v in scene.bounds)
    return f"x {west} to {east}, y {south} to {north} in its CRS"


def _row(numbers: pd.DataFrame, rows: np.ndarray) -> str:
    """The first marked row as ``line N: xmin, ymin, xmax, ymax`` (CSV line numbers count the header)."""
    row = int(np.flatnonzero(rows)[0])
    return f"line {row + 2}: " + ", ".join(_number(numbers[c].iloc[row]) for c in BOX_COLUMNS)


def _number(value: float) -> str:
    """A plain number: whole numbers without a decimal point."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _several_images(table: pd.DataFrame, scene: SceneInfo, where: str) -> list[str]:
    if _IMAGE_COLUMN not in table.columns:
        return []
    images = sorted({str(v) for v in table[_IMAGE_COLUMN].dropna()})
    if len(images) <= 1:
        return []
    shown = ", ".join(images[:5]) + (", ..." if len(images) > 5 else "")
    return [
        f"{where}: boxes of {len(images)} images in column {_IMAGE_COLUMN} ({shown}); keep only the rows of "
        f"{scene.path.name} (one table per training image)"
    ]


def _rectangles(table: pd.DataFrame, numbers: pd.DataFrame, scene: SceneInfo, box_coords: str) -> gpd.GeoDataFrame:
    """Each box as a polygon in the scene CRS, with the table's other columns."""
    boxes = shapely.box(numbers.xmin, numbers.ymin, numbers.xmax, numbers.ymax)
    if box_coords == "pixel":  # pixel edges -> map coordinates through the image's affine transform
        t = scene.transform

        def to_map(xy: np.ndarray) -> np.ndarray:
            col, row = xy[:, 0], xy[:, 1]
            return np.column_stack((t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f))

        boxes = shapely.transform(boxes, to_map)
    attributes = table.drop(columns=list(BOX_COLUMNS)).reset_index(drop=True)
    return gpd.GeoDataFrame(attributes, geometry=np.asarray(boxes), crs=scene.crs)
