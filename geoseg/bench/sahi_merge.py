"""SAHI's slice-merging postprocess, re-implemented as a baseline for the cross-tile merge.

geoseg merges duplicates across tiles on *mask* overlap (DESIGN §4). This
module reproduces what SAHI does instead, so the two can be compared on the
same raw tile detections. It follows SAHI (github.com/obss/sahi) as of its
backend-dispatch refactor, with the defaults of
``sahi.predict.get_sliced_prediction`` for instance segmentation:
``postprocess_type="GREEDYNMM"``, ``postprocess_match_metric="IOS"``,
``postprocess_match_threshold=0.5``, ``postprocess_class_agnostic=False``,
``merge_buffer_length=None`` (one postprocess over all slices' predictions).

What SAHI does, and where:

1. Boxes, not masks (``sahi/prediction.py``, ``ObjectPrediction.__init__``;
   ``sahi/utils/cv.py``, ``get_bbox_from_coco_segmentation`` /
   ``get_bbox_from_bool_mask``): a prediction with a mask takes its box from
   the mask, as ``[xmin, ymin, xmax, ymax]`` of the *first and last* mask pixel
   (pixel indices, inclusive ends), so a mask ``w`` pixels wide has a box
   ``w - 1`` wide and area ``(w - 1)(h - 1)``. Reproduced exactly here.
2. Candidate matches (``sahi/postprocess/combine.py``: ``GreedyNMMPostprocess``
   → ``batched_greedy_nmm`` → ``_batched_apply`` per category;
   ``sahi/postprocess/_numpy_backend.py``: ``greedy_nmm_from_matrix``,
   ``compute_metric_matrix``, ``_score_tiebreak_order``): per class, boxes are
   visited by score descending (ties: x1, y1, x2, y2 ascending); a box not yet
   absorbed becomes a *keep* and absorbs every later, not yet absorbed box whose
   IoS with the keep's *original* box is ``>= match_threshold`` (IoS =
   intersection area / smaller box area, float32; 0 when the smaller area is 0).
   Absorbed boxes never become keeps and are never absorbed again, so the
   grouping is greedy and not transitive: A~B and B~C with A≁C leaves C to
   start its own group (or join another keep).
3. Merging (``combine.py``: ``_apply_merge``; ``sahi/postprocess/utils.py``:
   ``has_match``, ``calculate_bbox_ios``, ``merge_object_prediction_pair``,
   ``get_merged_bbox/score/category/mask``): the absorbed boxes are folded into
   the keep one by one in score order, each only if ``has_match`` still holds
   between the *current merged* prediction and it, with a strict ``>`` (float64).
   The merged prediction gets the union box, ``max(score)`` (i.e. the keep's
   score, the highest of the group), the category of the higher-scoring side
   (the absorbed one's on a tie), and the union of the two masks. An absorbed
   box that fails the re-check (IoS exactly at the threshold, or pushed below it
   because the merged box grew away from it) is neither merged nor kept: SAHI
   drops that detection. Reproduced.

Deliberate differences, none of which change the grouping:

- Masks are unioned as boolean arrays (``np.logical_or``, as SAHI's bool-mask
  releases did); current SAHI unions the masks' COCO polygons with shapely,
  which is the same region up to contour rasterization (and it fills holes).
- Pairs are found with an STR-tree (:func:`geoseg.io.masks.bbox_pairs`)
  instead of SAHI's dense N×N matrix; every pair with a positive box
  intersection is among them, and only those can reach a positive threshold.
- Empty masks are dropped (SAHI cannot represent them: ``ObjectPrediction``
  raises). Masks one pixel thick, whose SAHI box has area 0, never match
  anything and come out unmerged (SAHI's metric matrix gives them 0).
- Not reproduced: ``perform_standard_pred`` (an extra whole-image prediction;
  a scene here is far larger than a model input) and ``predict()``'s switch to
  NMS/IOU under a low model confidence threshold.
"""

from __future__ import annotations

import numpy as np

from geoseg.io.masks import InstanceMask, bbox_pairs, tight

__all__ = ["sahi_boxes", "sahi_greedy_nmm"]


def sahi_boxes(detections: list[InstanceMask]) -> np.ndarray:
    """SAHI's ``[x1, y1, x2, y2]`` box of each (tight) mask: first and last pixel, inclusive.

    Returns:
        float32 array (n, 4) in scene pixels (x: column, y: row).
    """
    bb = np.array([d.bbox for d in detections], dtype=np.float32).reshape(-1, 4)  # row0, col0, row1, col1
    return np.stack([bb[:, 1], bb[:, 0], bb[:, 3] - 1, bb[:, 2] - 1], axis=1)


def _ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Box intersection over the smaller box area, row-wise; 0 where the smaller area is 0."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    smaller = np.minimum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    return np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1), 0).astype(a.dtype)


def _has_match(keep_box: list[float], box: np.ndarray, threshold: float) -> bool:
    """SAHI's ``has_match`` for IOS: strictly above the threshold, in float64."""
    w = min(keep_box[2], float(box[2])) - max(keep_box[0], float(box[0]))
    h = min(keep_box[3], float(box[3])) - max(keep_box[1], float(box[1]))
    inter = max(w, 0.0) * max(h, 0.0)
    smaller = min(
        (keep_box[2] - keep_box[0]) * (keep_box[3] - keep_box[1]), float(box[2] - box[0]) * float(box[3] - box[1])
    )
    # SAHI divides by zero here (nan > t is False); a zero-area box never matches.
    return smaller > 0 and inter / smaller > threshold


