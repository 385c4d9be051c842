"""The training loop: plain PyTorch, no Ray inside.

The runtime layer runs :func:`train_model` in each Ray Train worker with the
train stage's :class:`~geoseg.train.plan.TrainingPlan` and hands in
``prepare_model`` (DDP wrapping), ``report`` (metrics + checkpoint to Ray)
and ``resume_from`` (the last checkpoint after a restart or a rerun).

A semantic step (:func:`semantic_step`) computes the job's losses on the
logits; an instance step (:func:`instance_step`) sums Mask R-CNN's own losses.
Every epoch ends with a validation pass over the held-out strips
(:mod:`geoseg.train.validation`). The best epoch's weights travel in each
checkpoint (``best_model.safetensors``) and are the ones published.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from geoseg.models.card import TrainingSummary
from geoseg.models.checkpoint import BEST_WEIGHTS, WEIGHTS, build_model_from_card, save_checkpoint
from geoseg.train.instances import InstanceCropSampler, collate_instances
from geoseg.train.loss_weights import class_weight_map, unet_border_weights
from geoseg.train.losses import CombinedLoss, build_loss
from geoseg.train.plan import TrainingPlan, window_of
from geoseg.train.sampler import CropSampler, LabelIndex
from geoseg.train.validation import validation_metrics

__all__ = ["BEST_WEIGHTS", "OPTIMIZER_STATE", "EpochState", "instance_step", "semantic_step", "train_model"]

OPTIMIZER_STATE = "optimizer.pt"  # written and read by geoseg only, loaded with weights_only=True
Report = Callable[[dict, Path | None], None]


@dataclass
class EpochState:
    """What survives a restart, saved beside each checkpoint's optimizer state.

    ``best_score`` is the best validation score so far: mIoU for semantic models, F1 for instance
    models (the plan's ``score_name``); -1 before the first validation.
    """

    epoch: int = -1  # the last finished epoch, 0-based
    best_score: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    history: list[dict] = field(default_factory=list)

    @classmethod
    def restored(cls, saved: dict) -> EpochState:
        if "best_miou" in saved:  # checkpoints written before the score was named for what it is
            saved["best_score"] = saved.pop("best_miou")
        return cls(**{key: saved[key] for key in ("epoch", "best_score", "best_epoch", "stale", "history")})


def _identity(model: torch.nn.Module) -> torch.nn.Module:
    return model


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


def _schedule(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, learning_rate: float
) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "cosine":  # short linear warm-up, then cosine decay to zero
        warmup = max(1, total_steps // 20)
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.05, total_iters=warmup),
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup)),
            ],
            milestones=[warmup],
        )
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=0.2)


def _build_model(
    plan: TrainingPlan, device: torch.device, prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
) -> torch.nn.Module:
    """The model on ``device``, wrapped by ``prepare_model``; the same initial weights on every worker."""
    torch.manual_seed(plan.spec.seed)
    model = build_model_from_card(plan.card)
    if plan.initial_weights:
        model.load_state_dict(load_file(plan.initial_weights))
    if not plan.instance_model:  # Mask R-CNN uses every head in training; its forward needs targets
        _freeze_unused(model, plan.card.in_channels, plan.spec.tile_size)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return prepare_model(model)


def _resume(
    folder: Path,
    plain: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> EpochState:
    """Load the weights, optimizer and schedule state a checkpoint saved; return where training stood."""
    plain.load_state_dict(load_file(str(folder / WEIGHTS), device=str(device)))
    saved = torch.load(folder / OPTIMIZER_STATE, weights_only=True, map_location=device)
    optimizer.load_state_dict(saved.pop("optimizer"))
    schedule.load_state_dict(saved.pop("schedule"))
    return EpochState.restored(saved)


def _batches(plan: TrainingPlan, seed: int, pixel_weights: Callable | None) -> Iterator[Any]:
    """Endless batches of random crops from the training areas (this worker's own draw)."""
    card, spec = plan.card, plan.spec
    pairs = [(scene.image, scene.labels) for scene in plan.scenes]
    areas = [window_of(scene.train_area) for scene in plan.scenes]
    common: dict[str, Any] = {
        "bands": card.bands,
        "size": spec.tile_size,
        "mean": list(card.normalization.mean),
        "std": list(card.normalization.std),
        "seed": seed,
        "jitter": spec.jitter,
    }
    if plan.instance_model:
        sampler: torch.utils.data.IterableDataset = InstanceCropSampler(
            pairs,
            id_classes=[s.id_classes for s in plan.scenes],
            centres=[s.centres for s in plan.scenes],
            areas=areas,
            empty_ratio=spec.empty_ratio,
            **common,
        )
        return iter(
            torch.utils.data.DataLoader(
                sampler, batch_size=spec.batch_size, num_workers=0, collate_fn=collate_instances
            )
        )
    indexes = None
    if spec.oversample > 0:
        indexes = [
            LabelIndex(area, np.zeros(card.num_classes, np.int64), np.asarray(scene.cells, bool))
            for area, scene in zip(areas, plan.scenes, strict=True)
        ]
    instances = [s.instances for s in plan.scenes] if any(s.instances for s in plan.scenes) else None
    sampler = CropSampler(
        pairs,
        areas=areas,
        indexes=indexes,
        oversample=spec.oversample,
        instances=instances,
        pixel_weights=pixel_weights,
        **common,
    )
    return iter(torch.utils.data.DataLoader(sampler, batch_size=spec.batch_size, num_workers=0))


def semantic_step(
    model: torch.nn.Module, batch: list[torch.Tensor], *, device: torch.device, loss_fn: torch.nn.Module
) -> torch.Tensor:
    """The loss of one batch of (images, labels[, pixel weights]) under the job's losses."""
    batch = [t.to(device) for t in batch]
    images, targets = batch[0], batch[1]
    on_gpu = device.type == "cuda"
    if on_gpu:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
        logits = model(images)
    # Gated-SCNN keeps its boundary logits beside the segmentation's (None for every other model).
    edges = getattr(getattr(model, "module", model), "edge_logits", None)
    loss: torch.Tensor = loss_fn(logits.float(), targets, batch[2] if len(batch) > 2 else None, edges)
    return loss


def instance_step(model: torch.nn.Module, batch: tuple[list, list], *, device: torch.device) -> torch.Tensor:
    """Mask R-CNN's own losses (RPN, boxes, classes, masks) on one batch of images and targets, summed."""
    images = [image.to(device) for image in batch[0]]
    targets = [{k: v.to(device) for k, v in target.items()} for target in batch[1]]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = sum(model(images, targets).values())
    return loss.float()


def _border_weights(ids: np.ndarray, target: np.ndarray, *, class_weights: np.ndarray) -> np.ndarray:
    """Per-pixel weights of U-Net's border-weighted loss for one crop (class balance + separation borders)."""
    return unet_border_weights(ids, class_weight_map(target, class_weights))


def _step_function(plan: TrainingPlan) -> tuple[Callable, Callable | None, CombinedLoss | None]:
    """The step that turns a batch into a loss, the sampler's per-pixel weights (border_ce only), the loss."""
    if plan.instance_model:
        return instance_step, None, None
    num_classes = plan.card.num_classes
    class_weights = np.asarray(plan.class_weights or np.ones(num_classes), np.float32)
    loss_fn = build_loss(dict(plan.spec.loss), num_classes=num_classes, class_weights=class_weights.tolist())
    pixel_weights = (
        functools.partial(_border_weights, class_weights=class_weights) if loss_fn.needs_pixel_weights else None
    )
    return functools.partial(semantic_step, loss_fn=loss_fn), pixel_weights, loss_fn


def train_model(
    plan: TrainingPlan,
    *,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = _identity,
    report: Report | None = None,
    resume_from: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the model ``plan.card`` describes on ``plan.scenes``; return the last epoch's metrics.

    Args:
        plan: what to train and how (built by the train stage).
        rank: this worker's rank (each worker draws its own crops).
        world: the number of workers.
        device: where to train.
        prepare_model: wraps the model for distributed training (Ray Train's DDP).
        report: called after every epoch with the metrics and (rank 0) a checkpoint folder.
        resume_from: a checkpoint folder this loop reported before: training continues after its epoch.
        log: progress lines (rank 0 only).
    """
    device = torch.device(device)
    spec = plan.spec
    seed = spec.seed + 1000 * rank  # each worker draws different crops
    model = _build_model(plan, device, prepare_model)
    plain = getattr(model, "module", model)  # unwrapped (DDP) for saving
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    schedule = _schedule(optimizer, spec.schedule, spec.epochs * spec.steps_per_epoch, spec.learning_rate)
    state, best_weights = EpochState(), None
    if resume_from is not None:
        state = _resume(Path(resume_from), plain, optimizer, schedule, device)
        seed += 7919 * (state.epoch + 1)  # fresh crops after a restart
        log(f"train: resuming after epoch {state.epoch + 1}/{spec.epochs}")
        if (Path(resume_from) / BEST_WEIGHTS).exists():
            best_weights = load_file(str(Path(resume_from) / BEST_WEIGHTS))
    step, pixel_weights, loss_fn = _step_function(plan)
    total_steps = spec.epochs * spec.steps_per_epoch
    batches = _batches(plan, seed, pixel_weights)

    metrics: dict = {}
    for epoch in range(state.epoch + 1, spec.epochs):
        model.train()
        started, losses = time.perf_counter(), []
        for index in range(spec.steps_per_epoch):
            if loss_fn is not None:  # the loss schedules of topk and boundary
                loss_fn.set_progress((epoch * spec.steps_per_epoch + index) / max(total_steps - 1, 1))
            loss = step(model, next(batches), device=device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        metrics = _epoch_metrics(
            epoch, spec.epochs, losses, spec.batch_size, time.perf_counter() - started, float(schedule.get_last_lr()[0])
        )
        if plan.has_validation:
            metrics.update(validation_metrics(plain, plan, device=device, rank=rank, world=world))
        if _update_state(state, epoch, metrics, plan):
            best_weights = {k: v.detach().to("cpu").clone() for k, v in plain.state_dict().items()}
        stop = bool(spec.early_stopping) and plan.has_validation and state.stale >= int(spec.early_stopping or 0)
        metrics.update(best_epoch=state.best_epoch, history=list(state.history), stopped_early=stop)
        if rank == 0:
            log(_epoch_line(metrics, plan))
        if report is not None:
            _report(report, plan, state, plain, best_weights, optimizer, schedule, metrics, rank)
        if stop:
            if rank == 0:
                log(
                    f"train: stopping early: validation {_score_label(plan)} has not improved for "
                    f"{spec.early_stopping} epochs (best {state.best_score:.3f} at epoch {state.best_epoch})"
                )
            break
    return metrics


def _epoch_metrics(
    epoch: int, epochs: int, losses: list[float], batch_size: int, seconds: float, learning_rate: float
) -> dict:
    return {
        "epoch": epoch + 1,
        "epochs": epochs,
        "loss": float(np.mean(losses)),
        "learning_rate": learning_rate,
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(losses) * batch_size / seconds, 2),
    }


def _update_state(state: EpochState, epoch: int, metrics: dict, plan: TrainingPlan) -> bool:
    """Record the finished epoch; return whether it is the best so far (always, without validation)."""
    score = metrics.get(plan.score_name)
    improved = not plan.has_validation or (score or 0.0) > state.best_score
    if improved:
        state.best_score = score or 0.0
        state.best_epoch, state.stale = epoch + 1, 0
    else:
        state.stale += 1
    state.epoch = epoch
    state.history.append({k: v for k, v in metrics.items() if k != "val_per_class_iou"})
    return improved


def _score_label(plan: TrainingPlan) -> str:
    return "F1" if plan.instance_model else "mIoU"


def _epoch_line(metrics: dict, plan: TrainingPlan) -> str:
    score = metrics.get(plan.score_name)
    val = f", val {_score_label(plan)} {score:.3f}" if plan.has_validation else ""
    return (
        f"train: epoch {metrics['epoch']}/{metrics['epochs']} loss {metrics['loss']:.4f}{val} "
        f"({metrics['samples_per_s']:.1f} samples/s)"
    )


def _report(
    report: Report,
    plan: TrainingPlan,
    state: EpochState,
    plain: torch.nn.Module,
    best_weights: dict | None,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    metrics: dict,
    rank: int,
) -> None:
    """Hand the epoch's metrics to ``report`` with (rank 0) a checkpoint: last and best weights, optimizer state."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if rank == 0:
            summary = TrainingSummary(
                epochs_run=state.epoch + 1,
                best_epoch=state.best_epoch,
                **({plan.score_name: state.best_score} if plan.has_validation else {}),
            )
            folder = save_checkpoint(tmp, plain, plan.card.model_copy(update={"training": summary}))
            if best_weights is not None:  # else publishing falls back to the last epoch's weights
                save_file(best_weights, str(folder / BEST_WEIGHTS))
            torch.save(
                {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), **asdict(state)},
                folder / OPTIMIZER_STATE,
            )
        report(metrics, folder)
