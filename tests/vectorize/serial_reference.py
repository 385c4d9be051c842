"""The one-process vectorization the band tasks replaced: the reference the banded outputs are compared with.

Every region of the mosaic merged chunk row by chunk row in this process (no bands), and the instance
numbering and instance array written from that one merge (geoseg.vectorize.components).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import StageError
from geoseg.io.instances import create_instance_array, table_from_columns, write_instance_table
from geoseg.io.mosaic import MosaicInfo
from geoseg.vectorize.components import InstanceStats, class_score, first_pixels, with_ids
from geoseg.vectorize.export import pixel_to_map, regions_to_frame
from geoseg.vectorize.metres import areas_m2
from geoseg.vectorize.polygonize import label_components, polygonize_chunk
from geoseg.vectorize.seams import SeamMerger


def merge_chunks(
    mosaic: MosaicInfo,
    class_ids: list[int],
    progress: Callable[[int, int], None] | None,
    merger: SeamMerger | None = None,
    total: int | None = None,
) -> list[tuple[int, object]]:
    """Every region of the mosaic, in the order the seams finish them."""
    return [region for band in band_regions(mosaic, class_ids, progress, merger, total) for region in band]


def band_regions(
    mosaic: MosaicInfo,
    class_ids: list[int],
    progress: Callable[[int, int], None] | None,
    merger: SeamMerger | None = None,
    total: int | None = None,
) -> Iterator[list[tuple[int, object]]]:
    """Per chunk row, the regions it finishes (none of their pixels touch the next row)."""
    if merger is None:
        merger = SeamMerger(mosaic.height, mosaic.width)
    row_offsets = range(0, mosaic.height, mosaic.chunk)
    for done, row_off in enumerate(row_offsets, start=1):
        height = min(mosaic.chunk, mosaic.height - row_off)
        for col_off in range(0, mosaic.width, mosaic.chunk):
            width = min(mosaic.chunk, mosaic.width - col_off)
            # Chunk-aligned reads: zarr decodes exactly one chunk per array.
            rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
            labels = np.asarray(mosaic.labels[rows, cols])
            valid = np.asarray(mosaic.valid[rows, cols])
            merger.add(polygonize_chunk(labels, valid, row_off, col_off, class_ids))
        # Handed on before the next row is read: only regions still open across the seam stay here.
        yield merger.end_row()
        if progress is not None:
            progress(done, total or len(row_offsets))


def write_instance_ids(
    mosaic: MosaicInfo,
    class_ids: list[int],
    merger: SeamMerger,
    numbering: RegionNumbering,
    table_path: Path,
    progress: Callable[[int, int], None] | None,
) -> pd.DataFrame:
    """Pass 2: the instance array and table, from pass 1's numbering; return the table."""
    rows = mosaic.grid[0]
    # Pass 1 reported chunk rows 1..rows of 2 × rows; pass 2 carries on from there.
    return write_instances(
        mosaic,
        class_ids,
        merger.chunk_regions,
        numbering,
        table_path,
        progress=None if progress is None else lambda done, _: progress(rows + done, 2 * rows),
    )


def numbered_frame(
    mosaic: MosaicInfo,
    class_ids: list[int],
    simplify_m: float,
    min_area_m2: float,
    progress: Callable[[int, int], None] | None,
) -> tuple[gpd.GeoDataFrame, RegionNumbering, SeamMerger]:
    """Pass 1 with ids: the features in id order with an ``id`` column, the numbering, the merger."""
    merger = SeamMerger(mosaic.height, mosaic.width, track_pieces=True)
    regions = merge_chunks(mosaic, class_ids, progress, merger, total=2 * mosaic.grid[0])
    numbering = number_regions(regions, transform=mosaic.transform, crs=mosaic.crs, min_area_m2=min_area_m2)
    kept = [regions[i] for i in numbering.order]
    del regions
    # Filtered here, so regions_to_frame's own filter (the same test) has nothing left to drop.
    frame = regions_to_frame(
        kept,
        transform=mosaic.transform,
        crs=mosaic.crs,
        class_names=mosaic.class_names,
        simplify_m=simplify_m,
        min_area_m2=0.0,
    )
    return with_ids(frame, kept, mosaic.transform), numbering, merger


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
