"""The chunk quadtree of an overview pyramid: each chunk of every level built once, from its four children.

See :mod:`geoseg.io.overviews` for the layout and the two methods (exact per-class counts, or the
validity-weighted cascade). A subtree (a chunk and everything below it) touches no chunk outside
itself, so subtrees can be built by parallel tasks (:func:`build_subtree`), or one after another in
process: the same units either way (:func:`subtree_level`).

A finished subtree is recorded next to the partial levels (:class:`SubtreeRecords`): one ``.npz``
holding what the walk above it needs (its root's counts, or labels and weights), written after all
its chunks, under a temporary name then renamed. A killed build resumes by building only the
subtrees without a record; the walk above the subtree roots reads the records one at a time, so the
driver's memory stays O(levels × chunk²) however many subtrees there are.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zarr
from numcodecs import Zstd

from geoseg.errors import InputRasterError
from geoseg.io.mosaic import MosaicInfo, member_array, open_mosaic
from geoseg.io.multiscales import level_shape

__all__ = [
    "RECORDS",
    "Builder",
    "SubtreeRecords",
    "build_subtree",
    "count_dtype",
    "level_nodes",
    "open_levels",
    "split_level",
    "subtree_level",
]

RECORDS = "_subtrees"  # folder of the partial pyramid holding its key and finished subtrees; removed before the rename
MIN_SUBTREES = 16  # the split has at least this many subtrees (or all of level 1), whatever the worker count
_STAMP = "key.txt"
# Counts are mostly zeros (most classes are absent from most pixels): zstd at level 1 makes a record
# ~10× smaller in ~10 ms per 5 MB, where np.savez_compressed's zlib takes ~200 ms, as long as the subtree.
_CODEC = Zstd(level=1)


def count_dtype(level: int) -> np.dtype:
    # A per-class count at level k is at most 4**k: the narrowest type keeps the
    # accumulators small (uint8 up to factor 8, uint16 up to factor 128).
    top = 4**level
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _block_add(dest: np.ndarray, child: np.ndarray, row0: int, col0: int) -> None:
    """Add the 2×2 block sums of ``child`` (…, h, w) into ``dest`` (…, H, W).

    ``row0``/``col0`` are the child's origin in the parent's grid at *child*
    resolution. When it is odd (odd chunk sides), a parent pixel straddles two
    children: pad one zero row/column in front so the blocks line up with the
    parent's, and let the neighbour child add its half.
    """
    pr, pc = row0 % 2, col0 % 2
    h, w = child.shape[-2:]
    hh, ww = -(-(h + pr) // 2), -(-(w + pc) // 2)
    if pr or pc or h % 2 or w % 2:
        padded = np.zeros((*child.shape[:-2], 2 * hh, 2 * ww), dtype=child.dtype)
        padded[..., pr : pr + h, pc : pc + w] = child
    else:
        padded = child
    # Four strided adds: several times faster than reshape(…, 2, …, 2).sum(axes).
    sums = padded[..., 0::2, 0::2].astype(dest.dtype)
    sums += padded[..., 1::2, 0::2]
    sums += padded[..., 0::2, 1::2]
    sums += padded[..., 1::2, 1::2]
    r, c = row0 // 2, col0 // 2
    dest[..., r : r + hh, c : c + ww] += sums[..., : dest.shape[-2] - r, : dest.shape[-1] - c]


def _place(dest: np.ndarray, child: np.ndarray, row0: int, col0: int) -> None:
    h, w = child.shape[-2:]
    dest[..., row0 : row0 + h, col0 : col0 + w] = child


def _weighted_mode(labels: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 mode of ``labels`` (2H, 2W), each vote weighted by ``weight``; ties → lowest label."""
    h2, w2 = labels.shape
    cand = labels.reshape(h2 // 2, 2, w2 // 2, 2).transpose(1, 3, 0, 2).reshape(4, h2 // 2, w2 // 2)
    wts = weight.reshape(h2 // 2, 2, w2 // 2, 2).transpose(1, 3, 0, 2).reshape(4, h2 // 2, w2 // 2).astype(np.int64)
    score = np.zeros(cand.shape, dtype=np.int64)
    for i in range(4):
        for j in range(4):
            score[i] += np.where(cand[i] == cand[j], wts[j], 0)
    # Candidates with no valid pixel get no score; composite key = score, then the lower label.
    key = np.where(wts > 0, score * 256 + (255 - cand.astype(np.int64)), -1)
    best = np.take_along_axis(cand, key.argmax(axis=0)[None], axis=0)[0]
    total = wts.sum(axis=0)
    return np.where(total > 0, best, 0).astype(np.uint8), total


class SubtreeRecords:
    """The finished subtrees of one partial pyramid, each a ``<level>_<row>_<col>.npz`` in ``partial/_subtrees``.

    Every record, and the folder's stamp, carries the build's key (what the pyramid is made from:
    mosaic, method, factors, split): a record under another key is not this build's and is redone.
    """

    def __init__(self, partial: str | Path, key: str):
        self.folder = Path(partial) / RECORDS
        self.key = key

    def started(self) -> bool:
        """Whether the partial pyramid was created, completely, by a build with this key."""
        try:
            return (self.folder / _STAMP).read_text() == self.key
        except OSError:
            return False

    def begin(self) -> None:
        """Stamp the partial pyramid with the key; called once its levels are all created."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _replace_durably(self.folder / _STAMP, lambda f: f.write(self.key.encode()))

    def path(self, level: int, row: int, col: int) -> Path:
        return self.folder / f"{level}_{row}_{col}.npz"

    def has(self, level: int, row: int, col: int) -> bool:
        """Whether subtree (row, col) of ``level`` is recorded under this key (reads only the key)."""
        try:
            with np.load(self.path(level, row, col)) as record:
                return str(record["key"]) == self.key
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return False

    def load(self, level: int, row: int, col: int) -> Any:
        """The recorded result of subtree (row, col): counts (exact) or (labels, weight) (cascade).

        Raises:
            InputRasterError: the record is missing or was made under another key.
        """
        path = self.path(level, row, col)
        try:
            with np.load(path) as record:
                if str(record["key"]) == self.key:
                    if "counts" in record:
                        return _decoded(record, "counts")
                    return _decoded(record, "labels"), _decoded(record, "weight")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
        raise InputRasterError(f"{path}: overview subtree record missing or stale; run the overview build again")

    def save(self, level: int, row: int, col: int, result: Any) -> Path:
        """Record a subtree's result; call only after every chunk of the subtree is written."""
        arrays: dict[str, np.ndarray]
        if isinstance(result, np.ndarray):
            arrays = {"counts": result}
        else:
            arrays = {"labels": result[0], "weight": result[1]}
        members: dict[str, Any] = {"key": np.array(self.key)}  # Any: mypy would take a key for allow_pickle
        for name, array in arrays.items():
            members[name] = np.frombuffer(_CODEC.encode(np.ascontiguousarray(array)), np.uint8)
            members[f"{name}_shape"] = np.array(array.shape)
            members[f"{name}_dtype"] = np.array(array.dtype.str)
        path = self.path(level, row, col)
        self.folder.mkdir(parents=True, exist_ok=True)
        _replace_durably(path, lambda f: np.savez(f, **members))
        return path


def _decoded(record: Any, name: str) -> np.ndarray:
    """Array ``name`` of an open record, as it was saved (see :meth:`SubtreeRecords.save`)."""
    dtype = np.dtype(str(record[f"{name}_dtype"]))
    shape = tuple(int(n) for n in record[f"{name}_shape"])
    return np.frombuffer(_CODEC.decode(record[name].tobytes()), dtype=dtype).reshape(shape)


def _replace_durably(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` under a temporary name, flushed to disk, then rename it: a reader sees all of it or none."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class Builder:
    """Depth-first walk of the chunk quadtree, writing each level's chunks as they complete."""

    def __init__(
        self,
        mosaic: MosaicInfo,
        levels: dict[int, tuple[zarr.Array, zarr.Array]],
        exact: bool,
        records: SubtreeRecords | None = None,
        split: int | None = None,
    ):
        self.mosaic = mosaic
        self.levels = levels  # level k → (labels, valid) arrays
        self.exact = exact
        self.classes = max(len(mosaic.class_names), 1)
        self.chunk = mosaic.chunk
        # Chunks of level ``split`` are subtree roots built elsewhere (a task, or earlier in process): read
        # from their records when the walk reaches them, never all held at once.
        self.records = records
        self.split = split

    def node(self, level: int, row: int, col: int):
        """Counts (exact) or (labels, weight) (cascade) of chunk (row, col) of ``level``."""
        if self.records is not None and level == self.split:
            return self.records.load(level, row, col)
        c = self.chunk
        height, width = level_shape(self.mosaic.height, self.mosaic.width, level)
        h, w = min(c, height - row * c), min(c, width - col * c)
        if level == 0:
            return self._base(row * c, col * c, h, w)
        if self.exact:
            acc = np.zeros((self.classes, h, w), dtype=count_dtype(level))
        else:
            # Children are placed at their own resolution, then reduced 2×2 at once,
            # so odd chunk sides need no special case.
            lab = np.zeros((2 * h, 2 * w), dtype=np.uint8)
            wts = np.zeros((2 * h, 2 * w), dtype=count_dtype(level))
        child_h, child_w = level_shape(self.mosaic.height, self.mosaic.width, level - 1)
        for i in (0, 1):
            for j in (0, 1):
                crow, ccol = 2 * row + i, 2 * col + j
                if crow * c >= child_h or ccol * c >= child_w:
                    continue
                child = self.node(level - 1, crow, ccol)
                if self.exact:
                    _block_add(acc, child, i * c, j * c)
                else:
                    _place(lab, child[0], i * c, j * c)
                    _place(wts, child[1], i * c, j * c)
        result: np.ndarray | tuple[np.ndarray, np.ndarray]
        if self.exact:
            valid = acc.any(axis=0)
            # argmax returns the first maximum: ties go to the lowest class index.
            labels = np.where(valid, acc.argmax(axis=0), 0).astype(np.uint8)
            result = acc
        else:
            labels, weight = _weighted_mode(lab, wts)
            valid = weight > 0
            result = (labels, weight.astype(count_dtype(level)))
        out_labels, out_valid = self.levels[level]
        out_labels[row * c : row * c + h, col * c : col * c + w] = labels
        out_valid[row * c : row * c + h, col * c : col * c + w] = valid.astype(np.uint8)
        return result

    def _base(self, row_off: int, col_off: int, h: int, w: int):
        labels = np.asarray(self.mosaic.labels[row_off : row_off + h, col_off : col_off + w])
        valid = np.asarray(self.mosaic.valid[row_off : row_off + h, col_off : col_off + w]) != 0
        if valid.any():
            top = int(labels[valid].max())
            if top >= self.classes:
                raise InputRasterError(
                    f"{self.mosaic.path}: labels hold class {top} at chunk ({row_off}, {col_off}) but the mosaic "
                    f"names only {self.classes} classes {list(self.mosaic.class_names)!r}; run `geoseg predict` again"
                )
        if self.exact:
            counts = np.zeros((self.classes, h, w), dtype=np.uint8)
            for k in range(self.classes):
                counts[k] = (labels == k) & valid
            return counts
        return np.where(valid, labels, 0).astype(np.uint8), valid.astype(np.uint8)


def level_nodes(mosaic: MosaicInfo, level: int) -> list[tuple[int, int]]:
    height, width = level_shape(mosaic.height, mosaic.width, level)
    return [(r, c) for r in range(-(-height // mosaic.chunk)) for c in range(-(-width // mosaic.chunk))]


def split_level(mosaic: MosaicInfo, top: int, enough: int) -> int | None:
    """The highest level (fewest chunks) with at least ``enough`` chunks; None when even level 1 has fewer."""
    for level in range(top, 0, -1):
        if len(level_nodes(mosaic, level)) >= enough:
            return level
    return None


def subtree_level(mosaic: MosaicInfo, top: int, workers: int = 1) -> int:
    """The level whose chunks are the subtree roots, for one worker or many.

    The highest level with at least ``MIN_SUBTREES`` chunks (two per worker past eight workers), else
    level 1: the split depends on the mosaic's shape alone up to eight workers, so a build killed with
    one worker resumes with four and the other way round (the split is part of the partial's key).
    """
    return split_level(mosaic, top, max(MIN_SUBTREES, 2 * workers)) or 1


def open_levels(partial: str | Path, top: int) -> dict[int, tuple[zarr.Array, zarr.Array]]:
    """Levels 1…``top`` of a partial pyramid: level k → its (labels, valid) arrays."""
    group = zarr.open_group(str(partial), mode="r+")
    return {k: (member_array(group, f"{2**k}/labels"), member_array(group, f"{2**k}/valid")) for k in range(1, top + 1)}


def build_subtree(mosaic_path: str, partial: str, exact: bool, level: int, row: int, col: int, key: str) -> str:
    """Build and write chunk (row, col) of ``level`` and every chunk below it, then record it (a task).

    Returns:
        The record's path: the result itself stays on disk, so the driver never holds every subtree's.
    """
    mosaic = open_mosaic(mosaic_path)
    result = Builder(mosaic, open_levels(partial, level), exact).node(level, row, col)
    return str(SubtreeRecords(partial, key).save(level, row, col, result))
