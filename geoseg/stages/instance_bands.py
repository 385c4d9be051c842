"""The instance merge's two kinds of band task, and the files they share with the driver.

1. :func:`merge_band_task` merges one band of tile rows (:func:`~geoseg.infer.merge_bands.merge_band`),
   reading its tiles' detections row by row from ``detections/tile_NNNNNN.npz``, and writes its
   parts: ``band_NNNNN.closed.npz`` (the final instances of its closed components, in first-pixel
   order) with ``.closed.meta.npz`` (what numbering and the table need of them, no masks), and
   ``band_NNNNN.open.npz`` (the raw detections the driver joins across seams). Its ``.json``
   summary is written last (temporary name, then renamed): a rerun whose request has the same key
   (same band, tiles read, windows, unread tiles and settings) reuses the parts instead of merging
   again, so a killed merge resumes at the bands without one.
2. :func:`paint_band` writes one band's chunks of the mosaic once the driver has numbered every
   instance (an ``.ids.npy`` beside each instance file): its instances come from every part whose
   rows reach the band, so each chunk has exactly one writer, this task (invariant 3).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.infer.detect import tile_file
from geoseg.infer.merge import first_pixel
from geoseg.infer.merge_bands import MergeBand, merge_band
from geoseg.io.masks import InstanceMask, load_masks, save_masks, tight
from geoseg.io.mosaic import UnreadTile, leave_invalid, mark_done, open_mosaic, write_block
from geoseg.io.raster import read_valid

__all__ = ["InstanceMeta", "MergeRequest", "MergeSummary", "PaintRequest", "merge_band_task", "paint_band"]

PARTS_VERSION = 1  # bump when a part file's content changes meaning
Window4 = tuple[int, int, int, int]
ARRAY_FIELDS = ("first_row", "first_col", "class_id", "score", "bbox", "area")


@dataclass(frozen=True)
class InstanceMeta:
    """What the numbering and the table need of final instances, without their masks (one entry each)."""

    first_row: np.ndarray
    first_col: np.ndarray
    class_id: np.ndarray
    score: np.ndarray
    bbox: np.ndarray  # (n, 4): row0, col0, row1, col1 (ends exclusive)
    area: np.ndarray

    @classmethod
    def of(cls, instances: Sequence[InstanceMask]) -> InstanceMeta:
        firsts = np.array([first_pixel(i) for i in instances], np.int64).reshape(-1, 2)
        return cls(
            first_row=firsts[:, 0],
            first_col=firsts[:, 1],
            class_id=np.array([i.class_id for i in instances], np.int64),
            score=np.array([i.score for i in instances], np.float64),
            bbox=np.array([i.bbox for i in instances], np.int64).reshape(-1, 4),
            area=np.array([i.area for i in instances], np.int64),
        )

    def __len__(self) -> int:
        return len(self.first_row)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by field name (``dataclasses.asdict`` would deep-copy each)."""
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def take(self, index: np.ndarray | slice) -> InstanceMeta:
        return InstanceMeta(**{name: values[index] for name, values in self.arrays().items()})

    @classmethod
    def concat(cls, parts: Sequence[InstanceMeta]) -> InstanceMeta:
        return cls(**{name: np.concatenate([p.arrays()[name] for p in parts]) for name in ARRAY_FIELDS})

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "wb") as out:
            np.savez(
                out,
                first_row=self.first_row,
                first_col=self.first_col,
                class_id=self.class_id,
                score=self.score,
                bbox=self.bbox,
                area=self.area,
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> InstanceMeta:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in ARRAY_FIELDS})


@dataclass(frozen=True)
class MergeRequest:
    """One band's merge: its tiles, the merge's settings, and where to read detections and write parts.

    ``tiles`` holds, per tile row of ``band``, the indices of the tiles that were read; ``windows``
    those tiles' windows that can matter to the band (:func:`~geoseg.infer.merge_bands.band_windows`).
    """

    band: MergeBand
    tiles: tuple[tuple[int, ...], ...]
    windows: dict[int, Window4]
    scene_shape: tuple[int, int]
    iou: float
    ios: float
    min_area: int
    unread: tuple[UnreadTile, ...]
    detections: str
    parts: str

    @property
    def stem(self) -> Path:
        return Path(self.parts) / f"band_{self.band.index:05d}"

    @property
    def key(self) -> str:
        """What the band's parts are made from (paths aside): parts with another key are made again."""
        made_from = {
            "version": PARTS_VERSION,
            "band": asdict(self.band),
            "tiles": self.tiles,
            "windows": sorted(self.windows.items()),
            "shape": self.scene_shape,
            "settings": [self.iou, self.ios, self.min_area],
            "unread": [asdict(tile) for tile in self.unread],
        }
        return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class MergeSummary:
    """What a band's merge found: detections read (and cut by a tile edge), closed instances, open detections."""

    index: int
    key: str
    detections: int
    cut: int
    merged: int  # closed components' instances after the merge, before overlaps were resolved
    closed: int
    open: int


