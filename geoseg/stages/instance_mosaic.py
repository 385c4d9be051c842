"""The instance mosaic by bands of tile rows: merged in band tasks, joined and numbered here, painted in band tasks.

1. *Merge* (band tasks, :func:`~geoseg.stages.instance_bands.merge_band_task`): each band of tile
   rows (:func:`~geoseg.infer.merge_bands.plan_merge_bands`; the split depends on the scene and
   tiling only) is merged on its own; its closed components' final instances and its open
   components' raw detections go to part files under ``detections/.merge-parts/``. Parts of a
   killed run made from the same inputs are reused.
2. *Join and number* (here, light): the bands' results come in band order. Each band's open
   detections go into a :class:`~geoseg.infer.merge_bands.BandJoiner`, which closes the
   components that cross seams; their instances are written as a part too.
   Ids go 1..N in row-major order of first pixels, as the whole-scene merge numbers them: after
   band ``b`` every instance still to come lies at or below the next band's window top or the
   first row an open detection covers, so the instances whose first pixel is above both are all
   known and are numbered then (from their metadata, without masks); their table rows are written,
   and each part's ids once all of its instances have one. The driver holds the detections near a
   band seam and the metadata of instances not numbered yet, never the scene's.
3. *Paint* (band tasks, :func:`~geoseg.stages.instance_bands.paint_band`): each band's chunk rows
   are written from the parts that reach them, one writer per chunk (invariant 3).

The result is the whole-scene merge's, for any band split, worker count or tile order (see
:mod:`geoseg.infer.merge_bands`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from geoseg.config.paths import JobPaths
from geoseg.config.schema import InstanceSpec
from geoseg.errors import StageError
from geoseg.infer.detect import tile_file
from geoseg.infer.merge import tile_windows
from geoseg.infer.merge_bands import BandJoiner, MergeBand, band_windows, plan_merge_bands
from geoseg.infer.merge_bands import rows_per_band as default_rows_per_band
from geoseg.io.instances import InstanceTableWriter, create_instance_array, table_from_columns
from geoseg.io.masks import load_masks, save_masks
from geoseg.io.mosaic import MosaicInfo, UnreadTile
from geoseg.io.raster import SceneInfo
from geoseg.stages.instance_bands import (
    InstanceMeta,
    MergeRequest,
    MergeSummary,
    PaintRequest,
    cut_out,
    merge_band_task,
    paint_band,
    part,
)
from geoseg.tiling import Tile
from geoseg.vectorize.classes import RunTasks, in_process
from geoseg.vectorize.metres import pixel_areas_m2

__all__ = ["MergeCounts", "write_instance_rows"]

PARTS = ".merge-parts"  # under the detections folder, so that it goes with them when they are stale


@dataclass
class MergeCounts:
    """Detections read, those cut by a tile edge, instances after the merge and after overlaps were resolved."""

    detections: int = 0
    cut: int = 0
    merged: int = 0
    instances: int = 0


def write_instance_rows(
    paths: JobPaths,
    tiles: list[Tile],
    scene: SceneInfo,
    settings: InstanceSpec,
    unread: list[UnreadTile],
    mosaic: MosaicInfo,
    table: InstanceTableWriter,
    *,
    run_tasks: RunTasks = in_process,
    rows_per_band: int | None = None,
) -> MergeCounts:
    """Merge every band of tile rows' detections and write ``mosaic``'s chunks and ``table``'s rows; the counts.

    Tiles that could not be read have no detections and no say in the merge (their windows are left out).
    ``run_tasks`` runs the band tasks (Ray tasks in a runtime; default: here, one after another);
    ``rows_per_band`` overrides the band split (default: :func:`~geoseg.infer.merge_bands.rows_per_band`).

    Raises:
        StageError: a read tile has no detections file (the detect step did not finish).
    """
    skipped = {tile.tile for tile in unread}
    read = [tile for tile in tiles if tile.index not in skipped]
    missing = [tile.index for tile in read if not tile_file(paths.tile_detections, tile.index).exists()]
    if missing:
        raise StageError(
            f"predict: {len(missing)} tiles have no detections file in {paths.tile_detections}; rerun to resume"
        )
    per_band = rows_per_band or default_rows_per_band(len({tile.row for tile in tiles}))
    bands = plan_merge_bands(tiles, scene.height, per_band)
    parts = paths.tile_detections / PARTS
    windows = tile_windows(read, scene.height, scene.width)
    requests = [_merge_request(band, read, windows, scene, settings, unread, paths, parts) for band in bands]
    summaries = cast(Iterable[MergeSummary], run_tasks(merge_band_task, [(r,) for r in requests]))
    joiner = BandJoiner(
        windows,
        (scene.height, scene.width),
        iou=settings.merge_iou,
        ios=settings.merge_ios,
        min_area=settings.min_area_px,
        prepare=lambda merged: cut_out(merged, unread),
    )
    numbering = _Numbering(mosaic, table)
    counts, joined = _join_and_number(requests, summaries, joiner, numbering)
    create_instance_array(mosaic)
    paint = [_paint_request(band, bands, joined, mosaic, scene, unread, parts) for band in bands]
    for _ in run_tasks(paint_band, [(request,) for request in paint]):
        pass
    shutil.rmtree(parts, ignore_errors=True)
    counts.instances = numbering.count
    return counts


def _merge_request(
    band: MergeBand,
    read: list[Tile],
    windows: dict[int, tuple[int, int, int, int]],
    scene: SceneInfo,
    settings: InstanceSpec,
    unread: list[UnreadTile],
    paths: JobPaths,
    parts: Path,
) -> MergeRequest:
    return MergeRequest(
        band=band,
        tiles=tuple(tuple(t.index for t in read if t.row == row) for row in band.rows),
        windows=band_windows(windows, band),
        scene_shape=(scene.height, scene.width),
        iou=settings.merge_iou,
        ios=settings.merge_ios,
        min_area=settings.min_area_px,
        # Only the unread cores its instances can reach: a repaired tile elsewhere leaves its parts valid.
        unread=tuple(sorted((t for t in unread if t.row < band.bottom and t.row + t.height > band.top), key=_index)),
        detections=str(paths.tile_detections),
        parts=str(parts),
    )


def _index(tile: UnreadTile) -> int:
    return tile.tile  # unread tiles are reported as the actors finish; a key must not depend on that order


@dataclass(frozen=True)
class _Joined:
    """A part of instances closed across band seams, and the scene rows they cover."""

    stem: Path
    top: int
    bottom: int


def _join_and_number(
    requests: list[MergeRequest], summaries: Iterable[MergeSummary], joiner: BandJoiner, numbering: _Numbering
) -> tuple[MergeCounts, list[_Joined]]:
    """Each band's result as it comes: its open detections joined across the seam above, instances numbered."""
    counts = MergeCounts()
    joined: list[_Joined] = []
    for request, summary in zip(requests, summaries, strict=True):
        band, stem = request.band, request.stem
        counts.detections += summary.detections
        counts.cut += summary.cut
        counts.merged += summary.merged
        numbering.add(part(stem, ".closed"), InstanceMeta.load(part(stem, ".closed.meta.npz")))
        finals = joiner.add_band(band, load_masks(part(stem, ".open.npz")))
        if finals:
            across = Path(request.parts) / f"joined_{band.index:05d}"
            save_masks(part(across, ".npz"), finals)
            numbering.add(across, InstanceMeta.of(finals))
            joined.append(_Joined(across, min(i.row for i in finals), max(i.bbox[2] for i in finals)))
        # Every instance still to come lies at or below both (see the module docstring).
        limits = [v for v in (band.next_top, joiner.open_top) if v is not None]
        numbering.number_until(min(limits) if limits else None)
    counts.merged += joiner.merged
    if numbering.pending:
        raise StageError(f"predict: {numbering.pending} instances were never numbered (a bug)")
    return counts, joined


