"""One instance per object across overlapping tiles: merge on *mask* overlap, not boxes.

Every object near a tile border is detected by two to four overlapping tiles.
Those detections are matched by comparing their masks **where both tiles
saw** (the intersection of the two tile windows): there, two views of the same
object agree even when one of them is cut off by its window's edge, and two
neighbouring buildings do not, however close their boxes are. Two detections
of the same class from different tiles are the same object when, inside that
common area, their IoU reaches ``iou`` or their intersection over the smaller
mask reaches ``ios``. Matches are grouped with union-find.

Inside a group the view that saw the object whole wins: members are ranked
whole-before-cut, then by score, and taken greedily; a member that matches an
already kept one is absorbed (dropped if the kept one is whole, its mask
OR-ed in if the kept one is cut too, which happens only for objects larger
than the tile overlap). A member that matches no kept one stays a separate
object, so a chain of matches can never fuse two whole buildings.

The merged instances may still overlap by a few pixels (two neighbouring
masks). :func:`resolve_overlaps` gives every pixel to the most confident
instance, drops an instance that lost most of itself that way, keeps each
instance's largest 4-connected part, and numbers the survivors 1..N in
row-major order of their first pixel, so ids do not depend on tile order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import shapely
from scipy import ndimage

from geoseg.io.masks import InstanceMask, bbox_pairs, overlap, tight

__all__ = ["first_pixel", "merge_detections", "resolve_overlaps", "tile_windows"]

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# Pixels: a mask this close to an inner window edge is "cut"; a cut piece this close to another
# tile's mask of the same object still matches it.
TOUCH = 2


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _common_window(a: InstanceMask, b: InstanceMask) -> tuple[int, int, int, int] | None:
    if a.window is None or b.window is None:
        return None
    return (
        max(a.window[0], b.window[0]),
        max(a.window[1], b.window[1]),
        min(a.window[2], b.window[2]),
        min(a.window[3], b.window[3]),
    )


def _same_object(a: InstanceMask, b: InstanceMask, iou: float, ios: float) -> bool:
    region = _common_window(a, b)
    inter, area_a, area_b = overlap(a, b, region)
    if inter and (inter / (area_a + area_b - inter) >= iou or inter / min(area_a, area_b) >= ios):
        return True
    # A few rows of an object at a window's edge (a "cut" sliver) may miss the other tile's mask
    # of it by a pixel (mask borders are soft): match such a piece against that mask grown by TOUCH px.
    for piece, other in ((a, b), (b, a)):
        if piece.cut and region is not None:
            grown = replace(
                other,
                row=other.row - TOUCH,
                col=other.col - TOUCH,
                mask=ndimage.binary_dilation(np.pad(other.mask, TOUCH), structure=FOUR_CONNECTED, iterations=TOUCH),
            )
            inter, area_piece, _ = overlap(piece, grown, region)
            if area_piece and inter / area_piece >= ios:
                return True
    return False


def _union(a: InstanceMask, b: InstanceMask) -> InstanceMask:
    """``a`` with ``b``'s pixels added (the bounding box grows to hold both)."""
    r0, c0 = min(a.row, b.row), min(a.col, b.col)
    r1, c1 = max(a.bbox[2], b.bbox[2]), max(a.bbox[3], b.bbox[3])
    mask = np.zeros((r1 - r0, c1 - c0), bool)
    for part in (a, b):
        mask[part.row - r0 : part.bbox[2] - r0, part.col - c0 : part.bbox[3] - c0] |= part.mask
    return replace(a, row=r0, col=c0, mask=mask, score=max(a.score, b.score))


def merge_detections(
    detections: list[InstanceMask],
    *,
    iou: float = 0.5,
    ios: float = 0.7,
    windows: dict[int, tuple[int, int, int, int]] | None = None,
    scene_shape: tuple[int, int] | None = None,
) -> list[InstanceMask]:
    """Merge the raw detections of all tiles into one instance per object (see the module doc).

    With ``windows`` (every tile's window, clipped to the scene of
    ``scene_shape``), a cut piece that matched nothing is dropped when another
    tile saw all of its area whole (inside that tile's window, clear of its
    inner edges): that tile is the one to believe there, and it found no such
    object (typically the wing of an L-shaped building that the whole view
    already holds, or nothing at all).

    Returns the kept instances (possibly overlapping a little; see
    :func:`resolve_overlaps`), in a deterministic order.
    """
    # Sorting first makes group ids, and so the output, independent of the order tiles finished in.
    detections = sorted(detections, key=lambda d: (d.tile, d.row, d.col, -d.score))
    pairs = bbox_pairs(detections, margin=TOUCH)
    links: dict[int, set[int]] = {}
    groups = _UnionFind(len(detections))
    for i, j in pairs.tolist():
        a, b = detections[i], detections[j]
        if a.tile == b.tile or a.class_id != b.class_id:  # one tile's own duplicates were removed by its NMS
            continue
        if _same_object(a, b, iou, ios):
            links.setdefault(i, set()).add(j)
            links.setdefault(j, set()).add(i)
            groups.union(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(detections)):
        members.setdefault(groups.find(i), []).append(i)

    merged: list[InstanceMask] = []
    for group in members.values():
        if len(group) == 1:
            merged.append(detections[group[0]])
            continue
        order = sorted(group, key=lambda i: (detections[i].cut, -detections[i].score, i))
        kept: list[tuple[set[int], InstanceMask]] = []  # (detections it stands for, the instance)
        for i in order:
            home = next((k for k, (covered, _) in enumerate(kept) if links.get(i, set()) & covered), None)
            if home is None:
                kept.append(({i}, detections[i]))
                continue
            covered, instance = kept[home]
            if instance.cut and detections[i].cut:  # an object larger than the overlap: stitch its pieces
                covered.add(i)  # a further piece may match this one only
                kept[home] = (covered, _union(instance, detections[i]))
            # Absorbed by a whole view: dropped, and not matched against again, so no chain of
            # matches through it can pull in a neighbour.
        merged.extend(instance for _, instance in kept)
    if windows is not None and scene_shape is not None:
        merged = _drop_pieces_seen_whole(merged, windows, scene_shape)
    return merged


