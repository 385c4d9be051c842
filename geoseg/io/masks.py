"""Instance masks kept small: a boolean crop and where it sits in the scene.

A whole-scene boolean array per building would cost the scene's size per
instance; an :class:`InstanceMask` costs its bounding box. Everything that
handles instances (tile predictions, the cross-tile merge, the evaluation,
the SAHI-style baseline) speaks this one type, in *global pixel coordinates*
(row, column of the whole scene).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import shapely

__all__ = ["InstanceMask", "bbox_pairs", "load_masks", "mask_ios", "mask_iou", "overlap", "save_masks", "tight"]


@dataclass(frozen=True, eq=False)
class InstanceMask:
    """One instance: ``mask[i, j]`` is scene pixel ``(row + i, col + j)``.

    Attributes:
        row, col: scene pixel of ``mask[0, 0]``.
        mask: boolean (h, w); True where the instance is.
        class_id: class index (into the job's classes; 0 is background).
        score: detection confidence in [0, 1] (1.0 for reference instances).
        tile: index of the tile that predicted it (-1: not from a tile).
        cut: True when the mask touches its tile window's edge inside the
            scene, i.e. the tile saw only part of the object.
        window: ``(row0, col0, row1, col1)`` of the tile window, clipped to
            the scene, that saw it (None: the whole scene).
    """

    row: int
    col: int
    mask: np.ndarray
    class_id: int = 1
    score: float = 1.0
    tile: int = -1
    cut: bool = False
    window: tuple[int, int, int, int] | None = field(default=None)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(row0, col0, row1, col1)``, ends exclusive."""
        h, w = self.mask.shape
        return self.row, self.col, self.row + h, self.col + w

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def crop(self, region: tuple[int, int, int, int]) -> np.ndarray:
        """The part of the mask inside ``region`` (row0, col0, row1, col1), as a view."""
        r0, c0, r1, c1 = self.bbox
        top, left = max(r0, region[0]), max(c0, region[1])
        bottom, right = min(r1, region[2]), min(c1, region[3])
        if bottom <= top or right <= left:
            return self.mask[:0, :0]
        return self.mask[top - r0 : bottom - r0, left - c0 : right - c0]


def tight(instance: InstanceMask) -> InstanceMask | None:
    """The same instance with its mask cropped to its true extent; None if empty."""
    rows = np.flatnonzero(instance.mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(instance.mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (r0, c0, r1 - r0, c1 - c0) == (0, 0, *instance.mask.shape):
        return instance
    return replace(
        instance,
        row=instance.row + int(r0),
        col=instance.col + int(c0),
        mask=np.ascontiguousarray(instance.mask[r0:r1, c0:c1]),
    )


def _intersect(a: tuple, b: tuple) -> tuple[int, int, int, int] | None:
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    return (r0, c0, r1, c1) if r1 > r0 and c1 > c0 else None


def overlap(a: InstanceMask, b: InstanceMask, region: tuple[int, int, int, int] | None = None) -> tuple[int, int, int]:
    """``(intersection, area_a, area_b)`` in pixels, optionally counted only inside ``region``."""
    area_a = int(np.count_nonzero(a.crop(region))) if region is not None else a.area
    area_b = int(np.count_nonzero(b.crop(region))) if region is not None else b.area
    common = _intersect(a.bbox, b.bbox)
    if common is not None and region is not None:
        common = _intersect(common, region)
    if common is None:
        return 0, area_a, area_b
    return int(np.count_nonzero(a.crop(common) & b.crop(common))), area_a, area_b


def mask_iou(a: InstanceMask, b: InstanceMask, region: tuple[int, int, int, int] | None = None) -> float:
    """Intersection over union of two masks (inside ``region`` if given)."""
    inter, area_a, area_b = overlap(a, b, region)
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def mask_ios(a: InstanceMask, b: InstanceMask, region: tuple[int, int, int, int] | None = None) -> float:
    """Intersection over the smaller mask (inside ``region`` if given)."""
    inter, area_a, area_b = overlap(a, b, region)
    smaller = min(area_a, area_b)
    return inter / smaller if smaller else 0.0


def bbox_pairs(left: list[InstanceMask], right: list[InstanceMask] | None = None, margin: int = 0) -> np.ndarray:
    """Index pairs ``(i, j)`` whose bounding boxes overlap (by at least one pixel), as an (n, 2) array.

    With one list, each unordered pair ``i < j`` comes once; with two, ``i``
    indexes ``left`` and ``j`` ``right``. ``margin`` grows every box by that
    many pixels first (pairs that come within ``2 * margin`` of each other).
    An STR-tree keeps this near-linear.
    """

    def boxes(items):
        # Shrunk by a hair so boxes that only share an edge do not count as overlapping.
        bb = np.array([m.bbox for m in items], dtype=np.float64).reshape(-1, 4)
        eps = 1e-6 - margin
        return shapely.box(bb[:, 1] + eps, bb[:, 0] + eps, bb[:, 3] - eps, bb[:, 2] - eps)

    if not left or (right is not None and not right):
        return np.zeros((0, 2), dtype=np.int64)
    left_boxes = boxes(left)
    right_boxes = left_boxes if right is None else boxes(right)
    tree = shapely.STRtree(right_boxes)
    i, j = tree.query(left_boxes, predicate="intersects")
    pairs = np.stack([i, j], axis=1).astype(np.int64)
    if right is None:
        pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def save_masks(path, masks: list[InstanceMask]) -> None:
    """Write instances to one ``.npz`` (bit-packed masks), under a temporary name, renamed when complete.

    Used for each tile's raw detections, so the merge can be rerun (or
    compared with another merge) without predicting again.
    """
    import os
    from pathlib import Path

    path = Path(path)
    shapes = np.array([m.mask.shape for m in masks], dtype=np.int64).reshape(-1, 2)
    packed = [np.packbits(m.mask.ravel()) for m in masks]
    offsets = np.cumsum([0] + [len(p) for p in packed]).astype(np.int64)
    windows = np.array([m.window if m.window is not None else (-1, -1, -1, -1) for m in masks], dtype=np.int64).reshape(
        -1, 4
    )
    tmp = path.with_name(f".{path.stem}.partial.npz")
    np.savez(
        tmp,
        rows=np.array([m.row for m in masks], np.int64),
        cols=np.array([m.col for m in masks], np.int64),
        shapes=shapes,
        bits=np.concatenate(packed) if packed else np.zeros(0, np.uint8),
        offsets=offsets,
        class_ids=np.array([m.class_id for m in masks], np.int64),
        scores=np.array([m.score for m in masks], np.float32),
        tiles=np.array([m.tile for m in masks], np.int64),
        cut=np.array([m.cut for m in masks], bool),
        windows=windows,
    )
    os.replace(tmp, path)


def load_masks(path) -> list[InstanceMask]:
    """Read what :func:`save_masks` wrote (plain arrays only: ``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        out = []
        for i in range(len(data["rows"])):
            h, w = (int(v) for v in data["shapes"][i])
            bits = data["bits"][data["offsets"][i] : data["offsets"][i + 1]]
            row0, col0, row1, col1 = (int(v) for v in data["windows"][i])
            window = (row0, col0, row1, col1)
            out.append(
                InstanceMask(
                    row=int(data["rows"][i]),
                    col=int(data["cols"][i]),
                    mask=np.unpackbits(bits, count=h * w).astype(bool).reshape(h, w),
                    class_id=int(data["class_ids"][i]),
                    score=float(data["scores"][i]),
                    tile=int(data["tiles"][i]),
                    cut=bool(data["cut"][i]),
                    window=None if window[0] < 0 else window,
                )
            )
        return out
