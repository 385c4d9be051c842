"""Instance ids of a semantic mosaic by bands: the numbering of :mod:`geoseg.vectorize.components`, in tasks.

The same ids as the one-process numbering (1..N by first pixel in row-major order, regions
dropped by ``min_area_m2`` left out), with every pass over pixels done per band:

1. *Regions* (band tasks, :func:`~geoseg.vectorize.bands.vectorize_band` with ``instances``):
   each band's regions with their class, first pixel and exact area; its finished regions'
   polygons; the region of every chunk component; the open regions and their edges.
2. *Numbering* (here, light): the open regions are joined across bands by a band-level
   :class:`~geoseg.vectorize.seams.SeamMerger`; the regions that closed that way ("joined") are
   written to the part of the band that holds their first pixel. A region's first pixel lies in
   exactly one band and bands are in row order, so numbering band by band (each band's kept
   regions, finished or joined, sorted by first pixel) gives the whole-mosaic order. Each band
   gets a table: band region → id.
3. *Ids* (band tasks, :func:`write_band_ids`): the band's chunks of ``mosaic.zarr/instances``
   (components labelled again, as in pass 1, and mapped to ids), per-region box, pixel count and
   score sums, and its finished features with their ids and GeoJSON.
4. *Outputs* (here): per band, its finished features and its joined regions merged in id order
   and appended to the vector files; the statistics summed per id, and the table rows of a band's
   ids written once every band they reach has been summed. The driver holds the statistics of the
   ids not written yet, never the scene's.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geoseg.errors import StageError
from geoseg.io.heap import release_free_memory
from geoseg.io.instances import INSTANCES, InstanceTableWriter, create_instance_array, table_from_columns
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.vectorize.band_output import numbered_frame, simplified_geoms, write_band
from geoseg.vectorize.band_simplify import OpenPieces
from geoseg.vectorize.bands import (
    FEATURE_SLICE,
    BandRequest,
    BandSummary,
    band_as_chunk,
    band_open_simplified,
    part,
)
from geoseg.vectorize.components import InstanceStats, class_score, first_pixels
from geoseg.vectorize.export import LAYER, areas_m2, pixel_to_map, to_wgs84
from geoseg.vectorize.polygonize import label_components
from geoseg.vectorize.seams import SeamMerger
from geoseg.vectorize.stream import VectorWriter, geometry_type, render_geojson

__all__ = [
    "IdsSummary",
    "Numbered",
    "number_bands",
    "prepare_instance_array",
    "write_band_ids",
    "write_numbered_outputs",
]


@dataclass
class Joined:
    """The regions closed by joining bands: first pixel, class, exact area; and where they were written."""

    first_row: list[np.ndarray]
    first_col: list[np.ndarray]
    class_id: list[np.ndarray]
    area_m2: list[np.ndarray]
    sources: dict[int, list[int]] = field(default_factory=dict)  # home band -> bands whose file holds some


def _join_bands(
    mosaic: MosaicInfo, requests: list[BandRequest], summaries: Iterable[BandSummary], progress
) -> tuple[SeamMerger, Joined, list[BandSummary]]:
    """Pass 1's band results as they come: join open regions; write each joined region to its first pixel's band."""
    across = SeamMerger(mosaic.height, mosaic.width, track_pieces=True)
    pieces = OpenPieces() if requests and requests[0].simplify_tolerance > 0 else None
    joined = Joined([], [], [], [])
    starts = np.array([r.first_row for r in requests])
    done: list[BandSummary] = []
    seq = 0
    for request in requests:  # made afresh each run, from the (possibly reused) band parts
        part(request.stem, ".joined.parquet").unlink(missing_ok=True)
    for request, summary in zip(requests, summaries, strict=True):
        across.add(band_as_chunk(request, summary, mosaic.width))
        if pieces is not None:
            pieces.add(*band_open_simplified(request))
        closed = across.end_row()
        geoms = np.empty(len(closed), dtype=object)
        geoms[:] = [g for _, g in closed]
        rows, cols = first_pixels(geoms)
        areas = areas_m2(pixel_to_map(geoms, mosaic.transform), mosaic.crs) if len(geoms) else np.zeros(0)
        classes = np.array([c for c, _ in closed], dtype=np.int32)
        joined.first_row.append(rows)
        joined.first_col.append(cols)
        joined.class_id.append(classes)
        joined.area_m2.append(np.asarray(areas, np.float64))
        home = np.searchsorted(starts, rows, side="right") - 1
        if len(closed):
            # One file per band where regions closed, written at once; read back by their home band.
            columns = {
                "seq": pa.array(seq + np.arange(len(closed)), pa.int64()),
                "home": pa.array(home, pa.int32()),
                "class_id": pa.array(classes, pa.int32()),
                "wkb": pa.array(shapely.to_wkb(geoms), pa.binary()),
            }
            if pieces is not None:  # the union of each joined region's simplified pieces, in map coordinates
                columns["simplified"] = pa.array(shapely.to_wkb(pieces.take(closed)), pa.binary())
            table = pa.table(columns)
            pq.write_table(table, part(request.stem, ".joined.parquet"))
            for band in np.unique(home).tolist():
                joined.sources.setdefault(band, []).append(request.index)
        seq += len(closed)
        done.append(summary)
        release_free_memory()
        if progress is not None:
            progress(-(-request.stop_row // mosaic.chunk), 2 * mosaic.grid[0])
    return across, joined, done


@dataclass(frozen=True)
class Numbered:
    """The numbering of every region.

    ``first_ids[b]``: the first id given to band ``b``'s regions (its ids run up to ``first_ids[b + 1] - 1``;
    the last entry is N + 1); each band's ids' class and exact area are in its ``.numbering.npz``.
    ``sources``: home band -> the bands whose ``.joined.parquet`` holds some of its joined regions
    (so the last of them is the last band any of its regions reaches).
    """

    first_ids: list[int]
    sources: dict[int, list[int]]

    @property
    def count(self) -> int:
        return self.first_ids[-1] - 1

    def reach(self, band: int) -> int:
        """The last band whose pixels hold some region numbered in ``band``."""
        return max([band, *self.sources.get(band, [])])


def number_bands(
    mosaic: MosaicInfo,
    requests: list[BandRequest],
    summaries: Iterable[BandSummary],
    min_area_m2: float,
    progress: Callable[[int, int], None] | None = None,
) -> Numbered:
    """Step 2: number every band's regions; save each band's region → id table (see :class:`Numbered`)."""
    across, joined, done = _join_bands(mosaic, requests, summaries, progress)
    first_row, first_col = np.concatenate(joined.first_row), np.concatenate(joined.first_col)
    joined_class, joined_area = np.concatenate(joined.class_id), np.concatenate(joined.area_m2)
    joined_ids = np.zeros(len(first_row), dtype=np.uint32)
    joined_kept = joined_area >= min_area_m2 if min_area_m2 > 0 else np.ones(len(first_row), bool)
    starts = np.array([r.first_row for r in requests])
    joined_home = np.searchsorted(starts, first_row, side="right") - 1
    first_ids = [1]
    for index, (request, summary) in enumerate(zip(requests, done, strict=True)):
        count = first_ids[-1] - 1
        with np.load(part(request.stem, ".regions.npz"), allow_pickle=False) as regions:
            kept = ~regions["open"] & (regions["area_m2"] >= min_area_m2 if min_area_m2 > 0 else True)
            mine = np.flatnonzero(kept)
            theirs = np.flatnonzero((joined_home == index) & joined_kept)
            rows = np.concatenate([regions["first_row"][mine], first_row[theirs]])
            cols = np.concatenate([regions["first_col"][mine], first_col[theirs]])
            order = np.lexsort((cols, rows))
            new_ids = np.arange(count + 1, count + len(order) + 1, dtype=np.uint32)
            band_ids = np.zeros(summary.regions, dtype=np.uint32)
            band_ids[mine[order[order < len(mine)]]] = new_ids[order < len(mine)]
            joined_ids[theirs[order[order >= len(mine)] - len(mine)]] = new_ids[order >= len(mine)]
            classes = np.concatenate([regions["class_id"][mine], joined_class[theirs]])[order]
            areas = np.concatenate([regions["area_m2"][mine], joined_area[theirs]])[order]
            opened = np.flatnonzero(regions["open"])
        np.savez(part(request.stem, ".numbering.npz"), class_id=classes, area_m2=areas)
        # An open region belongs to a joined region whose first pixel lies in this band or above: numbered by now.
        band_ids[opened] = joined_ids[across.chunk_regions(index, len(opened))[1:]]
        np.save(part(request.stem, ".ids.npy"), band_ids)
        first_ids.append(count + len(order) + 1)
    if requests:
        np.save(Path(requests[0].parts_dir) / "joined-ids.npy", joined_ids)
    return Numbered(first_ids, joined.sources)


@dataclass(frozen=True)
class IdsSummary:
    """What :func:`write_band_ids` wrote for a band."""

    index: int
    features: int
    geojson_rows: int
    declared: str


def write_band_ids(request: BandRequest) -> IdsSummary:
    """Step 3 for one band: its chunks of the instance array, its statistics, its finished features with ids.

    Always redone (the instance array is made afresh before this step); it is the cheap pass.
    """
    stem = request.stem
    mosaic = open_mosaic(request.mosaic, mode="r+")
    ids = np.load(part(stem, ".ids.npy"), allow_pickle=False)
    with np.load(part(stem, ".regions.npz"), allow_pickle=False) as regions:
        pieces, counts = regions["pieces"], regions["counts"]
    stats = _write_chunks(mosaic, request, ids, pieces, counts)
    with open(part(stem, ".stats.npz.partial"), "wb") as out:
        np.savez(out, **{name: getattr(stats, name)[1:] for name in _STATS})
    frame = _finished_features(mosaic, request, ids)
    wgs84 = to_wgs84(frame)
    declared = geometry_type(wgs84)
    frame.to_parquet(part(stem, ".numbered.parquet.partial"), index=False, row_group_size=FEATURE_SLICE)
    text = render_geojson(wgs84, LAYER, declared)[1] if len(wgs84) else ""
    part(stem, ".numbered.txt.partial").write_text(text, encoding="utf-8")
    for suffix in (".stats.npz", ".numbered.parquet", ".numbered.txt"):
        os.replace(part(stem, suffix + ".partial"), part(stem, suffix))
    return IdsSummary(request.index, len(frame), len(wgs84), declared)


_STATS = ("row_min", "col_min", "row_max", "col_max", "area", "score_sum")


def _write_chunks(
    mosaic: MosaicInfo, request: BandRequest, ids: np.ndarray, pieces: np.ndarray, counts: np.ndarray
) -> InstanceStats:
    """Label each chunk of the band again, write its ids, gather statistics per band region."""
    instances = mosaic.array(INSTANCES)
    stats = InstanceStats(len(ids))
    class_ids = np.asarray(request.class_ids)
    offsets = np.r_[0, np.cumsum(counts)]
    index = 0
    for row_off in range(request.first_row, request.stop_row, mosaic.chunk):
        height = min(mosaic.chunk, request.stop_row - row_off)
        for col_off in range(0, mosaic.width, mosaic.chunk):
            width = min(mosaic.chunk, mosaic.width - col_off)
            rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
            labels = np.asarray(mosaic.labels[rows, cols])
            components, classes = label_components(labels, np.asarray(mosaic.valid[rows, cols]), class_ids)
            if len(classes) - 1 != counts[index]:
                raise StageError(
                    f"{mosaic.path}: chunk at row {row_off}, col {col_off} changed since it was "
                    f"polygonized; run `geoseg vectorize` again"
                )
            region_of = np.r_[-1, pieces[offsets[index] : offsets[index + 1]]].astype(np.int64)
            instances[rows, cols] = np.r_[np.uint32(0), ids[region_of[1:]]][components]
            score = class_score(mosaic, rows, cols, labels) if mosaic.has_scores else None
            stats.add(components, region_of + 1, row_off, col_off, score)
            index += 1
    return stats


def _finished_features(mosaic: MosaicInfo, request: BandRequest, ids: np.ndarray) -> gpd.GeoDataFrame:
    """The band's finished regions that have an id, as output features in id order with an ``id`` column."""
    table = pq.read_table(part(request.stem, ".finished.parquet")).to_pydict()
    region = np.asarray(table["region"], dtype=np.int64)
    region_ids = ids[region]
    order = np.argsort(region_ids, kind="stable")[np.sort(region_ids) > 0]
    geoms = shapely.from_wkb(np.asarray(table["wkb"], dtype=object)[order]) if len(order) else []
    regions = list(zip(np.asarray(table["class_id"])[order].tolist(), geoms, strict=True))
    return numbered_frame(mosaic, regions, region_ids[order], simplified_geoms(table, order))


