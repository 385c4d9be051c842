"""The training loop: plain PyTorch, no Ray inside.

The runtime layer runs :func:`train_model` in each Ray Train worker and hands in
``prepare_model`` (DDP wrapping), ``report`` (metrics + checkpoint to Ray) and
``resume_from`` (the last checkpoint after a restart or a rerun).

Every epoch ends with a validation pass over the held-out strips (see
:mod:`geoseg.train.sampler`): each worker scores its share of the windows,
the confusion matrices are summed across workers (``all_reduce``), and every
worker sees the same mIoU, so early stopping stops them together. The best
epoch's weights travel in each checkpoint (``best_model.safetensors``) and
are the ones published.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from safetensors.torch import load_file, save_file

from geoseg.evaluate.metrics import confusion_matrix, scores_from_confusion
from geoseg.models import is_instance_arch
from geoseg.models.checkpoint import BEST_WEIGHTS, WEIGHTS, build_model_from_card, save_checkpoint
from geoseg.io.normalization import normalize
from geoseg.train.losses import build_loss, class_weight_map, unet_border_weights
from geoseg.train.sampler import CropSampler, LabelIndex, validation_windows
from geoseg.train.instances import InstanceCropSampler, collate_instances, validate_instances

__all__ = ["train_model", "OPTIMIZER_STATE", "BEST_WEIGHTS"]

OPTIMIZER_STATE = "optimizer.pt"  # written and read by geoseg only, loaded with weights_only=True


def _identity(model):
    return model


def _window(values) -> Window | None:
    return None if values is None else Window(*values)


def _border_weights(ids, target, *, class_weights: np.ndarray):
    """Per-pixel weights of U-Net's border-weighted loss for one crop (class balance + separation borders)."""
    return unet_border_weights(ids, class_weight_map(target, class_weights))


def _freeze_unused(model: torch.nn.Module, bands: int, size: int) -> int:
    """Stop tracking parameters the forward pass never uses; return how many tensors that was.

    smp builds the whole encoder even with ``encoder_depth`` < 5 and leaves the
    deepest stages idle. Their gradients stay empty, which DistributedDataParallel
    treats as an error (or, with find_unused_parameters, pays for every step).
    One dry forward/backward in eval mode (no BatchNorm statistics change) finds them.
    """
    was_training = model.training
    model.eval()
    model(torch.zeros(1, bands, size, size)).float().sum().backward()
    unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    for parameter in model.parameters():
        parameter.grad = None
    for parameter in unused:
        parameter.requires_grad_(False)
    model.train(was_training)
    return len(unused)


def _schedule(optimizer, kind: str, total_steps: int, learning_rate: float):
    if kind == "cosine":  # short linear warm-up, then cosine decay to zero
        warmup = max(1, total_steps // 20)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))],
            milestones=[warmup])
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total_steps,
                                               pct_start=0.2)


