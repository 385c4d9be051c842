"""The instance outputs: an ``instances`` array in the mosaic and the instance table.

``mosaic.zarr/instances`` is uint32 (y, x), chunked like ``labels`` (one
chunk per tile core), 0 where no instance is. Ids run 1..N with no gaps, in
row-major order of each instance's first pixel (smallest row, then smallest
column), so the same predictions always give the same ids, whatever the
chunk size or the order tiles finished in.

``instances.parquet`` (beside the mosaic) has one row per id:

=========  =======  ===========================================================
column     type     meaning
=========  =======  ===========================================================
id         uint32   the value in ``instances``
class_id   uint8    class index (``labels`` holds it under the instance)
class      string   class name
score      float32  detection confidence (NaN for connected components)
row_min    int64    bounding box in mosaic pixels (``*_max`` exclusive)
col_min    int64
row_max    int64
col_max    int64
area_px    int64    pixels of the instance
area_m2    float64  ground area in m² (geodesic where the CRS's scale is not true)
=========  =======  ===========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from geoseg.errors import InputRasterError
from geoseg.io.mosaic import MosaicInfo
from geoseg.io.pixel_arrays import create_pixel_array

__all__ = [
    "INSTANCES",
    "TABLE_COLUMNS",
    "InstanceTableWriter",
    "create_instance_array",
    "empty_instance_table",
    "read_instance_table",
    "table_from_columns",
    "write_instance_table",
]

INSTANCES = "instances"
TABLE_COLUMNS = {
    "id": "uint32",
    "class_id": "uint8",
    "class": "object",
    "score": "float32",
    "row_min": "int64",
    "col_min": "int64",
    "row_max": "int64",
    "col_max": "int64",
    "area_px": "int64",
    "area_m2": "float64",
}


def create_instance_array(mosaic: MosaicInfo) -> zarr.Array:
    """Add (or replace) the empty ``instances`` array, with the mosaic's georeferencing attributes."""
    meaning = {"long_name": "instance id (0: none); see instances.parquet"}
    return create_pixel_array(mosaic, INSTANCES, dtype="uint32", fill_value=0, meaning=meaning)


def empty_instance_table() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in TABLE_COLUMNS.items()})


def write_instance_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as Parquet under a temporary name, then rename it into place."""
    with InstanceTableWriter(path) as writer:
        writer.write(table)
    return Path(path)


class InstanceTableWriter:
    """``instances.parquet`` appended a row group per batch (rows in id order), renamed into place when whole.

    The table of a survey with millions of instances is written as its ids become final,
    never held whole. Leaving the ``with`` block on an exception removes the partial file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.schema = pa.schema(
            [
                (name, pa.string() if dtype == "object" else pa.from_numpy_dtype(dtype))
                for name, dtype in TABLE_COLUMNS.items()
            ]
        )
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> InstanceTableWriter:
        self.partial.unlink(missing_ok=True)
        self._writer = pq.ParquetWriter(self.partial, self.schema)
        return self

    def write(self, table: pd.DataFrame) -> None:
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"instance table lacks columns {missing!r}")
        assert self._writer is not None, "use InstanceTableWriter in a with block"
        rows = table[list(TABLE_COLUMNS)].astype(TABLE_COLUMNS)
        self._writer.write_table(pa.Table.from_pandas(rows, schema=self.schema, preserve_index=False))
        self.rows += len(rows)

    def __exit__(self, kind, exc, trace) -> None:
        assert self._writer is not None
        self._writer.close()
        if exc is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def read_instance_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputRasterError(f"{path}: instance table not found; run `geoseg predict` first")
    table = pd.read_parquet(path)
    return table.astype({k: v for k, v in TABLE_COLUMNS.items() if k in table.columns})


def table_from_columns(ids, class_ids, class_names, scores, bboxes, areas_px, pixel_area_m2) -> pd.DataFrame:
    """Build the table from per-instance arrays (``bboxes``: (n, 4) row0, col0, row1, col1).

    ``area_m2`` is ``areas_px * pixel_area_m2``. A pixel's ground area is one
    number only where the CRS's scale is true (UTM, say); in Web Mercator or a
    geographic CRS it changes with latitude, so pass one value per instance
    there: the ground area of a pixel at the instance, e.g. from
    :func:`geoseg.vectorize.metres.pixel_areas_m2` at its box's centre.
    """
    bboxes = np.asarray(bboxes, dtype=np.int64).reshape(-1, 4)
    class_ids = np.asarray(class_ids, dtype=np.uint8)
    areas_px = np.asarray(areas_px, dtype=np.int64)
    return pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=np.uint32),
            "class_id": class_ids,
            "class": [str(class_names[c]) for c in class_ids],
            "score": np.asarray(scores, dtype=np.float32),
            "row_min": bboxes[:, 0],
            "col_min": bboxes[:, 1],
            "row_max": bboxes[:, 2],
            "col_max": bboxes[:, 3],
            "area_px": areas_px,
            "area_m2": areas_px * np.asarray(pixel_area_m2, dtype=np.float64),
        }
    )
