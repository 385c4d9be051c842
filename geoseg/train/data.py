"""Training data: per-band statistics and a random crop sampler over GeoTIFFs.

Both read windows only, so training scenes may be larger than memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geoseg.io.labels import IGNORE
from geoseg.io.raster import iter_blocks, read_valid

__all__ = ["band_statistics", "normalize", "CropSampler"]


def band_statistics(images: list[Path], bands: tuple[int, ...], *, step: int = 4) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each band over valid pixels (every ``step``-th pixel)."""
    total = np.zeros(len(bands))
    total_sq = np.zeros(len(bands))
    count = 0
    for image in images:
        with rasterio.open(image) as src:
            for window in iter_blocks(src.height, src.width):
                pixels = src.read(list(bands), window=window)[:, ::step, ::step].astype(np.float64)
                valid = read_valid(src, window)[::step, ::step]
                values = pixels[:, valid]
                total += values.sum(axis=1)
                total_sq += (values ** 2).sum(axis=1)
                count += values.shape[1]
    if count == 0:
        raise ValueError("training scenes have no valid pixels")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return mean.tolist(), std.tolist()


def normalize(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(bands, H, W) raw pixels → float32 standardized with the model card's statistics."""
    mean_ = np.asarray(mean, np.float32)[:, None, None]
    std_ = np.asarray(std, np.float32)[:, None, None]
    return (pixels.astype(np.float32) - mean_) / std_


class CropSampler(torch.utils.data.IterableDataset):
    """Endless random crops (image, label) with D4 augmentation (flips and 90° turns).

    Each scene is paired with its rasterized label GeoTIFF on the same grid.
    Crops whose labels are all :data:`IGNORE` are redrawn.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], *, bands: tuple[int, ...], size: int,
                 mean: list[float], std: list[float], seed: int):
        super().__init__()
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.bands, self.size, self.mean, self.std, self.seed = bands, size, mean, std, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        sources = [(rasterio.open(image), rasterio.open(labels)) for image, labels in self.pairs]
        weights = np.array([src.width * src.height for src, _ in sources], np.float64)
        try:
            while True:
                src, lab = sources[rng.choice(len(sources), p=weights / weights.sum())]
                h, w = min(self.size, src.height), min(self.size, src.width)
                row = int(rng.integers(0, src.height - h + 1))
                col = int(rng.integers(0, src.width - w + 1))
                window = Window(col, row, w, h)
                target = lab.read(1, window=window)
                if (target == IGNORE).all():
                    continue
                image = normalize(src.read(list(self.bands), window=window), self.mean, self.std)
                turns, flip = int(rng.integers(4)), bool(rng.integers(2))
                image, target = np.rot90(image, turns, axes=(1, 2)), np.rot90(target, turns)
                if flip:
                    image, target = image[:, :, ::-1], target[:, ::-1]
                yield torch.from_numpy(image.copy()), torch.from_numpy(target.astype(np.int64))
        finally:
            for src, lab in sources:
                src.close()
                lab.close()
