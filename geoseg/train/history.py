"""A picture of a training run: loss and validation mIoU per epoch."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt

__all__ = ["plot_history"]


def plot_history(history: list[dict], out_path: str | Path) -> Path:
    """Plot training loss (left axis) and validation mIoU (right axis) per epoch into a PNG."""
    out_path = Path(out_path)
    epochs = [h["epoch"] for h in history]
    fig, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    loss_axis.plot(epochs, [h["loss"] for h in history], "o-", color="tab:red", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:red")
    key, name = ("val_f1", "F1 at IoU 0.5") if any("val_f1" in h for h in history) else ("val_miou", "mIoU")
    validated = [h for h in history if h.get(key) is not None]
    if validated:
        miou_axis = loss_axis.twinx()
        miou_axis.plot(
            [h["epoch"] for h in validated],
            [h[key] for h in validated],
            "s-",
            color="tab:blue",
            label=f"validation {name}",
        )
        miou_axis.set_ylabel(f"validation {name} (held-out strip)", color="tab:blue")
        miou_axis.set_ylim(0, 1)
    loss_axis.set_title("training history")
    fig.tight_layout()
    tmp = out_path.with_name(out_path.name + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path
