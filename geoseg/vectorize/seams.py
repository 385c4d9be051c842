"""Stitch per-chunk pieces into whole regions across chunk seams.

Chunks arrive in row-major order. Two pieces belong to the same region when a
pixel of one and the pixel facing it across a seam (same row across a vertical
seam, same column across a horizontal one) are both in a region of the same
class. Only facing pixels are compared, never diagonal ones, which is exactly
4-connectivity, so regions that touch at a corner stay apart as they do inside
a chunk. Pieces are grouped with union-find and each group's polygons are
unioned once the group is closed.

A group is closed once no piece of it lies on the bottom edge of the latest chunk
row: nothing read later can reach it. Pieces are therefore held only while
their region is still open, so memory follows the regions crossing the current
seam, not the scene (invariant 2). Chunks can be polygonized anywhere (in
parallel); only this bookkeeping needs to see them in order.
"""

from __future__ import annotations

import numpy as np

from geoseg.vectorize.pixelgeom import union_pieces
from geoseg.vectorize.polygonize import ChunkPieces

__all__ = ["SeamMerger"]


class _UnionFind:
    """Union-find over integer ids; an id absent from ``parent`` is its own root."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, node: int) -> int:
        root = node
        while (up := self.parent.get(root, root)) != root:
            root = up
        while node != root:  # path compression keeps later finds short
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller id (the earlier chunk) stays root: deterministic output.
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def forget(self, nodes) -> None:
        for node in nodes:
            self.parent.pop(node, None)


class SeamMerger:
    """Merge :class:`ChunkPieces` of a ``height`` × ``width`` mosaic, row by row.

    Usage::

        merger = SeamMerger(height, width)
        for each chunk row:
            for each chunk in the row, left to right:
                merger.add(polygonize_chunk(...))
            regions = merger.end_row()   # [(class_id, polygon), ...] now complete

    After the last row ``end_row`` returns every region still open.
    Polygons stay in whatever coordinates the pieces used (global pixels).
    """

    def __init__(self, height: int, width: int) -> None:
        self.height = int(height)
        self.width = int(width)
        self._uf = _UnionFind()
        self._next_id = 1
        # id -> (class, polygon) for every piece whose region is not yet emitted.
        self._pending: dict[int, tuple[int, object]] = {}
        # Global ids and classes along the bottom edge of the previous / current row.
        self._above_ids = np.zeros(self.width, dtype=np.int64)
        self._above_cls = np.zeros(self.width, dtype=np.int64)
        self._below_ids = np.zeros(self.width, dtype=np.int64)
        self._below_cls = np.zeros(self.width, dtype=np.int64)
        self._left_ids = self._left_cls = None  # right column of the previous chunk in this row
        self._row_off = 0
        self._row_height = 0
        self._next_col = 0

    @property
    def done(self) -> bool:
        """True once the last chunk row has been ended."""
        return self._row_off >= self.height

    def add(self, pieces: ChunkPieces) -> None:
        """Take the next chunk (row-major order) and join it to its left and upper neighbours."""
        self._check_order(pieces)
        base = self._next_id - 1
        self._next_id += pieces.count
        for local in range(1, pieces.count + 1):
            self._pending[base + local] = (int(pieces.classes[local]), pieces.polygons[local])

        def ids(edge: np.ndarray) -> np.ndarray:
            return np.where(edge > 0, edge.astype(np.int64) + base, 0)

        cols = slice(pieces.col_off, pieces.col_off + pieces.width)
        if pieces.row_off > 0:
            self._join(self._above_ids[cols], self._above_cls[cols], ids(pieces.top), pieces.classes[pieces.top])
        if pieces.col_off > 0:
            self._join(self._left_ids, self._left_cls, ids(pieces.left), pieces.classes[pieces.left])
        self._left_ids, self._left_cls = ids(pieces.right), pieces.classes[pieces.right]
        self._below_ids[cols] = ids(pieces.bottom)
        self._below_cls[cols] = pieces.classes[pieces.bottom]
        self._next_col += pieces.width

    def end_row(self) -> list[tuple[int, object]]:
        """Close the current chunk row; return the regions that are now complete.

        Each region is ``(class_id, polygon)``; within one call they come in the
        order of their first piece (row-major), so the output is deterministic.
        """
        if self._next_col != self.width:
            raise ValueError(f"chunk row at {self._row_off} ends at column {self._next_col}, "
                             f"not at the mosaic width {self.width}")
        last = self._row_off + self._row_height >= self.height
        still_open = set() if last else {self._uf.find(int(i)) for i in np.unique(self._below_ids) if i}
        groups: dict[int, list[int]] = {}
        for piece_id in self._pending:
            root = self._uf.find(piece_id)
            if root not in still_open:
                groups.setdefault(root, []).append(piece_id)
        regions = [self._emit(members) for members in groups.values()]

        self._above_ids, self._below_ids = self._below_ids, self._above_ids
        self._above_cls, self._below_cls = self._below_cls, self._above_cls
        self._below_ids.fill(0)
        self._below_cls.fill(0)
        self._left_ids = self._left_cls = None
        self._row_off += self._row_height
        self._next_col = 0
        return regions

    def _emit(self, members: list[int]) -> tuple[int, object]:
        class_id = self._pending[members[0]][0]
        polygons = [self._pending.pop(member)[1] for member in members]
        self._uf.forget(members)
        if len(polygons) == 1:
            return class_id, polygons[0]
        # Pieces of one group share seam edges, so their union is one polygon.
        return class_id, union_pieces(polygons)

    def _join(self, ids_a: np.ndarray, cls_a: np.ndarray, ids_b: np.ndarray, cls_b: np.ndarray) -> None:
        """Union the regions whose facing pixels across a seam are of the same class."""
        touching = (ids_a > 0) & (ids_b > 0) & (cls_a == cls_b)
        if not touching.any():
            return
        pairs = np.unique(np.stack([ids_a[touching], ids_b[touching]], axis=1), axis=0)
        for a, b in pairs.tolist():
            self._uf.union(a, b)

    def _check_order(self, pieces: ChunkPieces) -> None:
        # Seams are compared against the previous chunk and row, so the order
        # is part of correctness: refuse anything else rather than mis-merge.
        if self.done:
            raise ValueError("all chunk rows have already been merged")
        if self._next_col == 0:
            expected = (self._row_off, 0)
            self._row_height = pieces.height
        else:
            expected = (self._row_off, self._next_col)
        if (pieces.row_off, pieces.col_off) != expected or pieces.height != self._row_height:
            raise ValueError(f"chunk at (row {pieces.row_off}, col {pieces.col_off}, height {pieces.height}) "
                             f"is out of order; expected (row {expected[0]}, col {expected[1]}, "
                             f"height {self._row_height})")
        if pieces.col_off + pieces.width > self.width:
            raise ValueError(f"chunk at col {pieces.col_off} (width {pieces.width}) "
                             f"runs past the mosaic width {self.width}")
