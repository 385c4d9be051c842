"""Validation during training: the held-out strips scored after every epoch, summed across workers.

Each worker scores its share of the validation windows; the counts are summed
with ``all_reduce``, so every worker sees the same score and early stopping
stops them together. Semantic models are scored by mIoU (a confusion matrix),
instance models by F1 at mask IoU 0.5 (:func:`geoseg.train.instances.validate_instances`).
"""

from __future__ import annotations

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geoseg.evaluate.metrics import confusion_matrix, scores_from_confusion
from geoseg.io.normalization import normalize
from geoseg.train.instances import validate_instances
from geoseg.train.plan import TrainingPlan, window_of
from geoseg.train.sampler import validation_windows

__all__ = ["sum_across_workers", "validate", "validation_metrics"]


def sum_across_workers(counts: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum a confusion matrix (or any count array) over all workers (no-op for one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return counts
    tensor = torch.from_numpy(counts.astype(np.int64)).to(device)
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def validate(
    model: torch.nn.Module, plan: TrainingPlan, *, size: int, device: torch.device, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Confusion matrix of a semantic ``model`` over the validation areas, summed across workers."""
    card = plan.card
    matrix = np.zeros((card.num_classes, card.num_classes), np.int64)
    jobs: list[tuple[int, Window]] = [
        (index, window)
        for index, scene in enumerate(plan.scenes)
        if scene.val_area is not None
        for window in validation_windows(window_of(scene.val_area), size)
    ]
    model.eval()
    with torch.inference_mode():
        for index, window in jobs[rank::world]:
            scene = plan.scenes[index]
            with rasterio.open(scene.image) as src, rasterio.open(scene.labels) as lab:
                pixels = src.read(list(card.bands), window=window)
                truth = lab.read(1, window=window)
            image = normalize(pixels, card.normalization.mean, card.normalization.std)
            h, w = truth.shape
            # Models need sides on their stride: mirror-pad, predict, crop back.
            pad_h, pad_w = (-h) % plan.stride, (-w) % plan.stride
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect") if pad_h or pad_w else image
            logits = model(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))
            pred = logits[0, :, :h, :w].argmax(dim=0).cpu().numpy()
            matrix += confusion_matrix(truth, pred, card.num_classes)
    model.train()
    return sum_across_workers(matrix, device)


def validation_metrics(
    model: torch.nn.Module, plan: TrainingPlan, *, device: torch.device, rank: int, world: int
) -> dict:
    """This epoch's validation scores: ``val_miou`` (+ per class) or ``val_f1`` (+ precision, recall)."""
    size = 2 * plan.spec.tile_size
    if plan.instance_model:
        pairs = [(scene.image, scene.labels) for scene in plan.scenes]
        id_classes = [scene.id_classes or (0,) for scene in plan.scenes]
        areas = [window_of(scene.val_area) for scene in plan.scenes]
        tp, fp, fn = sum_across_workers(
            validate_instances(
                model, plan.card, pairs, id_classes, areas, size=size, device=device, rank=rank, world=world
            ),
            device,
        )
        return {
            "val_f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
            "val_precision": float(tp / (tp + fp)) if tp + fp else 0.0,
            "val_recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        }
    matrix = validate(model, plan, size=size, device=device, rank=rank, world=world)
    scores = scores_from_confusion(matrix, list(plan.card.classes))
    return {"val_miou": scores["mean_iou"], "val_per_class_iou": scores["per_class_iou"]}