def part(stem: Path, suffix: str) -> Path:
    """The file ``stem`` + ``suffix`` (stems hold dots, so ``with_suffix`` would cut them)."""
    return stem.with_name(stem.name + suffix)


def read_summary(request: MergeRequest) -> MergeSummary | None:
    """The band's summary if its parts are complete and made from the same key, else None."""
    try:
        summary = MergeSummary(**json.loads(part(request.stem, ".json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return summary if summary.key == request.key and summary.index == request.band.index else None


def merge_band_task(request: MergeRequest) -> MergeSummary:
    """Merge one band and write its parts (see the module docstring); its summary."""
    done = read_summary(request)
    if done is not None:
        return done
    counts = {"detections": 0, "cut": 0}

    def rows() -> Iterator[list[InstanceMask]]:
        for indices in request.tiles:
            detections = [d for index in indices for d in load_masks(tile_file(request.detections, index))]
            counts["detections"] += len(detections)
            counts["cut"] += sum(d.cut for d in detections)
            yield detections

    unread = list(request.unread)
    result = merge_band(
        request.band,
        rows(),
        request.windows,
        request.scene_shape,
        iou=request.iou,
        ios=request.ios,
        min_area=request.min_area,
        prepare=lambda merged: cut_out(merged, unread),
    )
    stem = request.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    closed = part(stem, ".closed")
    save_masks(part(closed, ".npz"), result.closed)
    InstanceMeta.of(result.closed).save(part(closed, ".meta.npz"))
    save_masks(part(stem, ".open.npz"), result.open)
    summary = MergeSummary(
        request.band.index,
        request.key,
        merged=result.merged,
        closed=len(result.closed),
        open=len(result.open),
        **counts,
    )
    tmp = part(stem, ".json.partial")
    tmp.write_text(json.dumps(asdict(summary)))
    os.replace(tmp, part(stem, ".json"))
    return summary


def cut_out(instances: list[InstanceMask], unread: Sequence[UnreadTile]) -> list[InstanceMask]:
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


@dataclass(frozen=True)
class PaintRequest:
    """One band of chunk rows to write: the rows, and the instance files (stems) whose instances may reach them.

    Each stem names ``<stem>.npz`` (the instances) and ``<stem>.ids.npy`` (their ids, in the same order).
    """

    mosaic: str
    scene: str
    first_row: int
    stop_row: int
    sources: tuple[str, ...]
    unread: tuple[tuple[int, int], ...]  # (row, col) of the cores left invalid


def paint_band(request: PaintRequest) -> int:
    """Write every chunk of the band's rows: ``labels``, ``valid``, ``instances``, then ``done``; the chunks written."""
    mosaic = open_mosaic(request.mosaic, mode="r+")
    ids_array = mosaic.array("instances")
    numbered = _numbered(request)
    unread = set(request.unread)
    written = 0
    with rasterio.open(request.scene) as src:
        for row in range(request.first_row, request.stop_row, mosaic.chunk):
            h = min(mosaic.chunk, request.stop_row - row)
            in_row = [(i, n) for i, n in numbered if i.row < row + h and i.bbox[2] > row]
            for col in range(0, mosaic.width, mosaic.chunk):
                w = min(mosaic.chunk, mosaic.width - col)
                written += 1
                if (row, col) in unread:
                    leave_invalid(mosaic, row, col, h, w)
                    continue
                ids, labels = _paint((row, col, row + h, col + w), in_row)
                valid = read_valid(src, Window(col, row, w, h))
                ids[~valid], labels[~valid] = 0, 0
                write_block(mosaic, row, col, labels, valid.astype(np.uint8))
                ids_array[row : row + h, col : col + w] = ids
                mark_done(mosaic, row, col)
    return written


def _numbered(request: PaintRequest) -> list[tuple[InstanceMask, int]]:
    """The instances of the request's sources that reach its rows, each with its id."""
    numbered = []
    for stem in map(Path, request.sources):
        ids = np.load(part(stem, ".ids.npy"), allow_pickle=False)
        for instance, number in zip(load_masks(part(stem, ".npz")), ids.tolist(), strict=True):
            if instance.row < request.stop_row and instance.bbox[2] > request.first_row:
                numbered.append((instance, number))
    return numbered


def _paint(region: Window4, numbered: list[tuple[InstanceMask, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The ids and classes of ``region`` (row0, col0, row1, col1) from the numbered instances over it."""
    row, col = region[0], region[1]
    ids = np.zeros((region[2] - row, region[3] - col), np.uint32)
    labels = np.zeros(ids.shape, np.uint8)
    for instance, number in numbered:
        part_mask = instance.crop(region)
        if not part_mask.size:
            continue
        top, left = max(instance.row, row) - row, max(instance.col, col) - col
        target = (slice(top, top + part_mask.shape[0]), slice(left, left + part_mask.shape[1]))
        ids[target][part_mask] = number
        labels[target][part_mask] = instance.class_id
    return ids, labels
