"""Instances from semantic models: what the whole-mosaic numbering by bands shares.

Every 4-connected region of a vectorized class gets one id across the whole mosaic, however many
chunks it spans (:mod:`geoseg.vectorize.band_ids` numbers them by bands): ids 1..N in row-major
order of each region's first pixel (:func:`first_pixels`: smallest row, then smallest column), so
the order depends neither on the chunk size nor on the bands. Here: first pixels, the ``id``
column of a feature table (:func:`with_ids`), and each id's box, pixel count and score gathered
chunk by chunk (:class:`InstanceStats`, :func:`class_score`).

Regions dropped by ``min_area_m2`` are 0 in the raster and have no row in the table, as they have
no polygon: raster, table and polygons name the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from geoseg.io.mosaic import MosaicInfo
from geoseg.vectorize.export import pixel_to_map

__all__ = ["InstanceStats", "class_score", "first_pixels", "with_ids"]


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
