"""The training loop: losses in the loop, validation on the held-out strip, best-epoch weights, early stopping.

(The sampler: tests/train/test_sampler.py; a killed training run that resumes: tests/e2e/test_resume.py.)
"""

from pathlib import Path

import numpy as np
import pytest

from geoseg.io.labels import load_labels, rasterize_labels
from geoseg.io.raster import inspect_scene
from geoseg.train.loop import train_model
from geoseg.train.sampler import LabelIndex, split_area
from tests.factories import model_card, tiny_scene, training_config

CLASSES = ["background", "water", "vegetation"]


def _loop_config(folder: Path, loss: dict, **extra) -> dict:
    scene, gpkg = tiny_scene(folder)
    info = inspect_scene(scene)
    frame = load_labels(gpkg, scene=info, classes=CLASSES, field="class")
    labels = rasterize_labels(frame, info, folder / "labels.tif")
    instances = rasterize_labels(frame, info, folder / "instances.tif", instances=True)
    train, val = split_area(192, 192, 0.25, "bottom")
    card = model_card(
        arch="unet",
        encoder="resnet18",
        options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        classes=CLASSES,
        bands=[1, 2, 3],
        dtype="uint8",
        mean=[100.0] * 3,
        std=[50.0] * 3,
    )
    index = LabelIndex.build(labels, train, 3)
    return training_config(
        card,
        pairs=[(scene, labels)],
        train_areas=[train],
        val_areas=[val],
        cells=[index.cells],
        instances=[instances],
        class_weights=[0.5, 2.0, 1.0],
        loss=loss,
        **extra,
    )


@pytest.mark.parametrize(
    "loss",
    [
        {"ce": 1.0, "dice": 1.0},
        {"border_ce": 1.0, "lovasz": 0.5},
        {"weighted_ce": 1.0, "focal": 1.0, "tversky": 1.0, "jaccard": 1.0},
    ],
)
def test_the_loop_trains_with_each_loss_and_validates_on_the_strip(tmp_path, loss):
    reports = []
    metrics = train_model(
        _loop_config(tmp_path, loss),
        report=lambda m, folder: reports.append((m, sorted(p.name for p in folder.iterdir()))),
        log=lambda line: None,
    )
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert all(np.isfinite(m["loss"]) and 0 <= m["val_miou"] <= 1 for m, _ in reports)
    assert reports[-1][1] == ["best_model.safetensors", "model.safetensors", "model_card.json", "optimizer.pt"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    # A learning rate of 0 never improves: the first epoch stays best, and patience 1 stops after epoch 2.
    config = _loop_config(tmp_path, {"ce": 1.0}, epochs=6, patience=1, learning_rate=1e-12, schedule="cosine")
    lines = []
    metrics = train_model(config, report=lambda m, folder: None, log=lines.append)
    assert metrics["epoch"] == 2 and metrics["stopped_early"] and metrics["best_epoch"] == 1
    assert any("stopping early" in line for line in lines)


def test_the_model_learns_the_tiny_scene(tmp_path):
    """Loss falls, and the held-out strip's mIoU beats predicting its most common class everywhere."""
    import rasterio

    from geoseg.evaluate.metrics import confusion_matrix, scores_from_confusion
    from geoseg.io.labels import IGNORE

    plan = _loop_config(
        tmp_path,
        {"ce": 1.0, "dice": 1.0},
        epochs=4,
        steps_per_epoch=12,
        batch_size=4,
        learning_rate=3e-3,
        schedule="onecycle",
    )
    metrics = train_model(plan, log=lambda line: None)
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < 0.6 * losses[0], losses

    scene = plan.scenes[0]
    with rasterio.open(scene.labels) as src:
        truth = src.read(1, window=rasterio.windows.Window(*scene.val_area))
    known = truth[truth != IGNORE]
    majority = np.bincount(known, minlength=3).argmax()
    trivial = scores_from_confusion(confusion_matrix(truth, np.full_like(truth, majority), 3), CLASSES)["mean_iou"]
    best = max(h["val_miou"] for h in metrics["history"])
    assert best > trivial + 0.3, (best, trivial)
