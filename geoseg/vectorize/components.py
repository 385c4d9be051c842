"""Instances from semantic models: whole-mosaic connected components, one id each.

Every 4-connected region of a vectorized class gets one id across the whole
mosaic, however many chunks it spans, in two passes that each hold one chunk
of pixels at a time (invariant 2):

1. The vectorize stage's seam merge (:class:`~geoseg.vectorize.seams.SeamMerger`
   with ``track_pieces=True``) closes each region and remembers which region
   every per-chunk component went into. :func:`number_regions` then numbers the
   regions kept by ``min_area_m2`` 1..N in row-major order of their first pixel
   (smallest row, then smallest column): a pixel lies in one region only, so
   there are no ties, and the order does not depend on the chunk size.
2. :func:`write_instances` labels each chunk's components again
   (:func:`~geoseg.vectorize.polygonize.label_components` is deterministic, so
   they are the very components of pass 1), maps them to their ids and writes
   that chunk of ``mosaic.zarr/instances`` once (invariant 3), gathering each
   id's bounding box, pixel count and score on the way into ``instances.parquet``
   (schema in :mod:`geoseg.io.instances`).

Regions dropped by ``min_area_m2`` are 0 in the raster and have no row in the
table, as they have no polygon: raster, table and polygons name the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from geoseg.errors import StageError
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.mosaic import MosaicInfo
from geoseg.vectorize.export import pixel_to_map
from geoseg.vectorize.metres import areas_m2
from geoseg.vectorize.polygonize import label_components

__all__ = [
    "InstanceStats",
    "RegionNumbering",
    "class_score",
    "first_pixels",
    "number_regions",
    "with_ids",
    "write_instances",
]


@dataclass(frozen=True)
class RegionNumbering:
    """Ids of the regions of a seam merge, in the order the merger emitted them.

    Attributes:
        ids: uint32, one per emitted region: its id, or 0 if ``min_area_m2`` dropped it.
        order: emitted-region index of id 1, 2, ..., N.
        classes: class index of each id (``classes[0]`` is unused).
        areas_m2: exact area of each id's pixels in m² (``areas_m2[0]`` is unused),
            the same measure the area filter compared.
    """

    ids: np.ndarray
    order: np.ndarray
    classes: np.ndarray
    areas_m2: np.ndarray

    @property
    def count(self) -> int:
        """N, the number of ids."""
        return len(self.order)


def first_pixels(polygons: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each pixel polygon's first pixel in row-major order.

    Polygons are in global pixel coordinates (x = column, y = row, corners on
    integers). The first pixel's top edge lies on the region's topmost line
    and nothing of the region is above it, so it is the top-left corner of the
    leftmost vertex on that line; a hole cannot reach the topmost line, and the
    corner is a real turn of the outline, which no collinear cleanup removes.
    """
    geoms = np.asarray(polygons, dtype=object)
    if not len(geoms):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    top = shapely.bounds(geoms)[:, 1]
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    on_top = coords[:, 1] == top[index]
    left = np.full(len(geoms), np.inf)
    np.minimum.at(left, index[on_top], coords[on_top, 0])
    return top.astype(np.int64), left.astype(np.int64)


def number_regions(
    regions: Sequence[tuple[int, object]], *, transform: Affine, crs: CRS, min_area_m2: float = 0.0
) -> RegionNumbering:
    """Number merged ``(class_id, pixel polygon)`` regions 1..N by their first pixel.

    ``min_area_m2`` is applied exactly as :func:`~geoseg.vectorize.export.regions_to_frame`
    applies it (area of the unsimplified polygon in the mosaic CRS), so a
    region has an id exactly when it has a polygon.
    """
    classes = np.array([c for c, _ in regions], dtype=np.int64)
    geoms = np.empty(len(regions), dtype=object)
    geoms[:] = [g for _, g in regions]
    areas = areas_m2(pixel_to_map(geoms, transform), crs) if len(geoms) else np.zeros(0)
    keep = np.flatnonzero(areas >= min_area_m2) if min_area_m2 > 0 else np.arange(len(geoms))
    rows, cols = first_pixels(geoms[keep])
    order = keep[np.lexsort((cols, rows))]
    ids = np.zeros(len(geoms), dtype=np.uint32)
    ids[order] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return RegionNumbering(ids=ids, order=order, classes=np.r_[0, classes[order]], areas_m2=np.r_[0.0, areas[order]])


def with_ids(frame: gpd.GeoDataFrame, regions: Sequence[tuple[int, object]], transform: Affine) -> gpd.GeoDataFrame:
    """Put an ``id`` column (uint32) first in the frame built from ``regions`` in id order.

    ``regions_to_frame`` keeps the order of its input and drops no pixel polygon,
    so row i is id i + 1. Should it ever drop one (a geometry that simplification
    collapsed), the rows are matched in order to the region they mostly cover,
    and a row matching none gets 0.
    """
    frame = frame.copy()
    if len(frame) == len(regions):
        ids = np.arange(1, len(frame) + 1, dtype=np.uint32)
    else:
        ids = _match_rows(frame, regions, transform)
    frame.insert(0, "id", ids)
    return frame


def _match_rows(frame: gpd.GeoDataFrame, regions, transform: Affine) -> np.ndarray:
    geoms = pixel_to_map(np.array([g for _, g in regions], dtype=object), transform)
    classes = [c for c, _ in regions]
    ids = np.zeros(len(frame), dtype=np.uint32)
    start = 0
    for row, (class_id, geom) in enumerate(zip(frame["class_id"], frame.geometry, strict=True)):
        for j in range(start, len(regions)):
            if classes[j] == class_id and shapely.intersection(geom, geoms[j]).area >= 0.5 * geom.area:
                ids[row], start = j + 1, j + 1
                break
    return ids


