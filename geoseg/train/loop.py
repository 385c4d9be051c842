"""The training loop: plain PyTorch, no Ray inside.

The runtime layer runs :func:`train_model` in each Ray Train worker and hands in
``prepare_model`` (DDP wrapping), ``report`` (metrics + checkpoint to Ray) and
``resume_from`` (the last checkpoint after a restart).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import segmentation_models_pytorch as smp
import torch

from geoseg.io.labels import IGNORE
from geoseg.train.checkpoint import WEIGHTS, build_model_from_card, save_checkpoint
from geoseg.train.data import CropSampler

__all__ = ["train_model", "OPTIMIZER_STATE"]

OPTIMIZER_STATE = "optimizer.pt"  # written and read by geoseg only, loaded with weights_only=True


def _identity(model):
    return model


def train_model(config: dict, *, rank: int = 0, device: str | torch.device = "cpu",
                prepare_model: Callable = _identity,
                report: Callable[[dict, Path | None], None] | None = None,
                resume_from: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train the model the card in ``config['card']`` describes; return the last epoch's metrics.

    ``config`` holds plain data only (it crosses process boundaries): ``card``,
    ``pairs`` (image, label-raster paths), ``tile_size``, ``batch_size``,
    ``epochs``, ``steps_per_epoch``, ``learning_rate``, ``weight_decay``, ``seed``.
    """
    card = config["card"]
    seed = int(config["seed"]) + 1000 * rank  # each worker draws different crops
    torch.manual_seed(int(config["seed"]))  # same initial weights on every worker
    model = build_model_from_card(card)
    if config.get("initial_weights"):
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(config["initial_weights"])))
    model = prepare_model(model.to(device))

    epochs, steps = int(config["epochs"]), int(config["steps_per_epoch"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["learning_rate"],
                                                   total_steps=epochs * steps, pct_start=0.2)
    start_epoch = 0
    if resume_from is not None:
        from safetensors.torch import load_file
        getattr(model, "module", model).load_state_dict(load_file(str(Path(resume_from) / WEIGHTS), device=str(device)))
        state = torch.load(Path(resume_from) / OPTIMIZER_STATE, weights_only=True, map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch = int(state["epoch"]) + 1
        seed += 7919 * start_epoch  # fresh crops after a restart
        log(f"train: resuming after epoch {start_epoch}/{epochs}")

    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE)
    sampler = CropSampler(config["pairs"], bands=tuple(card["bands"]), size=int(config["tile_size"]),
                          mean=card["normalization"]["mean"], std=card["normalization"]["std"], seed=seed)
    loader = iter(torch.utils.data.DataLoader(sampler, batch_size=int(config["batch_size"]), num_workers=0))

    metrics: dict = {}
    for epoch in range(start_epoch, epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for _ in range(steps):
            images, targets = next(loader)
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss = cross_entropy(logits, targets) + dice(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "epochs": epochs, "loss": float(np.mean(losses)),
                   "seconds": round(seconds, 2), "samples_per_s": round(steps * int(config["batch_size"]) / seconds, 2)}
        if rank == 0:
            log(f"train: epoch {epoch + 1}/{epochs} loss {metrics['loss']:.4f} "
                f"({metrics['samples_per_s']:.1f} samples/s)")
        if report is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if rank == 0:
                folder = save_checkpoint(tmp, model, card)
                torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch},
                           folder / OPTIMIZER_STATE)
            report(metrics, folder)
    return metrics
