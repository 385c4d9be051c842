"""COCO mask AP for instance masks, through pycocotools (the reference implementation of the COCO metric).

Masks are encoded as COCO run-length encodings straight from each instance's
crop (:func:`coco_rle`), so scoring a scene never draws a scene-size image.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from geoseg.io.masks import InstanceMask, bbox_pairs

__all__ = ["coco_mask_ap", "coco_rle"]


def coco_rle(instance: InstanceMask, height: int, width: int, origin: tuple[int, int] = (0, 0)) -> dict:
    """The instance as a compressed COCO RLE of a ``height`` x ``width`` image, without drawing that image.

    COCO run lengths walk the image column by column (Fortran order),
    starting with a run of zeros. The runs of ones are found per crop column,
    moved to their place in the image, and runs that meet across a column
    break (a crop spanning the image's full height) are joined, as
    ``pycocotools.mask.encode`` would.

    Args:
        instance: the mask; it must lie inside the image.
        height: the image's height in pixels.
        width: the image's width in pixels.
        origin: scene pixel ``(row, col)`` of the image's top-left corner.
    """
    from pycocotools import mask as mask_utils

    row, col = instance.row - origin[0], instance.col - origin[1]
    h, w = instance.mask.shape
    if row < 0 or col < 0 or row + h > height or col + w > width:
        raise ValueError(f"instance at {(row, col)!r} of shape {(h, w)!r} is outside a {height}x{width} image")
    padded = np.zeros((w, h + 2), np.int8)  # one crop column per row, zero-padded so every run closes
    padded[:, 1:-1] = instance.mask.T
    change = np.diff(padded, axis=1)
    start_col, start_row = np.nonzero(change == 1)
    end_col, end_row = np.nonzero(change == -1)  # row-major nonzero: same order as the starts
    starts = (col + start_col).astype(np.int64) * height + row + start_row
    ends = (col + end_col).astype(np.int64) * height + row + end_row
    if len(starts):
        join = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~join]])
        ends = np.concatenate([ends[:-1][~join], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, np.int64)
    bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, starts, ends, height * width
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()  # encode() writes no empty last run of zeros
    return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)


def _groups(instances: list[InstanceMask]) -> np.ndarray:
    """A group label per instance: connected components of overlapping bounding boxes."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = bbox_pairs(instances)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(instances),) * 2)
    return connected_components(graph, directed=False)[1]


def _coco_eval(images: list[dict], truth_anns: list[dict], pred_anns: list[dict], max_dets: int) -> dict:
    """Run COCOeval ("segm", one area range "all", one maxDets) and read AP, AP50, AP75."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": truth_anns,
            "categories": [{"id": c} for c in sorted({a["category_id"] for a in truth_anns})],
        }
        gt.createIndex()
        coco = COCOeval(gt, gt.loadRes(pred_anns), iouType="segm")
        coco.params.imgIds = [image["id"] for image in images]
        coco.params.areaRng, coco.params.areaRngLbl = [coco.params.areaRng[0]], ["all"]
        coco.params.maxDets = [max_dets]
        coco.evaluate()
        coco.accumulate()
    # precision: [iou threshold, recall, category, area range, maxDets]; -1 where a category has no reference.
    precision = coco.eval["precision"][:, :, :, 0, -1]
    thresholds = coco.params.iouThrs

    def mean(values):
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    return {
        "ap": mean(precision),
        "ap50": mean(precision[np.isclose(thresholds, 0.5)]),
        "ap75": mean(precision[np.isclose(thresholds, 0.75)]),
    }


def coco_mask_ap(pred: list[InstanceMask], truth: list[InstanceMask], height: int, width: int) -> dict:
    """COCO mask AP@[.50:.95], AP50 and AP75 of the predictions, categories being ``class_id``.

    Equivalent to evaluating the scene as one COCO image, but the scene is
    handed to pycocotools as one small image per group of instances whose
    bounding boxes overlap (masks in different groups cannot match). That
    changes no match: COCO matches only pairs with IoU >= 0.5, each detection
    in score order within its image and category. It avoids two walls of
    one big image: COCOeval's pure-Python match loop costs predictions x
    references per image (minutes at 2,500 each), and COCO RLE counts are
    32-bit (a 70k x 70k scene overflows). Only the order of *equal* scores in
    different groups may differ from the one-image run.

    ``maxDets`` is set to the number of predictions (at least 100) and AP is
    read at that setting, so every detection counts, not COCO's default 100.
    Only the area range "all" is evaluated. Predicted classes with no
    reference instance are ignored, as COCO does; AP is the mean over the
    classes that have references.

    Args:
        pred: predicted instances (scores rank them).
        truth: reference instances.
        height: the scene's height in pixels; every instance must lie inside the scene.
        width: the scene's width in pixels.

    Returns:
        ``ap``, ``ap50``, ``ap75``: None without references, 0.0 without predictions.
    """
    if not truth:
        return {"ap": None, "ap50": None, "ap75": None}
    if not pred:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    everything = list(truth) + list(pred)
    for m in everything:
        if m.row < 0 or m.col < 0 or m.bbox[2] > height or m.bbox[3] > width:
            raise ValueError(f"instance at {m.bbox!r} lies outside the {height}x{width} scene")
    labels = _groups(everything)
    boxes = np.array([m.bbox for m in everything], np.int64)
    images, origin = [], {}
    for g in np.unique(labels):
        member = boxes[labels == g]
        r0, c0 = member[:, :2].min(axis=0)
        r1, c1 = member[:, 2:].max(axis=0)
        origin[g] = (int(r0), int(c0), int(r1 - r0), int(c1 - c0))
        images.append({"id": int(g) + 1, "height": int(r1 - r0), "width": int(c1 - c0)})

    def annotation(m: InstanceMask, g: int, n: int) -> dict:
        r0, c0, h, w = origin[g]
        return {
            "id": n + 1,
            "image_id": int(g) + 1,
            "category_id": int(m.class_id),
            "segmentation": coco_rle(m, h, w, (r0, c0)),
        }

    truth_anns = [annotation(m, labels[n], n) | {"area": m.area, "iscrowd": 0} for n, m in enumerate(truth)]
    # No "bbox" on results: loadRes would then take the box's area for the mask's.
    pred_anns = [annotation(m, labels[len(truth) + n], n) | {"score": float(m.score)} for n, m in enumerate(pred)]
    return _coco_eval(images, truth_anns, pred_anns, max(100, len(pred)))
