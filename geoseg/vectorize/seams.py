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

With ``track_pieces=True`` the merger also remembers which region every piece
went into (one int32 per piece, not per pixel), so that a second pass can give
each chunk's components their whole-mosaic region (see
:mod:`geoseg.vectorize.components`).
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
    With ``first_row``, the rows from there to ``height`` are merged as a mosaic of their own
    (a band: :mod:`geoseg.vectorize.bands`); the pieces' coordinates stay the whole mosaic's.
    Polygons stay in whatever coordinates the pieces used (global pixels).

    Regions are numbered 0, 1, ... in the order ``end_row`` returns them, over
    all calls. With ``track_pieces=True``, once the last row is ended,
    :meth:`chunk_regions` gives that number for every component of every chunk.
    """

    def __init__(self, height: int, width: int, *, track_pieces: bool = False, first_row: int = 0) -> None:
        self.height = int(height)
        self.first_row = int(first_row)  # > 0: merge only the band of rows first_row:height
        self.width = int(width)
        self._uf = _UnionFind()
        self._next_id = 1
        self._emitted = 0
        self._track = bool(track_pieces)
        # Global piece id -> region number (-1 until emitted); [0] is unused.
        self._piece_region = np.full(1024 if track_pieces else 0, -1, dtype=np.int32)
        self._chunk_base: list[int] = []  # per chunk added: global id of its component 0
        # id -> (class, polygon) for every piece whose region is not yet emitted.
        self._pending: dict[int, tuple[int, object]] = {}
        # Global ids and classes along the bottom edge of the previous / current row.
        self._above_ids = np.zeros(self.width, dtype=np.int64)
        self._above_cls = np.zeros(self.width, dtype=np.int64)
        self._below_ids = np.zeros(self.width, dtype=np.int64)
        self._below_cls = np.zeros(self.width, dtype=np.int64)
        # Right column of the previous chunk in this row (None at the start of a row).
        self._left_ids: np.ndarray | None = None
        self._left_cls: np.ndarray | None = None
        self._row_off = self.first_row
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
        if self._track:
            self._chunk_base.append(base)
            if self._next_id > len(self._piece_region):  # grow geometrically: amortized O(1) per piece
                grown = np.full(max(self._next_id, 2 * len(self._piece_region)), -1, dtype=np.int32)
                grown[: len(self._piece_region)] = self._piece_region
                self._piece_region = grown
        for local in range(1, pieces.count + 1):
            self._pending[base + local] = (int(pieces.classes[local]), pieces.polygons[local])

        def ids(edge: np.ndarray) -> np.ndarray:
            return np.where(edge > 0, edge.astype(np.int64) + base, 0)

        cols = slice(pieces.col_off, pieces.col_off + pieces.width)
        if pieces.row_off > self.first_row:
            self._join(self._above_ids[cols], self._above_cls[cols], ids(pieces.top), pieces.classes[pieces.top])
        if pieces.col_off > 0:
            # _check_order: col_off > 0 only after a chunk of this row was added.
            assert self._left_ids is not None and self._left_cls is not None
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
            raise ValueError(
                f"chunk row at {self._row_off} ends at column {self._next_col}, not at the mosaic width {self.width}"
            )
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

    def chunk_regions(self, index: int, count: int) -> np.ndarray:
        """Region number of each component of the ``index``-th chunk added (row-major).

        Args:
            index: the chunk's position in the order :meth:`add` saw it.
            count: its number of components (``ChunkPieces.count``).

        Returns:
            int32 array ``r`` of length ``count + 1``: ``r[i]`` is the number of
            the region (position in the concatenated ``end_row`` outputs) that
            component ``i`` belongs to; ``r[0]`` is -1 (no component).

        Raises:
            ValueError: pieces were not tracked, the merge is not finished, or
                ``count`` is not the chunk's component count.
        """
        if not self._track:
            raise ValueError("SeamMerger was made without track_pieces=True")
        if not self.done:
            raise ValueError("chunk_regions needs the merge finished: end the last chunk row first")
        base = self._chunk_base[index]
        end = self._chunk_base[index + 1] if index + 1 < len(self._chunk_base) else self._next_id - 1
        if end - base != count:
            raise ValueError(f"chunk {index} had {end - base} components when merged, not {count}")
        out = np.empty(count + 1, dtype=np.int32)
        out[0] = -1
        out[1:] = self._piece_region[base + 1 : end + 1]
        return out

    def _emit(self, members: list[int]) -> tuple[int, object]:
        class_id = self._pending[members[0]][0]
        polygons = [self._pending.pop(member)[1] for member in members]
        self._uf.forget(members)
        if self._track:
            self._piece_region[members] = self._emitted
        self._emitted += 1
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
            raise ValueError(
                f"chunk at (row {pieces.row_off}, col {pieces.col_off}, height {pieces.height}) "
                f"is out of order; expected (row {expected[0]}, col {expected[1]}, "
                f"height {self._row_height})"
            )
        if pieces.col_off + pieces.width > self.width:
            raise ValueError(
                f"chunk at col {pieces.col_off} (width {pieces.width}) runs past the mosaic width {self.width}"
            )
