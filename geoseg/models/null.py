"""A model that does no work: the feed's ceiling in ``geoseg bench predict --model null``.

Its logits are zeros (every pixel the first class), made at once on the input's device, so a
prediction pipeline run with it times everything but the model: reading, the device's pixel
math, argmax, writing, the actors and the driver's loop. It is not in the registry a job chooses
from (``geoseg models``; job validation refuses it): only a checkpoint whose card names it, as the
benchmark writes one, builds it.
"""

from __future__ import annotations

import torch

__all__ = ["NULL_ARCH", "NullModel"]

NULL_ARCH = "null"


class NullModel(torch.nn.Module):
    """(N, bands, H, W) in, (N, classes, H, W) zeros out; no parameters."""

    output_stride = 1  # any tile size fits

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.new_zeros((inputs.shape[0], self.num_classes, inputs.shape[2], inputs.shape[3]))
