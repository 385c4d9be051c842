"""Segmentation metrics from a streaming confusion matrix.

The matrix is summed tile by tile (and across workers), so no stage needs a
whole scene in memory. The four scores are the FCN paper's (Long et al. 2015):
pixel accuracy, mean accuracy, mean IoU and frequency-weighted IoU.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "scores_from_confusion"]


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """Return the ``num_classes``² matrix; rows are truth, columns prediction.

    Pixels where ``valid`` is false, or whose truth is outside ``[0, num_classes)``
    (e.g. the 255 nodata value of a label raster), are ignored.
    """
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < num_classes) & (pred >= 0) & (pred < num_classes)
    if valid is not None:
        keep &= np.asarray(valid).ravel().astype(bool)
    index = truth[keep] * num_classes + pred[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(matrix: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict:
    """Pixel accuracy, mean accuracy, per-class IoU/F1, mean IoU and fw-IoU.

    Classes absent from both truth and prediction get IoU ``None`` and are left
    out of the means, rather than counted as 0 or 1.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    truth_total = m.sum(axis=1)
    pred_total = m.sum(axis=0)
    union = truth_total + pred_total - tp
    total = m.sum()
    present = truth_total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(present, tp / truth_total, np.nan)
        f1 = np.where(truth_total + pred_total > 0, 2 * tp / (truth_total + pred_total), np.nan)
    freq = truth_total / total if total else np.zeros_like(truth_total)

    def clean(values):
        return {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, values, strict=True)}

    return {
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "mean_accuracy": float(np.nanmean(acc)) if present.any() else None,
        "mean_iou": float(np.nanmean(iou)) if (union > 0).any() else None,
        "frequency_weighted_iou": float(np.nansum(freq * np.nan_to_num(iou))) if total else None,
        "per_class_iou": clean(iou),
        "per_class_f1": clean(f1),
        "per_class_accuracy": clean(acc),
        "pixels": int(total),
        "confusion_matrix": m.astype(np.int64).tolist(),
        "class_names": list(class_names),
    }