def write_numbered_outputs(
    mosaic: MosaicInfo,
    requests: list[BandRequest],
    summaries: Iterable[IdsSummary],
    writer: VectorWriter,
    numbered: Numbered,
    table_path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Counter[str]:
    """Step 4: the features band by band in id order (to ``writer``), the instance table as its ids are final."""
    totals = _OpenTotals()
    counts: Counter[str] = Counter()
    rows = mosaic.grid[0]
    written = 0  # bands whose ids are in the table
    with InstanceTableWriter(table_path) as table:
        for index, (request, summary) in enumerate(zip(requests, summaries, strict=True)):
            stem = request.stem
            totals.extend(numbered.first_ids[index + 1] - 1)
            ids = np.load(part(stem, ".ids.npy"), allow_pickle=False)
            with np.load(part(stem, ".stats.npz"), allow_pickle=False) as stats:
                totals.fold(ids, stats)
            sources = [requests[band].stem for band in numbered.sources.get(request.index, [])]
            counts.update(
                write_band(writer, mosaic, request, sources, declared=summary.declared, rows=summary.geojson_rows)
            )
            release_free_memory()  # the band's transients (see geoseg.io.heap)
            while written <= index and numbered.reach(written) <= index:
                first, stop = numbered.first_ids[written], numbered.first_ids[written + 1]
                table.write(_table_rows(mosaic, totals.take(stop - first), first, requests[written].stem))
                written += 1
            if progress is not None:
                progress(rows + -(-request.stop_row // mosaic.chunk), 2 * rows)
    return counts


class _OpenTotals:
    """Per-id statistics summed over the bands so far, for the ids not in the table yet.

    Entry ``k`` (``k`` ≥ 1) of each :class:`InstanceStats` array is id ``base + k - 1``; entry 0
    takes the dropped regions (id 0) and is ignored.
    """

    def __init__(self) -> None:
        self.base = 1
        self.stats = InstanceStats(0)

    def extend(self, last_id: int) -> None:
        """Room for ids up to ``last_id``."""
        grown = InstanceStats(last_id - self.base + 1 - (len(self.stats.area) - 1))
        for name in _STATS:
            setattr(self.stats, name, np.concatenate([getattr(self.stats, name), getattr(grown, name)[1:]]))

    def fold(self, ids: np.ndarray, stats) -> None:
        """Add a band's per-region statistics (``ids``: each region's id, 0 if dropped)."""
        ids = ids.astype(np.int64)
        if len(ids) and (ids[ids > 0] < self.base).any():
            raise StageError("vectorize: a band reaches ids already written to the instance table (a bug)")
        slots = np.where(ids > 0, ids - self.base + 1, 0)
        np.minimum.at(self.stats.row_min, slots, stats["row_min"])
        np.minimum.at(self.stats.col_min, slots, stats["col_min"])
        np.maximum.at(self.stats.row_max, slots, stats["row_max"])
        np.maximum.at(self.stats.col_max, slots, stats["col_max"])
        np.add.at(self.stats.area, slots, stats["area"])
        np.add.at(self.stats.score_sum, slots, stats["score_sum"])

    def take(self, count: int) -> InstanceStats:
        """The statistics of the next ``count`` ids (from ``base``), released from here."""
        taken = InstanceStats(count)
        for name in _STATS:
            values = getattr(self.stats, name)
            getattr(taken, name)[1:] = values[1 : count + 1]
            setattr(self.stats, name, np.concatenate([values[:1], values[count + 1 :]]))
        self.base += count
        return taken


def _table_rows(mosaic: MosaicInfo, totals: InstanceStats, first_id: int, stem: Path) -> pd.DataFrame:
    """The instance table's rows for ids ``first_id``.. (one band's ids, with their statistics ``totals``)."""
    with np.load(part(stem, ".numbering.npz"), allow_pickle=False) as numbering:
        classes, areas = numbering["class_id"], numbering["area_m2"]
    n = len(classes)
    s = slice(1, n + 1)
    if mosaic.has_scores:
        scores = mosaic.array("scores")
        integer = np.issubdtype(scores.dtype, np.integer)
        scale = float(cast(float, scores.attrs.get("scale_factor", 1 / 255 if integer else 1.0)))
        score = totals.score_sum[s] * scale / np.maximum(totals.area[s], 1)
    else:
        score = np.full(n, np.nan)
    bboxes = np.column_stack([totals.row_min[s], totals.col_min[s], totals.row_max[s], totals.col_max[s]])
    ids = np.arange(first_id, first_id + n)
    table = table_from_columns(ids, classes, mosaic.class_names, score, bboxes, totals.area[s], 0.0)
    table["area_m2"] = areas
    return table


def prepare_instance_array(mosaic: MosaicInfo, table_path: Path) -> None:
    """Before step 3: no table until the raster is whole, and an empty instance array to fill."""
    Path(table_path).unlink(missing_ok=True)
    create_instance_array(mosaic)
