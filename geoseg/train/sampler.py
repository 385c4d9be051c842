"""Where training crops come from.

A held-out validation area, class-balanced oversampling, D4 augmentation and
photometric jitter.

Validation is a held-out *area* (a strip along one side of every training
scene), not random tiles: random tiles overlap the training crops, so their
score would leak. Training crops never touch a pixel of the strip.

Rare classes (flood water is a few percent of a scene) are oversampled: a
share of the crops is centred on a pixel of a class drawn uniformly among
the classes present, found through a coarse grid of which classes each cell
holds. The grid is built once per scene from the label raster, block by
block, so this works on scenes larger than memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geoseg.io.labels import IGNORE
from geoseg.io.normalization import normalize
from geoseg.train.augment import photometric_jitter

__all__ = ["CELL", "CropSampler", "LabelIndex", "split_area", "validation_windows"]

CELL = 64  # pixels a side of the class-presence grid cells


def split_area(height: int, width: int, fraction: float, side: str = "bottom") -> tuple[Window, Window | None]:
    """Split a scene into a training window and a held-out validation strip of ``fraction`` of it."""
    if fraction <= 0:
        return Window(0, 0, width, height), None
    if side in ("bottom", "top"):
        strip = max(1, round(height * fraction))
        train_rows, val_rows = height - strip, strip
        if side == "bottom":
            return Window(0, 0, width, train_rows), Window(0, train_rows, width, val_rows)
        return Window(0, strip, width, train_rows), Window(0, 0, width, val_rows)
    strip = max(1, round(width * fraction))
    train_cols = width - strip
    if side == "right":
        return Window(0, 0, train_cols, height), Window(train_cols, 0, strip, height)
    return Window(strip, 0, train_cols, height), Window(0, 0, strip, height)


@dataclass
class LabelIndex:
    """Per-class pixel counts of a window of a label raster, and which classes each grid cell holds."""

    window: Window
    counts: np.ndarray  # (classes,) int64
    cells: np.ndarray  # (cell rows, cell cols, classes) bool

    @classmethod
    def build(cls, labels: str | Path, window: Window, num_classes: int) -> LabelIndex:
        row0, col0 = int(window.row_off), int(window.col_off)
        height, width = int(window.height), int(window.width)
        cells = np.zeros((-(-height // CELL), -(-width // CELL), num_classes), bool)
        counts = np.zeros(num_classes, np.int64)
        band = CELL * 8  # read whole rows of cells, a few at a time
        with rasterio.open(labels) as src:
            for top in range(0, height, band):
                rows = min(band, height - top)
                block = src.read(1, window=Window(col0, row0 + top, width, rows))
                known = block != IGNORE
                counts += np.bincount(block[known].ravel(), minlength=num_classes)[:num_classes]
                for c in range(num_classes):
                    hit = block == c
                    padded = np.zeros((-(-rows // CELL) * CELL, cells.shape[1] * CELL), bool)
                    padded[:rows, :width] = hit
                    grid = padded.reshape(-1, CELL, cells.shape[1], CELL).any(axis=(1, 3))
                    cells[top // CELL : top // CELL + grid.shape[0], :, c] = grid
        return cls(window, counts, cells)


class CropSampler(torch.utils.data.IterableDataset):
    """Endless random crops (image, label[, pixel weights]) from the training areas.

    Args:
        pairs: (image, label raster) paths on the same grid.
        areas: the training window of each scene (validation strips excluded).
        bands, mean, std: model inputs and their normalization (from the model card).
        size: crop side in pixels.
        seed: crops, augmentation and jitter are drawn from it.
        indexes: a :class:`LabelIndex` per scene, needed when ``oversample`` > 0.
        oversample: share of crops centred on a pixel of a class drawn uniformly among classes present.
        jitter: photometric jitter strength: per-band gain in 1 ± jitter and offset in ± jitter
            (in standard deviations of the band); 0 turns it off.
        instances: per scene, a raster of instance ids (for U-Net border weights), or None.
        pixel_weights: ``f(instances, target) -> (H, W) float32`` computing per-pixel loss weights.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | Path, str | Path]],
        *,
        areas: list[Window],
        bands: tuple[int, ...],
        size: int,
        mean: list[float],
        std: list[float],
        seed: int,
        indexes: list[LabelIndex] | None = None,
        oversample: float = 0.0,
        jitter: float = 0.0,
        instances: Sequence[str | Path | None] | None = None,
        pixel_weights=None,
    ):
        super().__init__()
        self.pairs = [(str(a), str(b)) for a, b in pairs]  # paths or s3:// URIs, as rasterio takes them
        self.areas, self.bands, self.size, self.mean, self.std, self.seed = areas, bands, size, mean, std, seed
        self.indexes, self.oversample, self.jitter = indexes, oversample, jitter
        self.instances, self.pixel_weights = instances, pixel_weights
        if oversample > 0 and not indexes:
            raise ValueError("oversampling needs a LabelIndex per scene")

    def _origin(self, rng: np.random.Generator, scene: int, h: int, w: int) -> tuple[int, int]:
        """Top-left pixel of a crop inside the scene's training area."""
        area = self.areas[scene]
        row0, col0 = int(area.row_off), int(area.col_off)
        max_row, max_col = row0 + int(area.height) - h, col0 + int(area.width) - w
        if self.oversample > 0 and rng.random() < self.oversample:
            assert self.indexes is not None  # __init__ refuses oversampling without a LabelIndex per scene
            cells = self.indexes[scene].cells
            present = np.flatnonzero(cells.any(axis=(0, 1)))
            if len(present):
                cls = present[rng.integers(len(present))]
                rows, cols = np.nonzero(cells[:, :, cls])
                pick = rng.integers(len(rows))
                # A pixel inside the chosen cell, then the crop around it.
                centre_row = row0 + rows[pick] * CELL + int(rng.integers(CELL))
                centre_col = col0 + cols[pick] * CELL + int(rng.integers(CELL))
                return (
                    int(np.clip(centre_row - h // 2, row0, max_row)),
                    int(np.clip(centre_col - w // 2, col0, max_col)),
                )
        return int(rng.integers(row0, max_row + 1)), int(rng.integers(col0, max_col + 1))

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        sources = [(rasterio.open(image), rasterio.open(labels)) for image, labels in self.pairs]
        extra = [rasterio.open(path) for path in self.instances] if self.instances else None
        weights = np.array([float(a.width * a.height) for a in self.areas])
        try:
            while True:
                scene = int(rng.choice(len(sources), p=weights / weights.sum()))
                src, lab = sources[scene]
                area = self.areas[scene]
                h, w = min(self.size, int(area.height)), min(self.size, int(area.width))
                row, col = self._origin(rng, scene, h, w)
                window = Window(col, row, w, h)
                target = lab.read(1, window=window)
                if (target == IGNORE).all():
                    continue
                image = normalize(src.read(list(self.bands), window=window), self.mean, self.std)
                if self.jitter > 0:
                    image = photometric_jitter(image, rng, self.jitter)
                pixel_weights = None
                if self.pixel_weights is not None:
                    ids = extra[scene].read(1, window=window) if extra else None
                    pixel_weights = self.pixel_weights(ids, target)
                turns, flip = int(rng.integers(4)), bool(rng.integers(2))
                image, target = np.rot90(image, turns, axes=(1, 2)), np.rot90(target, turns)
                if pixel_weights is not None:
                    pixel_weights = np.rot90(pixel_weights, turns)
                if flip:
                    image, target = image[:, :, ::-1], target[:, ::-1]
                    if pixel_weights is not None:
                        pixel_weights = pixel_weights[:, ::-1]
                sample = (torch.from_numpy(image.copy()), torch.from_numpy(target.astype(np.int64)))
                if pixel_weights is not None:
                    sample += (torch.from_numpy(np.ascontiguousarray(pixel_weights, np.float32)),)
                yield sample
        finally:
            for src, lab in sources:
                src.close()
                lab.close()
            for handle in extra or []:
                handle.close()


def validation_windows(area: Window, size: int) -> list[Window]:
    """Windows of ``size`` pixels covering ``area`` (the last row/column shifted back inside it)."""
    row0, col0 = int(area.row_off), int(area.col_off)
    height, width = int(area.height), int(area.width)
    h, w = min(size, height), min(size, width)
    rows = sorted({min(r, height - h) for r in range(0, height, h)})
    cols = sorted({min(c, width - w) for c in range(0, width, w)})
    return [Window(col0 + c, row0 + r, w, h) for r in rows for c in cols]
