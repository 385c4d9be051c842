"""The cross-tile merge by bands of tile rows: each band merged on its own, then only what crosses a seam.

The merge's connected components are independent (see :mod:`geoseg.infer.merge_rows`), so a band
of tile rows can be merged apart from the rest of the scene as long as every component that
detections of another band could join is left alone. :func:`merge_band` runs a
:class:`~geoseg.infer.merge_rows.RowMerger` over the band's rows, with the next band's window
top after its last row and the reach of the band above as ``top_reach``, and parts the band's
components in two:

- *closed*: no detection of any other band can come within ``2 * TOUCH`` px of them. They are
  whole-scene components, merged and resolved here to exactly what the whole-scene merge gives;
- *open*: every other component, as raw detections (near the band's top or bottom seam; an
  object taller than the band is near both).

Marking a component open is only ever conservative: the geometry comes from the tile plan, so a
component that nothing joins is merged alone across bands and comes out the same. The merge across
bands (:class:`BandJoiner`) is one more :class:`~geoseg.infer.merge_rows.RowMerger` fed each
band's open detections in band order, each band as one "row" with :attr:`MergeBand.next_top`: a
component it closes holds every detection of its whole-scene component, in the same relative
order, so it too gets the whole-scene result. Whoever runs it holds only the detections near a
band seam, not the scene's.

The plan depends on the tile plan alone (never on the worker count), and the instances' ids go by
first pixel, so one band or many, one worker or many, give the same instances and ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from geoseg.infer.merge import TOUCH, first_pixel
from geoseg.infer.merge_rows import RowMerger
from geoseg.io.masks import InstanceMask
from geoseg.tiling import Tile

__all__ = ["BandJoiner", "BandMerge", "MergeBand", "band_windows", "merge_band", "plan_merge_bands", "rows_per_band"]

Window = tuple[int, int, int, int]
# A seam sends the detections within about 2 * halo + an object's height of it through the merge across
# bands, which runs in one process: with cores of 448 px, a 32-px halo and objects of 30 px, some 40% of
# them for bands of one tile row, 10% for four. Fewer rows per band only where that keeps MIN_BANDS bands.
ROWS_PER_BAND = 4
MIN_BANDS = 8


def rows_per_band(tile_rows: int) -> int:
    """Tile rows per band for a scene of ``tile_rows`` rows of tiles: a function of the tiling alone.

    ``ROWS_PER_BAND``, or fewer so that a scene with the rows still splits into ``MIN_BANDS`` bands
    (two per worker for four workers); never the worker count, so that the outputs never depend on it.
    """
    return max(1, min(ROWS_PER_BAND, -(-tile_rows // MIN_BANDS)))


@dataclass(frozen=True)
class MergeBand:
    """One band of whole tile rows and how far it reaches.

    Attributes:
        index: the band's place in the plan (top to bottom).
        rows: the core top of each of its tile rows, in order.
        next_tops: per row, the first scene row any later tile's window covers (None: no later tile).
        top_reach: a component whose box starts above this scene row may join the band above
            (the last window bottom above the band plus ``2 * TOUCH``; None for the first band).
        top, bottom: the scene rows its tiles' windows cover (``bottom`` exclusive): every pixel
            of its detections, and so of its instances, lies in them.
    """

    index: int
    rows: tuple[int, ...]
    next_tops: tuple[int | None, ...]
    top_reach: int | None
    top: int
    bottom: int

    @property
    def next_top(self) -> int | None:
        """The first scene row any tile of a later band sees (None for the last band)."""
        return self.next_tops[-1]


def plan_merge_bands(tiles: Sequence[Tile], height: int, rows_per_band: int) -> list[MergeBand]:
    """The bands of ``rows_per_band`` tile rows (the last may have fewer) of a tile plan on a scene ``height`` high."""
    if rows_per_band < 1:
        raise ValueError(f"rows_per_band must be at least 1 (got {rows_per_band!r})")
    if not tiles:
        return []
    rows = sorted({tile.row for tile in tiles})
    halo, size = tiles[0].halo, tiles[0].size
    # As tile_windows clips them: windows move down with their rows, so these are monotone too.
    tops = [max(row - halo, 0) for row in rows]
    bottoms = [min(row - halo + size, height) for row in rows]
    bands = []
    for index, first in enumerate(range(0, len(rows), rows_per_band)):
        stop = min(first + rows_per_band, len(rows))
        bands.append(
            MergeBand(
                index=index,
                rows=tuple(rows[first:stop]),
                next_tops=tuple(tops[k + 1] if k + 1 < len(rows) else None for k in range(first, stop)),
                top_reach=bottoms[first - 1] + 2 * TOUCH if first else None,
                top=tops[first],
                bottom=bottoms[stop - 1],
            )
        )
    return bands


def band_windows(windows: dict[int, Window], band: MergeBand) -> dict[int, Window]:
    """The windows that can matter to a band's merge: those overlapping the rows its tiles see."""
    return _windows_over(windows, band.top, band.bottom)


