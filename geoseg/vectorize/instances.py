"""Instance mosaic → one polygon per instance id → GPKG or GeoParquet + GeoJSON.

The ``instances`` array (uint32, 0 = none) and ``instances.parquet`` (one row per
id, with its bounding box) come from the predict stage (see
:mod:`geoseg.io.instances`). Every id already names one whole object, merged
across tiles at prediction, so there is no seam bookkeeping here: each instance
is polygonized where it lies, from its own bounding box.

Memory stays bounded (invariant 2). Instances are grouped by the chunk holding
their bounding box's top-left corner and each group is read as one window (the
union of the group's boxes, which starts in that chunk). An instance whose box
is more than a chunk tall or wide (a connected region spanning the scene, say)
would make that window unbounded, so it is polygonized chunk by chunk instead
and its pieces are unioned once the chunk rows below it hold no more of it.
Either way the window holds at most 2 × 2 chunks.

Geometries stay in global pixel coordinates (integers, exact) until export, as
in :mod:`geoseg.vectorize.polygonize`, so pieces from two chunks meet exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import shapes

from geoseg.errors import InputRasterError, JobConfigError
from geoseg.io.instances import INSTANCES, read_instance_table
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.vectorize.export import (
    FORMATS,
    features_frame,
    finish_vectors,
    make_polygonal,
    open_vectors,
    pixel_to_map,
)
from geoseg.vectorize.metres import areas_m2, simplify_tolerance
from geoseg.vectorize.pixelgeom import union_pieces

__all__ = ["InstanceVectorOutputs", "instances_to_frame", "vectorize_instances"]

_BOX = ["row_min", "col_min", "row_max", "col_max"]


@dataclass(frozen=True)
class InstanceVectorOutputs:
    """What :func:`vectorize_instances` wrote.

    Attributes:
        vectors: ``polygons.gpkg`` (layer ``polygons``) or ``polygons.parquet``
            (GeoParquet), in the mosaic CRS.
        geojson: the same features in EPSG:4326 (RFC 7946).
        format: ``"gpkg"`` or ``"parquet"``.
        features: number of features written.
        per_class: features per class name (every mosaic class but index 0, and
            any other class the table names; 0 for classes with none).
        missing: instances in the table with no pixel left in the array
            (no feature is written for them).
    """

    vectors: Path
    geojson: Path
    format: str
    features: int
    per_class: dict[str, int]
    missing: int = 0


def _check_table(table: pd.DataFrame, mosaic: MosaicInfo, table_path: Path) -> None:
    fix = "run `geoseg predict` again"
    ids = table["id"].to_numpy(np.int64)
    if (ids <= 0).any():
        raise InputRasterError(f"{table_path}: instance id {int(ids[ids <= 0][0])!r} is not ≥ 1; {fix}")
    seen, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputRasterError(
            f"{table_path}: instance id {int(seen[counts > 1][0])!r} appears {int(counts[counts > 1][0])} times; {fix}"
        )
    r0, c0, r1, c1 = (table[c].to_numpy(np.int64) for c in _BOX)
    bad = (r0 < 0) | (c0 < 0) | (r1 > mosaic.height) | (c1 > mosaic.width) | (r0 >= r1) | (c0 >= c1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputRasterError(
            f"{table_path}: instance {int(ids[i])!r} has bounding box rows {r0[i]}:{r1[i]}, columns "
            f"{c0[i]}:{c1[i]}, which is empty or outside the {mosaic.height} × {mosaic.width} mosaic; {fix}"
        )


def _polygon(geometry: dict):
    # Build rings from arrays: faster than shapely.geometry.shape's Python loop.
    rings = [shapely.linearrings(np.asarray(ring, dtype=np.float64)) for ring in geometry["coordinates"]]
    return shapely.polygons(rings[0], holes=rings[1:] or None)


def _paint(block: np.ndarray, row_off: int, col_off: int, boxes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Local index k+1 where ``block == ids[k]`` inside ``boxes[k]`` (clipped to the block); 0 elsewhere.

    Local indices keep the values small for GDAL's int32 polygonizer whatever
    the ids, and the box limits each instance to the pixels the table gives it.
    """
    local = np.zeros(block.shape, dtype=np.int32)
    height, width = block.shape
    for k, (box, iid) in enumerate(zip(boxes, ids, strict=True)):
        r0, c0 = max(box[0] - row_off, 0), max(box[1] - col_off, 0)
        r1, c1 = min(box[2] - row_off, height), min(box[3] - col_off, width)
        if r0 < r1 and c0 < c1:
            local[r0:r1, c0:c1][block[r0:r1, c0:c1] == iid] = k + 1
    return local