class InstanceStats:
    """Per-id bounding box, pixel count and score sum, gathered chunk by chunk."""

    def __init__(self, count: int) -> None:
        size = count + 1  # slot 0 takes the dropped regions' pixels and is ignored
        self.row_min = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
        self.col_min = self.row_min.copy()
        self.row_max = np.zeros(size, dtype=np.int64)
        self.col_max = np.zeros(size, dtype=np.int64)
        self.area = np.zeros(size, dtype=np.int64)
        self.score_sum = np.zeros(size, dtype=np.float64)

    def add(
        self, components: np.ndarray, lut: np.ndarray, row_off: int, col_off: int, score: np.ndarray | None
    ) -> None:
        count = len(lut) - 1
        if count == 0:
            return
        ids = lut[1:]
        boxes = ndimage.find_objects(components, max_label=count)
        np.minimum.at(self.row_min, ids, np.fromiter((b[0].start for b in boxes), np.int64, count) + row_off)
        np.maximum.at(self.row_max, ids, np.fromiter((b[0].stop for b in boxes), np.int64, count) + row_off)
        np.minimum.at(self.col_min, ids, np.fromiter((b[1].start for b in boxes), np.int64, count) + col_off)
        np.maximum.at(self.col_max, ids, np.fromiter((b[1].stop for b in boxes), np.int64, count) + col_off)
        flat = components.ravel()
        np.add.at(self.area, ids, np.bincount(flat, minlength=count + 1)[1:])
        if score is not None:
            # Integer scores summed in float64 stay exact far beyond any mosaic size.
            sums = np.bincount(flat, weights=score.ravel().astype(np.float64), minlength=count + 1)[1:]
            np.add.at(self.score_sum, ids, sums)


def class_score(mosaic: MosaicInfo, rows: slice, cols: slice, labels: np.ndarray) -> np.ndarray:
    """Each pixel's stored score for its own class (raw values: uint8 p*255 or float)."""
    block = np.asarray(mosaic.array("scores")[:, rows, cols])  # one chunk: every class of one core
    return np.take_along_axis(block, labels[None].astype(np.intp), axis=0)[0]


def write_instances(
    mosaic: MosaicInfo,
    class_ids: Sequence[int],
    chunk_regions: Callable[[int, int], np.ndarray],
    numbering: RegionNumbering,
    table_path: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Pass 2: write ``mosaic.zarr/instances`` chunk by chunk, then the instance table.

    Args:
        mosaic: the mosaic, open for writing; unchanged since pass 1.
        class_ids: the vectorized classes, as given to pass 1.
        chunk_regions: ``chunk_regions(index, count)`` gives the emitted-region
            index of each component of the ``index``-th chunk (row-major), as
            :meth:`SeamMerger.chunk_regions` does once the merge is done.
        numbering: the ids of the emitted regions (:func:`number_regions`).
        table_path: where ``instances.parquet`` goes (replaced once complete).
        progress: called as ``progress(done, total)`` after each chunk row.

    Returns:
        The instance table as written.

    Raises:
        StageError: the mosaic no longer matches pass 1 (rewritten in between).
    """
    table_path = Path(table_path)
    # No table until the raster is whole: a crash part-way must not leave an
    # earlier run's table beside a half-written raster as if both were complete.
    table_path.unlink(missing_ok=True)
    instances = create_instance_array(mosaic)
    class_arr = np.asarray(list(class_ids))
    region_ids = np.r_[np.uint32(0), numbering.ids].astype(np.uint32)  # region -1 (no component) -> 0
    stats = InstanceStats(numbering.count)
    scores = None
    if mosaic.has_scores:
        scores = mosaic.array("scores")
        integer = np.issubdtype(scores.dtype, np.integer)
        scale = float(cast(float, scores.attrs.get("scale_factor", 1 / 255 if integer else 1.0)))
    chunk_rows = mosaic.grid[0]
    for index, (row_off, col_off, height, width) in enumerate(mosaic.chunk_windows()):
        rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
        labels = np.asarray(mosaic.labels[rows, cols])
        components, classes = label_components(labels, np.asarray(mosaic.valid[rows, cols]), class_arr)
        try:
            regions = chunk_regions(index, len(classes) - 1)
        except ValueError as exc:
            raise StageError(
                f"{mosaic.path}: chunk at row {row_off}, col {col_off} changed since it was "
                f"polygonized ({exc}); run `geoseg vectorize` again"
            ) from None
        lut = region_ids[regions + 1]
        instances[rows, cols] = lut[components]
        stats.add(
            components, lut, row_off, col_off, class_score(mosaic, rows, cols, labels) if scores is not None else None
        )
        if progress is not None and col_off + width >= mosaic.width:
            progress(row_off // mosaic.chunk + 1, chunk_rows)

    n = numbering.count
    s = slice(1, n + 1)
    score = stats.score_sum[s] * scale / np.maximum(stats.area[s], 1) if scores is not None else np.full(n, np.nan)
    bboxes = np.column_stack([stats.row_min[s], stats.col_min[s], stats.row_max[s], stats.col_max[s]])
    table = table_from_columns(
        np.arange(1, n + 1), numbering.classes[s], mosaic.class_names, score, bboxes, stats.area[s], 0.0
    )
    # The polygon's exact ground area, as the min_area_m2 filter measured it
    # (geodesic where the CRS's scale is not true: pixels are not all the same size).
    table["area_m2"] = numbering.areas_m2[s]
    write_instance_table(table, table_path)
    return table
