"""The instance mosaic, written row of tiles by row of tiles as the cross-tile merge closes instances.

Rows of tiles are read in order (each tile's detections from its ``.npz``) and merged by
:class:`~geoseg.infer.merge_rows.RowMerger`, which hands back the final instances of every group
of detections no later row can reach. A chunk row is written once nothing open and no later tile
can put an instance on it: its instances are then all known, and so are the ids of those whose
first pixel lies in it (ids go 1..N in row-major order of first pixels, as numbered by the
whole-scene merge, since every instance with an earlier first pixel is known by then). Instances
are released once the chunk rows they cover are written, so the driver holds the detections and
instances near the current row of tiles, not the scene's. One writer per chunk (invariant 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from geoseg.config.paths import JobPaths
from geoseg.config.schema import InstanceSpec
from geoseg.errors import StageError
from geoseg.infer.detect import tile_file
from geoseg.infer.merge import first_pixel, tile_windows
from geoseg.infer.merge_rows import RowMerger
from geoseg.io.instances import InstanceTableWriter, create_instance_array, table_from_columns
from geoseg.io.masks import InstanceMask, load_masks, tight
from geoseg.io.mosaic import MosaicInfo, UnreadTile, leave_invalid, mark_done, write_block
from geoseg.io.raster import SceneInfo, read_valid
from geoseg.tiling import Tile
from geoseg.vectorize.metres import pixel_areas_m2

__all__ = ["MergeCounts", "write_instance_rows"]


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
) -> MergeCounts:
    """Merge every row of tiles' detections and write ``mosaic``'s chunks and ``table``'s rows; the counts.

    Tiles that could not be read have no detections and no say in the merge (their windows are left out).

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
    merger = RowMerger(
        tile_windows(read, scene.height, scene.width),
        (scene.height, scene.width),
        iou=settings.merge_iou,
        ios=settings.merge_ios,
        min_area=settings.min_area_px,
        prepare=lambda merged: cut_out(merged, unread),
    )
    counts = MergeCounts()
    by_row: dict[int, list[Tile]] = {}
    for tile in read:
        by_row.setdefault(tile.row, []).append(tile)
    tile_rows = sorted({tile.row for tile in tiles})
    halo = tiles[0].halo if tiles else 0
    with rasterio.open(scene.path) as src:
        painter = _RowPainter(mosaic, src, unread, table)
        for k, row in enumerate(tile_rows):
            detections = [
                d for tile in by_row.get(row, []) for d in load_masks(tile_file(paths.tile_detections, tile.index))
            ]
            counts.detections += len(detections)
            counts.cut += sum(d.cut for d in detections)
            # Every later tile's window starts at or below the next row's window top.
            next_top = max(tile_rows[k + 1] - halo, 0) if k + 1 < len(tile_rows) else None
            painter.pending.extend(merger.add_row(detections, next_top))
            open_top = merger.open_top
            painter.write_until(min(v for v in (next_top, open_top, mosaic.height) if v is not None))
        counts.merged = merger.merged
    if painter.pending:
        raise StageError(f"predict: {len(painter.pending)} instances were never written (a bug)")
    counts.instances = painter.count
    return counts


