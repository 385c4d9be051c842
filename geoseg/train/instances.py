"""Training data and validation for instance models (Mask R-CNN).

Each label polygon is one instance: the train stage burns polygon ids into an
instance raster (``rasterize_labels(..., instances=True)``) and records each
id's class. A box table (:mod:`geoseg.io.box_tables`) gives one instance per
box: its target is that box (clipped to the image) and a mask filling it, less
the pixels of later boxes that overlap it (as for overlapping polygons).

A crop's targets are the ids present in it: a mask per id, its box, its
class. Objects cut by the crop's edge keep their visible part (the model must
learn those too: prediction tiles cut objects the same way), but slivers under
``MIN_PIXELS`` are dropped, as no box regression can learn them.

Crops come from the training area only (the validation strip is never seen).
A share ``empty_ratio`` of them is drawn where no instance is, so the model
sees roads, water and fields without buildings; the rest are centred near a
randomly chosen instance (jittered so it is not always in the middle).
Augmentation: the 8 flips/rotations and the same photometric jitter as the
semantic sampler.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torchvision.models.detection.roi_heads import RoIHeads

from geoseg.infer.detect import detections_to_masks, run_detector
from geoseg.io.masks import InstanceMask, tight
from geoseg.io.normalization import normalize
from geoseg.models.card import ModelCard
from geoseg.train.augment import photometric_jitter
from geoseg.train.sampler import validation_windows

__all__ = [
    "MIN_PIXELS",
    "InstanceCropSampler",
    "collate_instances",
    "crop_targets",
    "instance_centres",
    "validate_instances",
]

MIN_PIXELS = 16
_EMPTY_TRIES = 20


def instance_centres(ids_path: str | Path, area: Window, block: int = 1024) -> list[list[int]]:
    """Centre pixel ``[row, col]`` of the bounding box of every instance id inside ``area``, read block by block."""
    lo: dict[int, list[int]] = {}
    row0, col0 = int(area.row_off), int(area.col_off)
    with rasterio.open(ids_path) as src:
        for top in range(row0, row0 + int(area.height), block):
            for left in range(col0, col0 + int(area.width), block):
                h = min(block, row0 + int(area.height) - top)
                w = min(block, col0 + int(area.width) - left)
                ids = src.read(1, window=Window(left, top, w, h))
                rows, cols = np.nonzero(ids)
                if not len(rows):
                    continue
                found = ids[rows, cols]
                for value in np.unique(found):
                    sel = found == value
                    r, c = rows[sel] + top, cols[sel] + left
                    box = lo.setdefault(int(value), [r.min(), c.min(), r.max(), c.max()])
                    box[:] = [min(box[0], r.min()), min(box[1], c.min()), max(box[2], r.max()), max(box[3], c.max())]
    return [[int((b[0] + b[2]) // 2), int((b[1] + b[3]) // 2)] for _, b in sorted(lo.items())]


def crop_targets(ids: np.ndarray, id_classes: np.ndarray) -> dict[str, torch.Tensor]:
    """Torchvision detection targets (boxes, labels, masks) for one crop of the instance raster."""
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    values = values[counts >= MIN_PIXELS]
    masks = np.stack([ids == v for v in values]) if len(values) else np.zeros((0, *ids.shape), bool)
    boxes = np.zeros((len(values), 4), np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)  # x0, y0, x1, y1 on pixel edges
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(id_classes[values].astype(np.int64)),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }


def collate_instances(batch):
    """Detection models take lists: (images, targets) instead of stacked tensors."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class InstanceCropSampler(torch.utils.data.IterableDataset):
    """Endless random crops ``(image, targets)`` for Mask R-CNN.

    Args:
        pairs: (image, instance-id raster) paths on the same grid.
        id_classes: per scene, ``id_classes[id]`` is the class index of instance ``id``.
        centres: per scene, ``[row, col]`` of each instance in the training area (see :func:`instance_centres`).
        areas: the training window of each scene.
        bands, mean, std, size, seed, jitter: as for :class:`~geoseg.train.sampler.CropSampler`.
        empty_ratio: share of crops drawn where no instance is.
    """

    def __init__(
        self,
        pairs,
        *,
        id_classes,
        centres,
        areas: list[Window],
        bands,
        size: int,
        mean,
        std,
        seed: int,
        jitter: float = 0.0,
        empty_ratio: float = 0.1,
    ):
        super().__init__()
        self.pairs = [(str(a), str(b)) for a, b in pairs]  # paths or s3:// URIs, as rasterio takes them
        self.id_classes = [np.asarray(c, np.int64) for c in id_classes]
        self.centres = [np.asarray(c, np.int64).reshape(-1, 2) for c in centres]
        self.areas, self.bands, self.size, self.mean, self.std = areas, tuple(bands), size, mean, std
        self.seed, self.jitter, self.empty_ratio = seed, jitter, empty_ratio

    def _origin(self, rng, scene: int, h: int, w: int, ids_src) -> tuple[int, int]:
        area = self.areas[scene]
        row0, col0 = int(area.row_off), int(area.col_off)
        max_row, max_col = row0 + int(area.height) - h, col0 + int(area.width) - w
        centres = self.centres[scene]
        if rng.random() < self.empty_ratio or not len(centres):
            for _ in range(_EMPTY_TRIES):  # a crop without any instance; else the last one tried
                row, col = int(rng.integers(row0, max_row + 1)), int(rng.integers(col0, max_col + 1))
                if not ids_src.read(1, window=Window(col, row, w, h)).any():
                    break
            return row, col
        centre_row, centre_col = centres[rng.integers(len(centres))]
        shift = rng.integers(-h // 4, h // 4 + 1, 2)
        return (
            int(np.clip(centre_row - h // 2 + shift[0], row0, max_row)),
            int(np.clip(centre_col - w // 2 + shift[1], col0, max_col)),
        )

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        sources = [(rasterio.open(image), rasterio.open(ids)) for image, ids in self.pairs]
        weights = np.array([float(a.width * a.height) for a in self.areas])
        try:
            while True:
                scene = int(rng.choice(len(sources), p=weights / weights.sum()))
                src, ids_src = sources[scene]
                area = self.areas[scene]
                h, w = min(self.size, int(area.height)), min(self.size, int(area.width))
                row, col = self._origin(rng, scene, h, w, ids_src)
                window = Window(col, row, w, h)
                image = normalize(src.read(list(self.bands), window=window), self.mean, self.std)
                ids = ids_src.read(1, window=window)
                if self.jitter > 0:
                    image = photometric_jitter(image, rng, self.jitter)
                turns, flip = int(rng.integers(4)), bool(rng.integers(2))
                image, ids = np.rot90(image, turns, axes=(1, 2)), np.rot90(ids, turns)
                if flip:
                    image, ids = image[:, :, ::-1], ids[:, ::-1]
                yield torch.from_numpy(image.copy()), crop_targets(np.ascontiguousarray(ids), self.id_classes[scene])
        finally:
            for src, ids_src in sources:
                src.close()
                ids_src.close()


def _truth_in(ids: np.ndarray, id_classes: np.ndarray, row: int, col: int) -> list[InstanceMask]:
    out = []
    for value in np.unique(ids[ids > 0]):
        instance = tight(InstanceMask(row, col, ids == value, int(id_classes[value])))
        if instance is not None:
            out.append(instance)
    return out


def validate_instances(
    model: torch.nn.Module,
    card: ModelCard,
    pairs,
    id_classes,
    areas: list[Window | None],
    *,
    size: int,
    device,
    rank: int = 0,
    world: int = 1,
) -> np.ndarray:
    """``[tp, fp, fn]`` at mask IoU 0.5 over the validation areas (this worker's share of the windows)."""
    from geoseg.evaluate.instances import match_instances

    totals = np.zeros(3, np.int64)
    jobs = [
        (scene, window)
        for scene, area in enumerate(areas)
        if area is not None
        for window in validation_windows(area, size)
    ]
    model.eval()
    # Only detections at 0.5 and above are scored: drop the rest before their masks are pasted.
    heads = model.roi_heads
    assert isinstance(heads, RoIHeads)  # a torchvision Mask R-CNN, unwrapped (see validation_metrics)
    score_thresh, heads.score_thresh = heads.score_thresh, 0.5
    for scene, window in jobs[rank::world]:
        image_path, ids_path = pairs[scene]
        with rasterio.open(image_path) as src, rasterio.open(ids_path) as lab:
            pixels = src.read(list(card.bands), window=window)
            ids = lab.read(1, window=window)
        image = normalize(pixels, card.normalization.mean, card.normalization.std)[None]
        output = run_detector(model, np.ascontiguousarray(image, np.float32), torch.device(device))[0]
        row, col = int(window.row_off), int(window.col_off)
        h, w = ids.shape
        pred = detections_to_masks(
            output,
            row_off=row,
            col_off=col,
            window=(row, col, row + h, col + w),
            scene_shape=(row + h, col + w),
            min_area=MIN_PIXELS,
        )
        result = match_instances(pred, _truth_in(ids, np.asarray(id_classes[scene]), row, col), iou=0.5)
        totals += (result["tp"], result["fp"], result["fn"])
    heads.score_thresh = score_thresh
    model.train()
    return totals