def _polygonize(local: np.ndarray, row_off: int, col_off: int) -> dict[int, list]:
    """Polygons of each local index, in global pixel coordinates (one per 4-connected part)."""
    parts: dict[int, list] = {}
    transform = Affine.translation(col_off, row_off)
    for geojson, value in shapes(local, mask=local > 0, connectivity=4, transform=transform):
        parts.setdefault(int(value) - 1, []).append(_polygon(geojson))
    return parts


def _join(parts: list):
    # One part is the usual case (predict keeps each instance one 4-connected
    # part); several become one MultiPolygon, exactly, in integer coordinates.
    return parts[0] if len(parts) == 1 else union_pieces(parts)


def _instance_polygons(
    mosaic: MosaicInfo, table: pd.DataFrame, progress: Callable[[int, int], None] | None
) -> Iterator[dict[int, object]]:
    """Per chunk row, the pixel-space polygons of the instances finished in it: ``{id: polygon}``.

    A small instance is finished in the chunk row of its box's top edge, a large one in the
    chunk row of its box's bottom edge (see :func:`_finished_row`).
    """
    array = mosaic.array(INSTANCES)
    chunk = mosaic.chunk
    grid_rows, grid_cols = mosaic.grid
    ids = table["id"].to_numpy(np.int64)
    boxes = table[_BOX].to_numpy(np.int64)
    large = ((boxes[:, 2] - boxes[:, 0]) > chunk) | ((boxes[:, 3] - boxes[:, 1]) > chunk)

    # Small instances, grouped by the chunk of their top-left corner, row-major.
    small = np.flatnonzero(~large)
    anchor = (boxes[small, 0] // chunk) * grid_cols + boxes[small, 1] // chunk
    order = small[np.lexsort((ids[small], anchor))]
    anchor = np.sort(anchor, kind="stable")
    bounds = np.searchsorted(anchor, np.arange(grid_rows * grid_cols + 1))

    big = np.flatnonzero(large)
    big_pieces: dict[int, list] = {}
    for grid_row in range(grid_rows):
        polygons: dict[int, object] = {}
        row_off = grid_row * chunk
        row_end = min(row_off + chunk, mosaic.height)
        for grid_col in range(grid_cols):
            col_off = grid_col * chunk
            cell = grid_row * grid_cols + grid_col
            group = order[bounds[cell] : bounds[cell + 1]]
            if len(group):
                r0, c0 = boxes[group, 0].min(), boxes[group, 1].min()
                r1, c1 = boxes[group, 2].max(), boxes[group, 3].max()
                window = np.asarray(array[r0:r1, c0:c1])
                local = _paint(window, r0, c0, boxes[group], ids[group])
                for k, parts in _polygonize(local, r0, c0).items():
                    polygons[int(ids[group[k]])] = _join(parts)
            col_end = min(col_off + chunk, mosaic.width)
            here = big[
                (boxes[big, 0] < row_end)
                & (boxes[big, 2] > row_off)
                & (boxes[big, 1] < col_end)
                & (boxes[big, 3] > col_off)
            ]
            if len(here):
                # Chunk-aligned: zarr decodes exactly this one chunk.
                block = np.asarray(array[row_off:row_end, col_off:col_end])
                local = _paint(block, row_off, col_off, boxes[here], ids[here])
                for k, parts in _polygonize(local, row_off, col_off).items():
                    big_pieces.setdefault(int(ids[here[k]]), []).extend(parts)
        # Instances ending above this row's bottom edge get no more pieces.
        for i in big[(boxes[big, 2] <= row_end) & (boxes[big, 2] > row_off)]:
            pieces = big_pieces.pop(int(ids[i]), None)
            if pieces:
                polygons[int(ids[i])] = union_pieces(pieces)
        yield polygons
        if progress is not None:
            progress(grid_row + 1, grid_rows)


def _finished_row(boxes: np.ndarray, chunk: int) -> np.ndarray:
    """The chunk row after which :func:`_instance_polygons` has traced each instance (or found it empty)."""
    large = ((boxes[:, 2] - boxes[:, 0]) > chunk) | ((boxes[:, 3] - boxes[:, 1]) > chunk)
    return np.where(large, (boxes[:, 2] - 1) // chunk, boxes[:, 0] // chunk)


def instances_to_frame(
    ids: np.ndarray,
    pixel_geoms: np.ndarray,
    table: pd.DataFrame,
    *,
    transform: Affine,
    crs: CRS,
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
) -> gpd.GeoDataFrame:
    """The output table for pixel-space instance polygons; ``table`` is indexed by id.

    ``min_area_m2`` is compared with each instance's exact (unsimplified) area;
    ``area_m2`` is the area of the geometry as written. Rows come out by id.
    """
    ids = np.asarray(ids, dtype=np.int64)
    geoms = pixel_to_map(np.asarray(pixel_geoms, dtype=object), transform) if len(ids) else np.array([], object)
    if min_area_m2 > 0 and len(ids):
        keep = areas_m2(geoms, crs) >= min_area_m2
        ids, geoms = ids[keep], geoms[keep]
    if simplify_m > 0 and len(ids):
        # Per polygon: instances are objects, not a coverage, so two touching
        # instances may each move their shared border by up to the tolerance.
        # The tolerance is simplify_m on the ground at each instance, in map units.
        geoms = shapely.simplify(geoms, simplify_tolerance(geoms, crs, simplify_m), preserve_topology=True)
    geoms = make_polygonal(geoms) if len(ids) else geoms
    kept = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms) if len(ids) else np.zeros(0, bool)
    ids, geoms = ids[kept], shapely.orient_polygons(geoms[kept])
    rows = table.loc[ids] if len(ids) else table.iloc[:0]
    return features_frame(
        {
            "id": pd.Series(ids, dtype=np.int64),
            "class": pd.Series(rows["class"].astype(str).to_numpy(), dtype=object),
            "class_id": pd.Series(rows["class_id"].to_numpy(), dtype=np.int32),
            "score": pd.Series(rows["score"].to_numpy(), dtype=np.float32),
            "area_m2": pd.Series(areas_m2(geoms, crs), dtype=np.float64),
        },
        geoms,
        crs,
    )


def vectorize_instances(
    mosaic_path: Path,
    table_path: Path,
    out_dir: Path,
    *,
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
    fmt: str = "gpkg",
    progress: Callable[[int, int], None] | None = None,
) -> InstanceVectorOutputs:
    """Polygonize an instance mosaic: one feature per instance id.

    Each instance becomes the outline of its pixels (``instances == id``)
    inside its bounding box, traced with 4-connectivity, holes kept. The predict
    stage keeps every instance one 4-connected part, so a feature is normally a
    Polygon; only an instance whose pixels form several 4-connected parts (two
    parts touching at a corner count as two) becomes a MultiPolygon. Attributes
    ``id``, ``class``, ``class_id`` and ``score`` come from the instance table,
    ``area_m2`` from the geometry as written. Instances in the table with no
    pixel in the array are skipped (counted in ``missing``); ids in the array
    but not in the table are ignored. Features are ordered by id.

    Args:
        mosaic_path: the Zarr mosaic holding the ``instances`` array.
        table_path: its ``instances.parquet``.
        out_dir: where ``polygons.gpkg``/``polygons.parquet`` and
            ``polygons.geojson`` go (existing ones are replaced only once complete).
        simplify_m: tolerance in metres on the ground, at each instance's own
            latitude (0: exact pixel edges). Each polygon is simplified on its
            own (topology-preserving) and repaired, so it stays valid; touching
            instances may open small gaps or overlaps.
        min_area_m2: drop instances whose exact ground area is smaller.
        fmt: ``"gpkg"`` (GeoPackage) or ``"parquet"`` (GeoParquet) in the mosaic CRS.
        progress: called as ``progress(done, total)`` after each chunk row.

    Returns:
        The paths written and the feature counts.

    Raises:
        InputRasterError: the mosaic, its ``instances`` array or the table is
            missing, or the table does not fit the mosaic.
        JobConfigError: a negative tolerance/area or an unknown format.
        StageError: writing an output failed.
    """
    _check_settings(simplify_m, min_area_m2, fmt)
    mosaic = _open_instance_mosaic(mosaic_path)
    table_path = Path(table_path)
    table = read_instance_table(table_path)
    _check_table(table, mosaic, table_path)
    by_id = table.set_index(pd.Index(table["id"].to_numpy(np.int64)))
    counts: Counter[str] = Counter()
    traced = 0
    empty = instances_to_frame(
        np.zeros(0, np.int64), np.zeros(0, object), by_id, transform=mosaic.transform, crs=mosaic.crs
    )
    with open_vectors(Path(out_dir), empty, fmt=fmt) as writer:
        for ids, pixel_geoms in _id_ordered_batches(mosaic, table, progress):
            frame = instances_to_frame(
                ids,
                pixel_geoms,
                by_id,
                transform=mosaic.transform,
                crs=mosaic.crs,
                simplify_m=simplify_m,
                min_area_m2=min_area_m2,
            )
            writer.write(frame)
            counts.update(frame["class"])
            traced += len(ids)
    vectors, geojson = finish_vectors(writer, fmt)
    return InstanceVectorOutputs(
        vectors=vectors,
        geojson=geojson,
        format=fmt,
        features=writer.features,
        per_class=_per_class(counts, mosaic.class_names, table),
        missing=len(table) - traced,
    )


def _check_settings(simplify_m: float, min_area_m2: float, fmt: str) -> None:
    """Refuse a negative (or NaN) tolerance or area and an unknown format, naming every problem at once.

    Raises:
        JobConfigError: one problem per bad setting.
    """
    problems = [
        f"vectorize.{name}: must be ≥ 0 (got {value!r})"
        for name, value in (("simplify_m", simplify_m), ("min_area_m2", min_area_m2))
        if not value >= 0
    ]
    if fmt not in FORMATS:
        problems.append(f"vectorize.format: must be one of {sorted(FORMATS)!r} (got {fmt!r})")
    if problems:
        raise JobConfigError(problems)


def _open_instance_mosaic(mosaic_path: Path) -> MosaicInfo:
    """Open the mosaic, checking that it holds an ``instances`` array of its own shape.

    Raises:
        InputRasterError: the mosaic is missing, or its ``instances`` array is missing or misshapen.
    """
    mosaic = open_mosaic(mosaic_path)
    if INSTANCES not in mosaic.group:
        raise InputRasterError(
            f"{mosaic.path}: has no {INSTANCES!r} array; run `geoseg predict` with an "
            "instance model (or vectorize.instances: true) first"
        )
    shape = tuple(mosaic.array(INSTANCES).shape)
    if shape != (mosaic.height, mosaic.width):
        raise InputRasterError(
            f"{mosaic.path}/{INSTANCES}: shape {shape!r} is not the mosaic's "
            f"{(mosaic.height, mosaic.width)!r}; run `geoseg predict` again"
        )
    return mosaic


def _id_ordered_batches(
    mosaic: MosaicInfo, table: pd.DataFrame, progress: Callable[[int, int], None] | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk row, the ids and pixel-space polygons that can be written now, in id order.

    Features go out by id, but an instance is traced in the chunk row of its box's top edge (or,
    if large, its bottom edge), so a polygon waits until every smaller id is traced too. Only
    those waiting polygons stay in memory: with the predict stage's ids (by first pixel), the
    ones below a large instance still open.
    """
    ids = table["id"].to_numpy(np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    # Row after which every id up to this one is traced: the running maximum in id order.
    ready_after = np.maximum.accumulate(_finished_row(table[_BOX].to_numpy(np.int64)[order], mosaic.chunk))
    waiting: dict[int, object] = {}
    released = 0
    for grid_row, finished in enumerate(_instance_polygons(mosaic, table, progress)):
        waiting.update(finished)
        end = int(np.searchsorted(ready_after, grid_row, side="right"))
        ready = [int(i) for i in ids[released:end] if int(i) in waiting]
        released = end
        yield np.array(ready, dtype=np.int64), np.array([waiting.pop(i) for i in ready], dtype=object)


def _per_class(counts: Counter[str], class_names: Sequence[str], table: pd.DataFrame) -> dict[str, int]:
    """Features per class: every mosaic class but index 0, then any other class the table names; 0 for none."""
    names = list(class_names[1:]) + sorted(set(table["class"].astype(str)) - set(class_names[1:]))
    return {name: int(counts.get(name, 0)) for name in names}
