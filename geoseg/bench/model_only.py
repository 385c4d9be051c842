"""The model alone, the yardstick of ``geoseg bench predict``: the same batches forwarded in a plain loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil

from geoseg.bench.measure import Contention, cpu_seconds
from geoseg.synthetic.blocks import CLASSES, scene_card

__all__ = ["model_only_seconds", "random_checkpoint"]


def model_only_seconds(
    checkpoint: Path, scene: Path, mosaic: Path, tiles, *, batch_size: int, device: str, threads: int, max_batches: int
) -> tuple[float, int, float]:
    """Seconds per tile of the model alone on the run's batches, the tiles timed, other work's CPU share.

    The model is loaded by :class:`TilePredictor` itself (same threads, same
    cuDNN flags, channels_last on CUDA) and forwarded with
    :func:`predict_logits`; inputs are read and normalised before the clock
    starts, so no reading or writing is timed. With more than ``max_batches``
    batches an evenly spread subset is timed and the caller scales it.
    """
    import torch

    from geoseg.infer import TilePredictor
    from geoseg.infer.predict import predict_logits
    from geoseg.io.normalization import normalize
    from geoseg.io.raster import read_tile

    previous_threads = torch.get_num_threads()
    previous_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    predictor = TilePredictor(checkpoint, scene, mosaic, device=device, threads=threads)
    try:
        batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
        if len(batches) > max_batches:
            picks = np.linspace(0, len(batches) - 1, max_batches).round().astype(int)
            batches = [batches[i] for i in sorted(set(picks.tolist()))]
        inputs = []
        mean, std = predictor.card.normalization.mean, predictor.card.normalization.std
        for batch in batches:
            arrays = [normalize(read_tile(predictor.scene, tile, predictor.bands)[0], mean, std) for tile in batch]
            inputs.append(np.stack(arrays))
        predict_logits(predictor.model, inputs[0], predictor.device)  # warm-up: allocator, oneDNN/cuDNN plans
        contention, own = Contention(), cpu_seconds(psutil.Process())
        started = time.perf_counter()
        for array in inputs:
            predict_logits(predictor.model, array, predictor.device)  # returns on the CPU: synchronised
        seconds = time.perf_counter() - started
        timed = sum(len(batch) for batch in batches)
        return seconds / timed, timed, contention.share(cpu_seconds(psutil.Process()) - own)
    finally:
        predictor.close()
        del predictor
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous_cudnn


def random_checkpoint(folder: Path, arch: str, encoder: str, options: dict):
    import torch

    from geoseg.models import build_model
    from geoseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, num_classes=len(CLASSES), encoder=encoder, **options)
    card = scene_card(arch, encoder, options)
    return save_checkpoint(folder, model, card)