class _RowPainter:
    """Numbers final instances by first pixel and writes chunk rows as soon as they are complete."""

    def __init__(self, mosaic: MosaicInfo, src, unread: list[UnreadTile], table: InstanceTableWriter) -> None:
        self.mosaic, self.src, self.table = mosaic, src, table
        self.ids = create_instance_array(mosaic)
        self.unread_cores = {(tile.row, tile.col) for tile in unread}
        self.pending: list[InstanceMask] = []  # final, not numbered yet
        self.numbered: list[tuple[InstanceMask, int]] = []  # may still cover a chunk row not yet written
        self.next_row = 0
        self.count = 0

    def write_until(self, limit: int) -> None:
        """Write every chunk row that ends at or above scene row ``limit``."""
        mosaic = self.mosaic
        while self.next_row < mosaic.height:
            top = self.next_row
            bottom = min(top + mosaic.chunk, mosaic.height)
            if bottom > limit:
                return
            self._number(bottom)
            for col in range(0, mosaic.width, mosaic.chunk):
                self._write_chunk(top, col, bottom - top, min(mosaic.chunk, mosaic.width - col))
            self.numbered = [(i, n) for i, n in self.numbered if i.bbox[2] > bottom]
            self.next_row = bottom

    def _number(self, bottom: int) -> None:
        """Give ids to the pending instances whose first pixel lies above row ``bottom``, in first-pixel order."""
        firsts = [first_pixel(instance) for instance in self.pending]
        ready = sorted((f, k) for k, f in enumerate(firsts) if f[0] < bottom)
        batch = [self.pending[k] for _, k in ready]
        taken = {k for _, k in ready}
        self.pending = [instance for k, instance in enumerate(self.pending) if k not in taken]
        if not batch:
            return
        self.table.write(instance_table(batch, self.mosaic, first_id=self.count + 1))
        self.numbered += [(instance, self.count + 1 + k) for k, instance in enumerate(batch)]
        self.count += len(batch)

    def _write_chunk(self, row: int, col: int, h: int, w: int) -> None:
        mosaic = self.mosaic
        if (row, col) in self.unread_cores:
            leave_invalid(mosaic, row, col, h, w)
            return
        ids = np.zeros((h, w), np.uint32)
        labels = np.zeros((h, w), np.uint8)
        for instance, number in self.numbered:
            part = instance.crop((row, col, row + h, col + w))
            if not part.size:
                continue
            top, left = max(instance.row, row) - row, max(instance.col, col) - col
            target = (slice(top, top + part.shape[0]), slice(left, left + part.shape[1]))
            ids[target][part] = number
            labels[target][part] = instance.class_id
        valid = read_valid(self.src, Window(col, row, w, h))
        ids[~valid], labels[~valid] = 0, 0
        write_block(mosaic, row, col, labels, valid.astype(np.uint8))
        self.ids[row : row + h, col : col + w] = ids
        mark_done(mosaic, row, col)


def instance_table(instances: list[InstanceMask], mosaic: MosaicInfo, first_id: int = 1) -> pd.DataFrame:
    """The table rows of ``instances`` (ids ``first_id``, ``first_id`` + 1, ... in list order)."""
    # The ground area of a pixel at each instance's centre: in Web Mercator or degrees it varies with latitude.
    boxes = np.asarray([i.bbox for i in instances], dtype=np.float64).reshape(-1, 4)
    centre_rows, centre_cols = (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5, (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5
    pixel_m2 = pixel_areas_m2(mosaic.transform, mosaic.crs, centre_rows, centre_cols)
    return table_from_columns(
        ids=np.arange(first_id, first_id + len(instances)),
        class_ids=[i.class_id for i in instances],
        class_names=mosaic.class_names,
        scores=[i.score for i in instances],
        bboxes=[i.bbox for i in instances],
        areas_px=[i.area for i in instances],
        pixel_area_m2=pixel_m2,
    )


def cut_out(instances: list[InstanceMask], unread: list[UnreadTile]) -> list[InstanceMask]:
    """The instances less their pixels in the cores of unread tiles (seen in a neighbour's halo; left invalid)."""
    if not unread:
        return instances
    kept = []
    for instance in instances:
        mask = instance.mask.copy()
        r0, c0, r1, c1 = instance.bbox
        for tile in unread:
            top, left = max(r0, tile.row), max(c0, tile.col)
            bottom, right = min(r1, tile.row + tile.height), min(c1, tile.col + tile.width)
            if bottom > top and right > left:
                mask[top - r0 : bottom - r0, left - c0 : right - c0] = False
        remaining = tight(replace(instance, mask=mask))
        if remaining is not None:
            kept.append(remaining)
    return kept