def _sum_across_workers(matrix: np.ndarray, device) -> np.ndarray:
    """Sum a confusion matrix (or any count array) over all workers (no-op for one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return matrix
    tensor = torch.from_numpy(matrix.astype(np.int64)).to(device)
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def validate(model: torch.nn.Module, card: dict, pairs: list, areas: list[Window | None], *, size: int,
             stride: int, device, rank: int = 0, world: int = 1) -> np.ndarray:
    """Confusion matrix of ``model`` over the validation areas, summed across workers."""
    num_classes = len(card["classes"])
    matrix = np.zeros((num_classes, num_classes), np.int64)
    jobs = [(scene, window) for scene, area in enumerate(areas) if area is not None
            for window in validation_windows(area, size)]
    model.eval()
    with torch.inference_mode():
        for scene, window in jobs[rank::world]:
            image_path, label_path = pairs[scene]
            with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
                pixels = src.read(list(card["bands"]), window=window)
                truth = lab.read(1, window=window)
            image = normalize(pixels, card["normalization"]["mean"], card["normalization"]["std"])
            h, w = truth.shape
            # Models need sides on their stride: mirror-pad, predict, crop back.
            pad_h, pad_w = (-h) % stride, (-w) % stride
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect") if pad_h or pad_w else image
            logits = model(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))
            pred = logits[0, :, :h, :w].argmax(dim=0).cpu().numpy()
            matrix += confusion_matrix(truth, pred, num_classes)
    model.train()
    return _sum_across_workers(matrix, device)


def train_model(config: dict, *, rank: int = 0, world: int = 1, device: str | torch.device = "cpu",
                prepare_model: Callable = _identity,
                report: Callable[[dict, Path | None], None] | None = None,
                resume_from: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train the model the card in ``config['card']`` describes; return the last epoch's metrics.

    ``config`` holds plain data only (it crosses process boundaries): ``card``,
    ``pairs`` (image, label-raster paths), ``train_areas`` / ``val_areas``
    (windows as [col, row, width, height] per scene; a val area may be None),
    ``cells`` (per-scene class-presence grids for oversampling),
    ``class_weights``, ``instances`` (instance-id rasters, for border_ce),
    ``loss`` ({name: weight}), ``schedule``, ``tile_size``, ``batch_size``,
    ``epochs``, ``steps_per_epoch``, ``learning_rate``, ``weight_decay``,
    ``seed``, ``oversample``, ``jitter``, ``patience``, ``stride``.
    """
    device = torch.device(device)
    card = config["card"]
    seed = int(config["seed"]) + 1000 * rank  # each worker draws different crops
    torch.manual_seed(int(config["seed"]))  # same initial weights on every worker
    model = build_model_from_card(card)
    if config.get("initial_weights"):
        model.load_state_dict(load_file(str(config["initial_weights"])))
    instance = is_instance_arch(card["arch"])
    if not instance:  # Mask R-CNN uses every head in training; its forward needs targets
        _freeze_unused(model, len(card["bands"]), int(config["tile_size"]))
    on_gpu = device.type == "cuda"
    model = model.to(device)
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    model = prepare_model(model)
    plain = getattr(model, "module", model)  # unwrapped (DDP) for saving

    epochs, steps = int(config["epochs"]), int(config["steps_per_epoch"])
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config["learning_rate"], weight_decay=config["weight_decay"])
    schedule = _schedule(optimizer, config.get("schedule", "onecycle"), epochs * steps, config["learning_rate"])
    state = {"epoch": -1, "best_miou": -1.0, "best_epoch": 0, "stale": 0, "history": []}
    if resume_from is not None:
        plain.load_state_dict(load_file(str(Path(resume_from) / WEIGHTS), device=str(device)))
        saved = torch.load(Path(resume_from) / OPTIMIZER_STATE, weights_only=True, map_location=device)
        optimizer.load_state_dict(saved.pop("optimizer"))
        schedule.load_state_dict(saved.pop("schedule"))
        state.update(saved)
        seed += 7919 * (state["epoch"] + 1)  # fresh crops after a restart
        log(f"train: resuming after epoch {state['epoch'] + 1}/{epochs}")
    best_path = Path(resume_from) / BEST_WEIGHTS if resume_from is not None else None
    best_weights = load_file(str(best_path)) if best_path is not None and best_path.exists() else None

    num_classes = len(card["classes"])
    class_weights = np.asarray(config.get("class_weights") or np.ones(num_classes), np.float32)
    loss_fn = build_loss(config.get("loss") or {"ce": 1.0, "dice": 1.0}, num_classes=num_classes,
                         class_weights=class_weights.tolist())
    areas = [_window(a) for a in config["train_areas"]]
    val_areas = [_window(a) for a in config.get("val_areas") or [None] * len(areas)]
    indexes = None
    if config.get("oversample", 0) > 0:
        indexes = [LabelIndex(area, np.zeros(num_classes, np.int64), np.asarray(cells, bool))
                   for area, cells in zip(areas, config["cells"])]
    pixel_weights = (functools.partial(_border_weights, class_weights=class_weights)
                     if loss_fn.needs_pixel_weights else None)
    if instance:
        sampler = InstanceCropSampler(config["pairs"], id_classes=config["id_classes"], centres=config["centres"],
                                      areas=areas, bands=tuple(card["bands"]), size=int(config["tile_size"]),
                                      mean=card["normalization"]["mean"], std=card["normalization"]["std"],
                                      seed=seed, jitter=float(config.get("jitter", 0)),
                                      empty_ratio=float(config.get("empty_ratio", 0.1)))
        loader = iter(torch.utils.data.DataLoader(sampler, batch_size=int(config["batch_size"]), num_workers=0,
                                                  collate_fn=collate_instances))
    else:
        sampler = CropSampler(config["pairs"], areas=areas, bands=tuple(card["bands"]), size=int(config["tile_size"]),
                              mean=card["normalization"]["mean"], std=card["normalization"]["std"], seed=seed,
                              indexes=indexes, oversample=float(config.get("oversample", 0)),
                              jitter=float(config.get("jitter", 0)), instances=config.get("instances"),
                              pixel_weights=pixel_weights)
        loader = iter(torch.utils.data.DataLoader(sampler, batch_size=int(config["batch_size"]), num_workers=0))
    score_name = "val_f1" if instance else "val_miou"
    patience = config.get("patience")
    has_validation = any(a is not None for a in val_areas)

    metrics: dict = {}
    for epoch in range(state["epoch"] + 1, epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for _ in range(steps):
            if instance:  # Mask R-CNN computes its own losses (RPN, boxes, classes, masks)
                images, targets = next(loader)
                images = [image.to(device) for image in images]
                targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                    loss = sum(model(images, targets).values())
                loss = loss.float()
            else:
                batch = [t.to(device) for t in next(loader)]
                images, targets = batch[0], batch[1]
                if on_gpu:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                    logits = model(images)
                loss = loss_fn(logits.float(), targets, batch[2] if len(batch) > 2 else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "epochs": epochs, "loss": float(np.mean(losses)),
                   "learning_rate": float(schedule.get_last_lr()[0]),
                   "seconds": round(seconds, 2), "samples_per_s": round(steps * int(config["batch_size"]) / seconds, 2)}
        improved = True
        if has_validation and instance:
            tp, fp, fn = _sum_across_workers(
                validate_instances(plain, card, config["pairs"], config["id_classes"], val_areas,
                                   size=2 * int(config["tile_size"]), device=device, rank=rank, world=world), device)
            metrics["val_f1"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0
            metrics.update(val_precision=float(tp / (tp + fp)) if tp + fp else 0.0,
                           val_recall=float(tp / (tp + fn)) if tp + fn else 0.0)
            improved = metrics["val_f1"] > state["best_miou"]
        elif has_validation:
            matrix = validate(plain, card, config["pairs"], val_areas, size=2 * int(config["tile_size"]),
                              stride=int(config.get("stride", 32)), device=device, rank=rank, world=world)
            scores = scores_from_confusion(matrix, card["classes"])
            metrics["val_miou"] = scores["mean_iou"]
            metrics["val_per_class_iou"] = scores["per_class_iou"]
            improved = (scores["mean_iou"] or 0.0) > state["best_miou"]
        if improved:  # state["best_miou"] holds the best validation score: mIoU, or F1 for instance models
            state["best_miou"] = metrics.get(score_name) or 0.0
            state["best_epoch"], state["stale"] = epoch + 1, 0
            best_weights = {k: v.detach().to("cpu").clone() for k, v in plain.state_dict().items()}
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        state["history"].append({k: v for k, v in metrics.items() if k != "val_per_class_iou"})
        metrics.update(best_epoch=state["best_epoch"], history=list(state["history"]))
        stop = bool(patience) and has_validation and state["stale"] >= int(patience)
        metrics["stopped_early"] = stop
        if rank == 0:
            val = (f", val {'F1' if instance else 'mIoU'} {metrics[score_name]:.3f}") if has_validation else ""
            log(f"train: epoch {epoch + 1}/{epochs} loss {metrics['loss']:.4f}{val} "
                f"({metrics['samples_per_s']:.1f} samples/s)")
        if report is not None:
            with tempfile.TemporaryDirectory() as tmp:
                folder = None
                if rank == 0:
                    folder = save_checkpoint(tmp, plain, {**card, "training": _card_summary(state, has_validation,
                                                                                            score_name)})
                    save_file(best_weights, str(folder / BEST_WEIGHTS))
                    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                **{k: state[k] for k in ("epoch", "best_miou", "best_epoch", "stale", "history")}},
                               folder / OPTIMIZER_STATE)
                report(metrics, folder)
        if stop:
            if rank == 0:
                log(f"train: stopping early: validation {'F1' if instance else 'mIoU'} has not improved for {patience} epochs "
                    f"(best {state['best_miou']:.3f} at epoch {state['best_epoch']})")
            break
    return metrics


def _card_summary(state: dict, has_validation: bool, score_name: str = "val_miou") -> dict:
    """What the published model card says about how it was trained."""
    summary = {"epochs_run": state["epoch"] + 1, "best_epoch": state["best_epoch"]}
    if has_validation:
        summary[score_name] = state["best_miou"]
    return summary