def _drop_pieces_seen_whole(
    instances: list[InstanceMask], windows: dict[int, tuple[int, int, int, int]], scene_shape: tuple[int, int]
) -> list[InstanceMask]:
    height, width = scene_shape
    tiles = sorted(windows)
    # Each window less a margin on its inner edges: what that tile saw with room around it.
    inner = np.array(
        [
            (r0 + TOUCH * (r0 > 0), c0 + TOUCH * (c0 > 0), r1 - TOUCH * (r1 < height), c1 - TOUCH * (c1 < width))
            for r0, c0, r1, c1 in (windows[t] for t in tiles)
        ],
        np.float64,
    )
    tree = shapely.STRtree(shapely.box(inner[:, 1], inner[:, 0], inner[:, 3], inner[:, 2]))
    kept = []
    for instance in instances:
        if instance.cut:
            r0, c0, r1, c1 = instance.bbox
            seen_by = {tiles[k] for k in tree.query(shapely.box(c0, r0, c1, r1), predicate="within").tolist()}
            if seen_by - {instance.tile}:
                continue
        kept.append(instance)
    return kept


def tile_windows(tiles, height: int, width: int) -> dict[int, tuple[int, int, int, int]]:
    """Each tile's window (core + halo) clipped to the scene: ``{index: (row0, col0, row1, col1)}``."""
    return {
        t.index: (
            max(t.row - t.halo, 0),
            max(t.col - t.halo, 0),
            min(t.row - t.halo + t.size, height),
            min(t.col - t.halo + t.size, width),
        )
        for t in tiles
    }


def first_pixel(instance: InstanceMask) -> tuple[int, int]:
    """Scene (row, col) of the instance's first pixel in row-major order."""
    rows = np.flatnonzero(instance.mask.any(axis=1))
    top = int(rows[0])
    return instance.row + top, instance.col + int(np.flatnonzero(instance.mask[top])[0])


def _largest_part(mask: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(mask, structure=FOUR_CONNECTED)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    return parts == (int(np.argmax(sizes)) + 1)


def resolve_overlaps(
    instances: list[InstanceMask], *, min_area: int = 16, keep_fraction: float = 0.5
) -> list[InstanceMask]:
    """Give each pixel to one instance; return non-overlapping, connected instances numbered by position.

    Instances are taken by descending score; each loses the pixels already
    taken. One left with less than ``keep_fraction`` of its pixels, or fewer
    than ``min_area``, is dropped. The result is sorted by :func:`first_pixel`;
    an instance's id is its position in that list plus one.
    """
    order = sorted(range(len(instances)), key=lambda i: (-instances[i].score, first_pixel(instances[i])))
    pairs = bbox_pairs(instances)
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs.tolist():
        neighbours.setdefault(i, []).append(j)
        neighbours.setdefault(j, []).append(i)
    final: dict[int, InstanceMask] = {}
    for i in order:
        instance = instances[i]
        mask = instance.mask.copy()
        r0, c0, r1, c1 = instance.bbox
        for j in neighbours.get(i, ()):
            other = final.get(j)
            if other is None:
                continue
            top, left = max(r0, other.row), max(c0, other.col)
            bottom, right = min(r1, other.bbox[2]), min(c1, other.bbox[3])
            if bottom > top and right > left:
                mask[top - r0 : bottom - r0, left - c0 : right - c0] &= ~other.crop((top, left, bottom, right))
        kept = int(np.count_nonzero(mask))
        if kept < keep_fraction * instance.area:
            continue
        mask = _largest_part(mask)
        result = tight(replace(instance, mask=mask))
        if result is not None and result.area >= min_area:
            final[i] = result
    return sorted(final.values(), key=first_pixel)