def sahi_greedy_nmm(
    detections: list[InstanceMask], match_threshold: float = 0.5, class_agnostic: bool = False
) -> list[InstanceMask]:
    """Merge the raw detections of all tiles of a scene the way SAHI's default postprocess does.

    Greedy non-maximum merging on mask *boxes* with intersection-over-smaller
    (see the module docstring for SAHI's exact rules and their sources).

    Args:
        detections: every tile's instances, in global pixel coordinates.
        match_threshold: box IoS at or above which a lower-scoring box is
            absorbed by a keep (SAHI's ``postprocess_match_threshold``).
        class_agnostic: merge across classes (SAHI's
            ``postprocess_class_agnostic``); by default only same-class boxes merge.

    Returns:
        One instance per group, in SAHI's output order (class ascending, then
        the keep's score descending): tight OR-mask, the group's best score,
        ``tile=-1``, ``cut=False``, ``window=None``.

    Raises:
        ValueError: ``match_threshold`` is not positive (at 0 every box of a
            class would match every other, even far apart).
    """
    if not match_threshold > 0:
        raise ValueError(f"match_threshold must be > 0 (got {match_threshold!r})")
    items = [t for t in (tight(d) for d in detections) if t is not None]
    n = len(items)
    if n == 0:
        return []

    boxes = sahi_boxes(items)
    # SAHI holds predictions in a float32 (N, 6) array for ordering and matching.
    scores = np.array([d.score for d in items], dtype=np.float32)
    classes = np.array([d.class_id for d in items], dtype=np.int64)
    order, rank = _visiting_order(boxes, scores, classes, class_agnostic)
    later, starts = _matches(items, boxes, classes, rank, match_threshold, class_agnostic)

    absorbed = np.zeros(n, dtype=bool)
    out = []
    for keep in order:
        if absorbed[keep]:
            continue
        candidates = later[starts[keep] : starts[keep + 1]]  # already in visiting order
        candidates = candidates[~absorbed[candidates]]
        absorbed[candidates] = True
        out.append(_merge_group(items, boxes, keep, candidates, match_threshold))
    return out


def _visiting_order(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, class_agnostic: bool
) -> tuple[np.ndarray, np.ndarray]:
    """SAHI's visiting order and each box's rank in it.

    Per class (np.unique order) unless ``class_agnostic``, score descending, ties by x1, y1, x2, y2 ascending
    (``_score_tiebreak_order``).
    """
    keys = (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores)
    order = np.lexsort(keys if class_agnostic else (*keys, classes))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return order, rank


def _matches(
    items: list[InstanceMask],
    boxes: np.ndarray,
    classes: np.ndarray,
    rank: np.ndarray,
    match_threshold: float,
    class_agnostic: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """SAHI's match matrix as adjacency lists: box ``i`` may absorb ``later[starts[i] : starts[i + 1]]``.

    A match is a pair of overlapping boxes of one class (unless ``class_agnostic``) with IoS >= the threshold,
    directed from the earlier-visited box to the later one; each list is in visiting order.
    """
    pairs = bbox_pairs(items)  # every pair with a positive box intersection: only those can match
    if not class_agnostic and len(pairs):
        pairs = pairs[classes[pairs[:, 0]] == classes[pairs[:, 1]]]
    if len(pairs):
        pairs = pairs[_ios(boxes[pairs[:, 0]], boxes[pairs[:, 1]]) >= np.float32(match_threshold)]
    # Direct each pair from the earlier-visited box to the later one, grouped by the earlier.
    first = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    second = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 1], pairs[:, 0])
    by = np.lexsort((rank[second], first))
    first, second = first[by], second[by]
    return second, np.searchsorted(first, np.arange(len(items) + 1))


def _merge_group(
    items: list[InstanceMask], boxes: np.ndarray, keep: int, candidates: np.ndarray, match_threshold: float
) -> InstanceMask:
    """Fold the absorbed ``candidates`` into ``keep`` one by one in score order, as SAHI's ``_apply_merge`` does.

    A candidate is merged only if ``has_match`` holds against the merged box so far. The result has the OR of
    the merged masks, the best score and the class of the higher-scoring side (the candidate's on a tie).
    """
    box = [float(v) for v in boxes[keep]]
    score, class_id = items[keep].score, items[keep].class_id
    members = [items[keep]]
    for j in candidates:
        other = items[j]
        if not _has_match(box, boxes[j], match_threshold):
            continue  # SAHI drops it: absorbed above, merged nowhere
        box = [
            min(box[0], float(boxes[j, 0])),
            min(box[1], float(boxes[j, 1])),
            max(box[2], float(boxes[j, 2])),
            max(box[3], float(boxes[j, 3])),
        ]
        class_id = class_id if score > other.score else other.class_id
        score = max(score, other.score)
        members.append(other)
    return _union(members, class_id, score)


def _union(members: list[InstanceMask], class_id: int, score: float) -> InstanceMask:
    """One instance whose mask is the logical OR of the members' masks."""
    if len(members) == 1:
        m = members[0]
        return InstanceMask(row=m.row, col=m.col, mask=m.mask, class_id=class_id, score=score)
    r0 = min(m.row for m in members)
    c0 = min(m.col for m in members)
    r1 = max(m.row + m.mask.shape[0] for m in members)
    c1 = max(m.col + m.mask.shape[1] for m in members)
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for m in members:
        h, w = m.mask.shape
        mask[m.row - r0 : m.row - r0 + h, m.col - c0 : m.col - c0 + w] |= m.mask
    return InstanceMask(row=r0, col=c0, mask=mask, class_id=class_id, score=score)