def _windows_over(windows: dict[int, Window], top: int, bottom: int) -> dict[int, Window]:
    """The windows overlapping scene rows ``top`` to ``bottom``.

    The merge asks which windows hold an instance's box whole; an instance made of detections in
    those rows has its box there, so no other window can. Leaving them out keeps the merge's
    per-component lookups small on a scene of many tiles.
    """
    return {tile: w for tile, w in windows.items() if w[0] < bottom and w[2] > top}


@dataclass
class BandMerge:
    """One band's merge: its closed components' final instances and its open components' detections.

    Attributes:
        closed: final instances (resolved, numbered by nothing yet), in first-pixel order.
        open: raw detections of every component another band may still join.
        merged: instances of the closed components after the merge, before overlaps were resolved.
    """

    closed: list[InstanceMask]
    open: list[InstanceMask]
    merged: int


def merge_band(
    band: MergeBand,
    rows: Iterable[list[InstanceMask]],
    windows: dict[int, Window],
    scene_shape: tuple[int, int],
    *,
    iou: float,
    ios: float,
    min_area: int,
    prepare: Callable[[list[InstanceMask]], list[InstanceMask]] = lambda merged: merged,
) -> BandMerge:
    """Merge a band's rows of tiles' detections (``rows``, one list per row of ``band.rows``) on their own.

    ``windows`` (every read tile's, or at least :func:`band_windows`' share), ``iou``, ``ios``,
    ``min_area`` and ``prepare`` are the whole-scene merge's (see :class:`~geoseg.infer.merge_rows.RowMerger`).
    ``rows`` may be a generator: a row is read only when the merge gets to it.
    """
    merger = RowMerger(
        windows, scene_shape, iou=iou, ios=ios, min_area=min_area, prepare=prepare, top_reach=band.top_reach
    )
    closed: list[InstanceMask] = []
    for detections, next_top in zip(rows, band.next_tops, strict=True):
        closed.extend(merger.add_row(detections, next_top))
    return BandMerge(sorted(closed, key=first_pixel), [*merger.above, *merger.open], merger.merged)


class BandJoiner:
    """The merge across bands: each band's open detections, in band order (see the module docstring).

    A :class:`~geoseg.infer.merge_rows.RowMerger` with one band per "row", which looks up only the
    windows near the detections it holds (the scene's windows are many; a seam's are few).
    Arguments as for :class:`~geoseg.infer.merge_rows.RowMerger`.
    """

    def __init__(
        self,
        windows: dict[int, Window],
        scene_shape: tuple[int, int],
        *,
        iou: float,
        ios: float,
        min_area: int,
        prepare: Callable[[list[InstanceMask]], list[InstanceMask]] = lambda merged: merged,
    ) -> None:
        self.windows = windows
        self.merger = RowMerger({}, scene_shape, iou=iou, ios=ios, min_area=min_area, prepare=prepare)

    def add_band(self, band: MergeBand, detections: list[InstanceMask]) -> list[InstanceMask]:
        """Add a band's open detections; the final instances of every component that closes, by first pixel."""
        pool = [*self.merger.open, *detections]
        if pool:
            top, bottom = min(d.row for d in pool), max(d.bbox[2] for d in pool)
            self.merger.windows = _windows_over(self.windows, top, bottom)
        return sorted(self.merger.add_row(detections, band.next_top), key=first_pixel)

    @property
    def open(self) -> list[InstanceMask]:
        """The detections of components a later band may still join."""
        return self.merger.open

    @property
    def open_top(self) -> int | None:
        """The first scene row an open detection covers (None: nothing open)."""
        return self.merger.open_top

    @property
    def merged(self) -> int:
        """Instances of the components closed so far, after the merge, before overlaps were resolved."""
        return self.merger.merged
