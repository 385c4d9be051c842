"""The cross-tile merge one row of tiles at a time, holding only what later rows can still reach.

:func:`~geoseg.infer.merge.merge_detections` and :func:`~geoseg.infer.merge.resolve_overlaps`
only ever compare detections whose boxes come within ``TOUCH`` px of each other (a match needs
mask overlap or a touch; a pixel contest needs overlapping boxes, and a merged instance's box is
the union of its members'). So detections in different connected components of that "near"
graph never influence each other: each component can be merged and resolved alone and gets what
the whole-scene merge gives it. Ties are broken the same way too, since a component's detections
keep the relative order of the whole sorted list (and the groups, the order of their smallest
member).

:class:`RowMerger` takes the detections of one row of tiles at a time (rows in order). Every
later tile's window starts at or below the next row's window top, so a component whose every
box ends ``2 * TOUCH`` px above that top is closed: it is merged and resolved then, and only the
open components are kept. The driver's memory follows the detections near the current row of
tiles, not the scene's.

The same reach works upwards for a band of tile rows merged on its own
(:mod:`geoseg.infer.merge_bands`): every earlier tile's window ends at or above the window bottom
of the row just above the band, so with ``top_reach`` (that bottom plus ``2 * TOUCH``) a closed
component that starts above it is not merged but handed back raw (:attr:`RowMerger.above`), for
the merge across bands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from geoseg.infer.merge import TOUCH, merge_detections, resolve_overlaps
from geoseg.io.masks import InstanceMask, bbox_pairs

__all__ = ["RowMerger"]


def _components(detections: list[InstanceMask]) -> list[list[int]]:
    """Index lists of the near-graph's connected components, each sorted, ordered by smallest index."""
    parent = list(range(len(detections)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in bbox_pairs(detections, margin=TOUCH).tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(detections)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


class RowMerger:
    """Merge and resolve detections row of tiles by row of tiles (see the module docstring).

    Args:
        windows: every tile's window (:func:`~geoseg.infer.merge.tile_windows`), for the
            "seen whole elsewhere" rule of the merge.
        scene_shape: ``(height, width)``.
        iou, ios: the merge's thresholds; ``min_area``: the smallest instance kept.
        prepare: applied to a component's merged instances before they are resolved
            (e.g. cutting out unread tiles); must act on each instance alone.
        top_reach: a component with a box starting above this scene row may join detections of
            earlier rows not given to this merger (another band's): when it closes, its detections
            go to :attr:`above` unmerged. None: every earlier row is given here.
    """

    def __init__(
        self,
        windows: dict[int, tuple[int, int, int, int]],
        scene_shape: tuple[int, int],
        *,
        iou: float,
        ios: float,
        min_area: int,
        prepare: Callable[[list[InstanceMask]], list[InstanceMask]] = lambda merged: merged,
        top_reach: int | None = None,
    ) -> None:
        self.windows, self.scene_shape = windows, scene_shape
        self.iou, self.ios, self.min_area, self.prepare = iou, ios, min_area, prepare
        self.top_reach = top_reach
        self.open: list[InstanceMask] = []  # detections of components later rows may still join
        self.above: list[InstanceMask] = []  # detections of closed components earlier rows may join
        self.merged = 0  # instances after the merge, before overlaps were resolved (closed components)

    @property
    def open_top(self) -> int | None:
        """The first scene row an open detection covers (None: nothing open)."""
        return min((d.row for d in self.open), default=None)

    def add_row(self, detections: Iterable[InstanceMask], next_top: int | None) -> list[InstanceMask]:
        """Add one row of tiles' detections; the final instances of every component now closed.

        ``next_top`` is the first scene row any later tile's window covers (None after the last row).
        The instances come in first-pixel order within each component, components in order of their
        first detection (by tile, row, column, score).
        """
        # The whole merge's order, kept by every component (see the module docstring).
        pool = sorted([*self.open, *detections], key=lambda d: (d.tile, d.row, d.col, -d.score))
        finals: list[InstanceMask] = []
        still_open: list[InstanceMask] = []
        for members in _components(pool):
            group = [pool[i] for i in members]
            if next_top is not None and max(d.bbox[2] for d in group) + 2 * TOUCH > next_top:
                still_open.extend(group)
                continue
            if self.top_reach is not None and min(d.row for d in group) < self.top_reach:
                self.above.extend(group)
                continue
            merged = merge_detections(
                group, iou=self.iou, ios=self.ios, windows=self.windows, scene_shape=self.scene_shape
            )
            self.merged += len(merged)
            finals.extend(resolve_overlaps(self.prepare(merged), min_area=self.min_area))
        self.open = still_open
        return finals