def _paint_request(
    band: MergeBand,
    bands: list[MergeBand],
    joined: list[_Joined],
    mosaic: MosaicInfo,
    scene: SceneInfo,
    unread: list[UnreadTile],
    parts: Path,
) -> PaintRequest:
    """The band's chunk rows (its tiles' cores) and every part whose instances may cover them."""
    first = band.rows[0]
    stop = bands[band.index + 1].rows[0] if band.index + 1 < len(bands) else mosaic.height
    sources = [
        part(parts / f"band_{other.index:05d}", ".closed")
        for other in bands
        if other.top < stop and other.bottom > first
    ]
    sources += [j.stem for j in joined if j.top < stop and j.bottom > first]
    return PaintRequest(
        mosaic=str(mosaic.path),
        scene=str(scene.path),
        first_row=first,
        stop_row=stop,
        sources=tuple(map(str, sources)),
        unread=tuple((t.row, t.col) for t in unread if first <= t.row < stop),
    )


@dataclass
class _Source:
    """One part's final instances (metadata), their ids, and how many of them are numbered (a prefix)."""

    stem: Path
    meta: InstanceMeta
    ids: np.ndarray
    done: int = field(default=0)


class _Numbering:
    """Ids 1..N by first pixel for instances given part by part; table rows and each part's ids written as known."""

    def __init__(self, mosaic: MosaicInfo, table: InstanceTableWriter) -> None:
        self.mosaic, self.table = mosaic, table
        self.sources: list[_Source] = []  # parts with instances not numbered yet
        self.count = 0

    @property
    def pending(self) -> int:
        return sum(len(s.meta) - s.done for s in self.sources)

    def add(self, stem: Path, meta: InstanceMeta) -> None:
        """A part's instances, in first-pixel order (so each part is numbered a prefix at a time)."""
        source = _Source(stem, meta, np.zeros(len(meta), np.uint32))
        if len(meta):
            self.sources.append(source)
        else:
            _write_ids(source)

    def number_until(self, limit: int | None) -> None:
        """Number every instance whose first pixel lies above scene row ``limit`` (None: all)."""
        # Each part is in first-pixel order: what lies above the limit is the next run of its instances.
        ends = [
            len(s.meta) if limit is None else s.done + int(np.searchsorted(s.meta.first_row[s.done :], limit))
            for s in self.sources
        ]
        batch = [(s, end) for s, end in zip(self.sources, ends, strict=True) if end > s.done]
        if not batch:
            return
        meta = InstanceMeta.concat([s.meta.take(slice(s.done, end)) for s, end in batch])
        order = np.lexsort((meta.first_col, meta.first_row))
        ids = np.empty(len(meta), np.uint32)
        ids[order] = np.arange(self.count + 1, self.count + 1 + len(meta))
        self.table.write(instance_table(meta.take(order), self.mosaic, first_id=self.count + 1))
        offset = 0
        for source, end in batch:
            source.ids[source.done : end] = ids[offset : offset + end - source.done]
            offset += end - source.done
            source.done = end
            if end == len(source.meta):
                _write_ids(source)
        self.sources = [s for s in self.sources if s.done < len(s.meta)]
        self.count += len(meta)


def _write_ids(source: _Source) -> None:
    path = part(source.stem, ".ids.npy")
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as out:
        np.save(out, source.ids)
    os.replace(tmp, path)


def instance_table(instances: InstanceMeta, mosaic: MosaicInfo, first_id: int = 1) -> pd.DataFrame:
    """The table rows of ``instances`` (ids ``first_id``, ``first_id`` + 1, ... in their order)."""
    # The ground area of a pixel at each instance's centre: in Web Mercator or degrees it varies with latitude.
    boxes = instances.bbox.astype(np.float64)
    centre_rows, centre_cols = (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5, (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5
    pixel_m2 = pixel_areas_m2(mosaic.transform, mosaic.crs, centre_rows, centre_cols)
    return table_from_columns(
        ids=np.arange(first_id, first_id + len(instances)),
        class_ids=instances.class_id,
        class_names=mosaic.class_names,
        scores=instances.score,
        bboxes=instances.bbox,
        areas_px=instances.area,
        pixel_area_m2=pixel_m2,
    )
