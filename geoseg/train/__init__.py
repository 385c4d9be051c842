"""Training data, losses, loop and checkpoints (no Ray inside)."""

from geoseg.train.checkpoint import load_checkpoint, read_card, save_checkpoint
from geoseg.train.data import band_statistics, normalize
from geoseg.train.loop import train_model
from geoseg.train.sampler import CropSampler

__all__ = ["CropSampler", "band_statistics", "load_checkpoint", "normalize", "read_card", "save_checkpoint",
           "train_model"]
