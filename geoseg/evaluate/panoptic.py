"""Panoptic Quality of a panoptic mosaic against reference labels, counted band by band.

Kirillov, He, Girshick, Rother & Dollár, "Panoptic Segmentation", CVPR 2019 (arXiv:1801.00868), §4:
a predicted segment and a reference segment of the same class match when their IoU exceeds 0.5 (so
matches are unique); per class, with the matched pairs TP, the unmatched predictions FP and the
unmatched references FN,

    PQ = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ · RQ,   SQ = Σ_TP IoU / |TP|,   RQ = |TP| / (|TP| + ½|FP| + ½|FN|),

and the scene's PQ is the mean over the classes that occur (PQ_th over things, PQ_st over stuff).
Reference segments: every polygon of a thing class is one; every stuff class is one segment (all
its pixels). Predicted segments: each ``panoptic_id`` of a thing, and each stuff class. Pixels the
reference does not know (no data) count nowhere; predicted void pixels (255) belong to no segment.

The COCO evaluation code (panopticapi) reads whole PNG pairs into memory; here the pixel work is one
band of chunk rows at a time (in tasks), and only the table of overlapping segment pairs, which grows
with the number of objects, not pixels, is summed on the caller's side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.io.labels import IGNORE
from geoseg.io.masks import InstanceMask
from geoseg.io.panoptic import PANOPTIC_CLASS, PANOPTIC_ID, VOID

__all__ = ["SegmentCounts", "band_segments", "panoptic_quality", "reference_ids"]

MATCH_IOU = 0.5
_THING = np.int64(1) << 40  # segment keys: a class index for stuff, _THING + id for things


@dataclass
class SegmentCounts:
    """Pixels per reference segment, per predicted segment and per overlapping pair, with each segment's class."""

    truth: Counter[int]
    pred: Counter[int]
    pairs: Counter[tuple[int, int]]
    truth_class: dict[int, int]
    pred_class: dict[int, int]

    @classmethod
    def empty(cls) -> SegmentCounts:
        return cls(Counter(), Counter(), Counter(), {}, {})

    def add(self, other: SegmentCounts) -> None:
        self.truth.update(other.truth)
        self.pred.update(other.pred)
        self.pairs.update(other.pairs)
        self.truth_class.update(other.truth_class)
        self.pred_class.update(other.pred_class)


def reference_ids(truth: Iterable[tuple[int, InstanceMask]], first_row: int, stop_row: int, width: int) -> np.ndarray:
    """Rows ``first_row:stop_row`` with each reference thing painted with its number (> 0), 0 elsewhere.

    Numbers are the scene's (``(number, thing)`` pairs), so that every band names a thing alike.
    """
    out = np.zeros((stop_row - first_row, width), np.int64)
    for number, item in truth:
        r0, r1 = max(item.row, first_row), min(item.row + item.mask.shape[0], stop_row)
        if r0 >= r1:
            continue
        rows = item.mask[r0 - item.row : r1 - item.row]
        window = out[r0 - first_row : r1 - first_row, item.col : item.col + item.mask.shape[1]]
        window[rows] = number
    return out


def _keys(classes: np.ndarray, ids: np.ndarray, thing_classes: set[int]) -> np.ndarray:
    """One key per pixel: the class for stuff, _THING + id for a thing (a thing pixel without an id: -1)."""
    keys = classes.astype(np.int64)
    is_thing = np.isin(classes, list(thing_classes))
    keys[is_thing] = np.where(ids[is_thing] > 0, _THING + ids[is_thing], -1)
    return keys


def band_segments(
    truth_classes: np.ndarray,
    truth_things: np.ndarray,
    pred_classes: np.ndarray,
    pred_ids: np.ndarray,
    thing_classes: set[int],
) -> SegmentCounts:
    """Count one band: reference classes and thing numbers against the panoptic class and id arrays."""
    known = truth_classes != IGNORE
    truth = _keys(truth_classes, truth_things, thing_classes)[known]
    pred = np.where(pred_classes != VOID, _keys(pred_classes, pred_ids, thing_classes), -1)[known]
    truth_cls, pred_cls = truth_classes[known].astype(np.int64), pred_classes[known].astype(np.int64)
    counts = SegmentCounts.empty()
    for keys, classes, area, owner in (
        (truth, truth_cls, counts.truth, counts.truth_class),
        (pred, pred_cls, counts.pred, counts.pred_class),
    ):
        kept = keys >= 0
        unique, first, n = np.unique(keys[kept], return_index=True, return_counts=True)
        area.update(dict(zip(unique.tolist(), n.tolist(), strict=True)))
        owner.update(dict(zip(unique.tolist(), classes[kept][first].tolist(), strict=True)))
    both = (truth >= 0) & (pred >= 0)
    pairs, n = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    counts.pairs.update({(int(t), int(p)): int(c) for (t, p), c in zip(pairs.T, n, strict=True)})
    return counts


def _class_row(iou_sum: float, tp: int, fp: int, fn: int) -> dict:
    denominator = tp + 0.5 * fp + 0.5 * fn
    return {
        "pq": iou_sum / denominator if denominator else None,
        "sq": iou_sum / tp if tp else None,
        "rq": tp / denominator if denominator else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def panoptic_quality(counts: SegmentCounts, class_names: Sequence[str], thing_classes: set[int]) -> dict:
    """PQ, SQ, RQ per class and overall (mean over classes with a segment), things and stuff apart."""
    matched_truth, matched_pred = set(), set()
    iou_sum: dict[int, float] = {}
    tp: Counter[int] = Counter()
    for (t, p), inter in counts.pairs.items():
        cls = counts.truth_class[t]
        if counts.pred_class[p] != cls:
            continue
        iou = inter / (counts.truth[t] + counts.pred[p] - inter)
        if iou > MATCH_IOU:  # unique: two segments of one class cannot both overlap another by more than half
            matched_truth.add(t)
            matched_pred.add(p)
            iou_sum[cls] = iou_sum.get(cls, 0.0) + iou
            tp[cls] += 1
    fn = Counter(counts.truth_class[t] for t in counts.truth if t not in matched_truth)
    fp = Counter(counts.pred_class[p] for p in counts.pred if p not in matched_pred)
    present = sorted(set(counts.truth_class.values()) | set(counts.pred_class.values()))
    per_class = {class_names[c]: _class_row(iou_sum.get(c, 0.0), tp[c], fp[c], fn[c]) for c in present}
    things = [class_names[c] for c in present if c in thing_classes]
    stuff = [class_names[c] for c in present if c not in thing_classes]
    return {
        "pq": _mean(row["pq"] for row in per_class.values()),
        "sq": _mean(row["sq"] for row in per_class.values()),
        "rq": _mean(row["rq"] for row in per_class.values()),
        "pq_things": _mean(per_class[name]["pq"] for name in things),
        "pq_stuff": _mean(per_class[name]["pq"] for name in stuff),
        "per_class": per_class,
        "thing_classes": things,
        "stuff_classes": stuff,
    }


def read_band(mosaic, truth_path: str, first_row: int, stop_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference classes, panoptic classes and ids of rows ``first_row:stop_row``."""
    with rasterio.open(truth_path) as src:
        truth = src.read(1, window=Window(0, first_row, mosaic.width, stop_row - first_row))
    rows = slice(first_row, stop_row)
    return truth, np.asarray(mosaic.array(PANOPTIC_CLASS)[rows, :]), np.asarray(mosaic.array(PANOPTIC_ID)[rows, :])
