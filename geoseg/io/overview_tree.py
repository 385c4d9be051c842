"""The chunk quadtree of an overview pyramid: each chunk of every level built once, from its four children.

See :mod:`geoseg.io.overviews` for the layout and the two methods (exact per-class counts, or the
validity-weighted cascade). A subtree (a chunk and everything below it) touches no chunk outside
itself, so subtrees can be built by parallel tasks (:func:`build_subtree`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from geoseg.errors import InputRasterError
from geoseg.io.mosaic import MosaicInfo, member_array, open_mosaic
from geoseg.io.multiscales import level_shape

__all__ = ["Builder", "build_subtree", "count_dtype", "level_nodes", "split_level"]


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


class Builder:
    """Depth-first walk of the chunk quadtree, writing each level's chunks as they complete."""

    def __init__(self, mosaic: MosaicInfo, levels: dict[int, tuple[zarr.Array, zarr.Array]], exact: bool):
        self.mosaic = mosaic
        self.levels = levels  # level k → (labels, valid) arrays
        self.exact = exact
        self.classes = max(len(mosaic.class_names), 1)
        self.chunk = mosaic.chunk
        self.done: dict[tuple[int, int, int], Any] = {}  # (level, row, col) → a result built elsewhere (a task)

    def node(self, level: int, row: int, col: int):
        """Counts (exact) or (labels, weight) (cascade) of chunk (row, col) of ``level``."""
        if (level, row, col) in self.done:
            return self.done[(level, row, col)]
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


def build_subtree(mosaic_path: str, partial: str, exact: bool, level: int, row: int, col: int):
    """Build and write chunk (row, col) of ``level`` and every chunk below it; return its counts (a task)."""
    mosaic = open_mosaic(mosaic_path)
    group = zarr.open_group(partial, mode="r+")
    levels = {
        k: (member_array(group, f"{2**k}/labels"), member_array(group, f"{2**k}/valid")) for k in range(1, level + 1)
    }
    return Builder(mosaic, levels, exact).node(level, row, col)
