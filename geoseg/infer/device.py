"""The pixel math of prediction, on the model's device: raw pixels in, uint8 labels and scores out.

The host only reads: a batch of raw tiles (uint8 imagery is a quarter of float32's bytes) goes
to the device (from pinned memory, without blocking, on a GPU); normalization, the forward pass
(bf16 and channels_last on a GPU), the core crop, the argmax and the score quantization run
there, and only each core's uint8 labels and scores come back. On a CPU the same code runs on
CPU tensors, with the operations the host path had in the same order and precision (float32
subtraction and division, first-maximum argmax, softmax of the core), so the mosaic's bytes are
those of the host path (tests/infer/test_device.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geoseg.infer.crf import CrfParams, dense_crf
from geoseg.tiling import Tile

__all__ = ["CoreOutputs", "DevicePixels", "first_argmax", "forward"]

# Pixel types torch has no tensors for: widened on the host, exactly (every value fits).
_WIDER = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


def forward(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 logits of normalized ``inputs`` already on ``device`` (bf16 and channels_last on CUDA)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(inputs.to(memory_format=torch.channels_last)).float()
        return model(inputs)


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=0)`` as uint8 (fewer than 256 classes): the first maximum, a NaN above any number.

    The same labels as torch's argmax, ties and NaNs included (tests/infer/test_device.py), by one
    comparison per class over whole contiguous planes: torch's CPU argmax over a short, strided
    class axis took 32 ms per 448² core of 6 classes, this 7 ms (2 threads), 6% of the model's time.
    """
    best = scores[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    best_is_nan = best.isnan()
    for index in range(1, scores.shape[0]):
        plane = scores[index]
        better = (plane > best) | (plane.isnan() & ~best_is_nan)
        best = torch.where(better, plane, best)
        labels.masked_fill_(better, index)
        best_is_nan = best.isnan()
    return labels


@dataclass(frozen=True)
class CoreOutputs:
    """Per tile of a batch: its core's labels (h, w) and, if asked for, its scores (classes, h, w), uint8."""

    labels: list[np.ndarray]
    scores: list[np.ndarray] | None


class DevicePixels:
    """Normalization statistics and a model on one device; batches of raw tiles in, core outputs out."""

    def __init__(
        self,
        model: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        crf: CrfParams | None = None,
    ):
        self.model, self.device, self.crf = model, device, crf
        self.mean = torch.tensor(np.asarray(mean, np.float32), device=device)[:, None, None]
        self.std = torch.tensor(np.asarray(std, np.float32), device=device)[:, None, None]

    def _pixels(self, raw: np.ndarray) -> torch.Tensor:
        """(N, bands, H, W) raw pixels as float32 on the device."""
        host = torch.from_numpy(np.ascontiguousarray(raw.astype(_WIDER.get(raw.dtype, raw.dtype), copy=False)))
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True).to(torch.float32)

    def logits(self, raw: np.ndarray) -> torch.Tensor:
        """The model's float32 logits of a raw batch, left on the device; refined by the CRF if there is one."""
        with torch.inference_mode():
            pixels = self._pixels(raw)
            normalized = (pixels - self.mean) / self.std
            logits = forward(self.model, normalized, self.device)
            if self.crf is None:
                return logits
            # The appearance kernel compares colours on a 0–255 scale: uint8 imagery as it is, other
            # types mapped from the training normalization (mean ± 2 std → 0–255).
            image = pixels if raw.dtype == np.uint8 else normalized * 63.75 + 127.5
            return dense_crf(logits.float(), image, self.crf)

    def cores(self, raw: np.ndarray, tiles: Sequence[Tile], *, scores: bool) -> CoreOutputs:
        """Each tile's core: argmax labels and (``scores``) softmax probabilities × 255, rounded, as uint8."""
        logits = self.logits(raw)
        labels, quantized = [], []
        with torch.inference_mode():
            for tile, tile_logits in zip(tiles, logits, strict=True):
                core = tile_logits[:, tile.halo : tile.halo + tile.height, tile.halo : tile.halo + tile.width]
                labels.append(first_argmax(core).cpu().numpy())
                if scores:
                    probabilities = torch.softmax(core[None], dim=1)[0]
                    quantized.append(torch.round(probabilities * 255).to(torch.uint8).cpu().numpy())
        return CoreOutputs(labels, quantized if scores else None)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Softmax of the whole windows (N, classes, H, W), float32 on the host (blend mode's first pass)."""
        with torch.inference_mode():
            return torch.softmax(self.logits(raw), dim=1).cpu().numpy()
