"""Training: crop samplers, augmentation, losses, the training plan and loop (no Ray inside).

Checkpoints and model cards are in :mod:`geoseg.models`; input normalization in :mod:`geoseg.io.normalization`.
"""

from geoseg.train.loop import train_model
from geoseg.train.sampler import CropSampler

__all__ = ["CropSampler", "train_model"]
