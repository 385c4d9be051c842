"""Photometric augmentation of training crops (geometric flips and turns are in :mod:`geoseg.train.sampler`)."""

from __future__ import annotations

import numpy as np

__all__ = ["photometric_jitter"]


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-band gain in 1 ± strength and offset in ± strength (normalized units, i.e. band std)."""
    bands = image.shape[0]
    gain = rng.uniform(1 - strength, 1 + strength, (bands, 1, 1))
    offset = rng.uniform(-strength, strength, (bands, 1, 1))
    return (image * gain + offset).astype(np.float32)
