"""Input normalization: per-band statistics of the training scenes, and the standardization every model input gets.

The train stage computes the statistics (reading windows only, so training
scenes may be larger than memory) and the model card records them; training,
prediction and the benchmarks standardize raw pixels with :func:`normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from geoseg.config.locations import RemotePath
from geoseg.io.raster import iter_blocks, read_valid

__all__ = ["band_statistics", "normalize"]


def band_statistics(
    images: Sequence[Path | RemotePath], bands: tuple[int, ...], *, step: int = 4
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each band over valid pixels (every ``step``-th pixel)."""
    total = np.zeros(len(bands))
    total_sq = np.zeros(len(bands))
    count = 0
    integer = False
    for image in images:
        with rasterio.open(image) as src:
            integer = integer or np.issubdtype(np.dtype(src.dtypes[0]), np.integer)
            for window in iter_blocks(src.height, src.width):
                pixels = src.read(list(bands), window=window)[:, ::step, ::step].astype(np.float64)
                valid = read_valid(src, window)[::step, ::step]
                values = pixels[:, valid]
                total += values.sum(axis=1)
                total_sq += (values**2).sum(axis=1)
                count += values.shape[1]
    if count == 0:
        raise ValueError("training scenes have no valid pixels")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    # A band that is constant in training would otherwise be divided by ~0 and turn
    # any other value at prediction into a huge input: floor the std at one digital
    # number for integer imagery (its resolution), and at 1e-6 for float imagery.
    std = np.maximum(std, 1.0 if integer else 1e-6)
    return mean.tolist(), std.tolist()


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(bands, H, W) raw pixels → float32 standardized with the model card's statistics."""
    mean_ = np.asarray(mean, np.float32)[:, None, None]
    std_ = np.asarray(std, np.float32)[:, None, None]
    return (pixels.astype(np.float32) - mean_) / std_
