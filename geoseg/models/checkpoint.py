"""Checkpoints: weights as safetensors plus a JSON model card (:mod:`geoseg.models.card`). Nothing is unpickled."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from geoseg.errors import CheckpointError
from geoseg.models.card import ModelCard, card_from_json

if TYPE_CHECKING:  # torch, safetensors.torch and the registry are imported where used: reading a card needs none
    import torch

__all__ = [
    "BEST_WEIGHTS",
    "CARD",
    "WEIGHTS",
    "build_model_from_card",
    "load_checkpoint",
    "publish_checkpoint",
    "read_card",
    "save_checkpoint",
    "save_weights",
    "weights_sha256",
    "write_card",
]

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
BEST_WEIGHTS = "best_model.safetensors"  # kept by the training loop beside the last epoch's weights


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """Write every weight of ``model`` to one safetensors file (what checkpoints and ``model.weights`` hold)."""
    from safetensors.torch import save_file

    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    return Path(path)


def save_checkpoint(folder: str | Path, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write weights + model card into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS, model)
    (folder / CARD).write_text(card.to_json())
    return folder


def write_card(folder: str | Path, card: ModelCard) -> None:
    """Replace a checkpoint's model card (written beside, then renamed: a reader sees the old card or the new)."""
    path = Path(folder) / CARD
    partial = path.with_suffix(".json.partial")
    partial.write_text(card.to_json())
    os.replace(partial, path)


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a checkpoint's weights file: what a mosaic's fingerprint and a run's run.json record."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(folder: str | Path) -> ModelCard:
    """The validated model card of a checkpoint folder (CheckpointError when missing or invalid)."""
    folder = Path(folder)
    card_path = folder / CARD
    if not card_path.is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(
            f"{folder}: checkpoint not found (needs {WEIGHTS} and {CARD}); "
            "run the train stage first or set predict.checkpoint"
        )
    return card_from_json(card_path.read_text(), card_path)


def build_model_from_card(card: ModelCard) -> torch.nn.Module:
    """A randomly initialised model of the architecture a model card describes.

    Random even when the card records pretrained ``encoder_weights``: a checkpoint's weights replace every one,
    so prediction never needs the pretrained file.
    """
    from geoseg.models.null import NULL_ARCH, NullModel
    from geoseg.models.registry import build_model

    if card.arch == NULL_ARCH:  # a benchmark's model that does no work, never a job's (see geoseg.models.null)
        return NullModel(card.num_classes)
    return build_model(
        card.arch, in_channels=card.in_channels, num_classes=card.num_classes, encoder=card.encoder, **card.options
    )


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model the card describes and load its weights (safetensors only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card = read_card(folder)
    model = build_model_from_card(card)
    try:
        state = load_file(str(folder / WEIGHTS), device=str(device))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        raise CheckpointError(
            f"{folder / WEIGHTS}: weights do not load into {card.arch}/{card.encoder} ({exc})"
        ) from None
    return model.to(device).eval(), card


def publish_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy a finished checkpoint folder into place atomically (temp name, then rename)."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The best validation epoch's weights when the loop kept them, else the last epoch's.
    best = source / BEST_WEIGHTS
    shutil.copy2(best if best.is_file() else source / WEIGHTS, tmp / WEIGHTS)
    shutil.copy2(source / CARD, tmp / CARD)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
