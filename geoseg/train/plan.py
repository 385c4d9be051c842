"""The training plan: everything a training worker needs, typed, built once by the train stage.

The train stage (:mod:`geoseg.stages.train`) rasterizes the labels, splits
each scene into a training area and a held-out validation strip, computes the
band statistics into the model card, and hands the loop one
:class:`TrainingPlan`. The schedule, losses and sampling settings travel as
the job's own ``train:`` section (:class:`geoseg.config.schema.TrainSpec`), so
their defaults live in one place: the job schema. The plan is plain data; it
crosses into Ray Train's worker processes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geoseg.config.schema import TrainSpec
from geoseg.models.card import ModelCard
from geoseg.models.instance import is_instance_arch

__all__ = ["Box", "TrainingPlan", "TrainingScene", "box_of", "window_of"]

Box = tuple[int, int, int, int]  # a window as (col_off, row_off, width, height) in pixels


def box_of(window: Window) -> Box:
    return int(window.col_off), int(window.row_off), int(window.width), int(window.height)


def window_of(box: Box | None) -> Window | None:
    return None if box is None else Window(*box)


# Card fields that do not decide the trained weights (the prediction tiling, the run name, seams measured after).
_NOT_TRAINING = {"tile_size", "halo", "run", "seams"}


@dataclass(frozen=True, eq=False)
class TrainingScene:
    """One training scene as the loop reads it.

    Attributes:
        image: the scene (a path or an s3:// URI).
        labels: its label raster on the scene's grid: class ids (semantic models) or instance ids
            (instance models, one id per label polygon).
        train_area: where training crops are drawn.
        val_area: the held-out validation strip (None: no validation in this scene).
        cells: semantic models: which classes each grid cell of the training area holds
            (:class:`geoseg.train.sampler.LabelIndex`), for class-balanced crops.
        instances: semantic models with ``border_ce``: an instance-id raster for U-Net's separation borders.
        id_classes: instance models: the class index of each instance id (index 0: background).
        centres: instance models: ``[row, col]`` of each instance in the training area.
    """

    image: str
    labels: str
    train_area: Box
    val_area: Box | None
    cells: np.ndarray | None = None
    instances: str | None = None
    id_classes: tuple[int, ...] | None = None
    centres: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, eq=False)
class TrainingPlan:
    """What to train, on what, and how.

    Attributes:
        card: the model card of the model to train (architecture, classes, bands, normalization).
        spec: the job's ``train:`` section (schedule, batch, losses, sampling, seed, early stopping).
        scenes: the training scenes with their areas.
        stride: the model's output stride (validation pads windows to a multiple of it).
        class_weights: per-class loss weights (``weighted_ce``/``border_ce``); None: all 1.
        initial_weights: a .safetensors of the whole model to start from: ``model.weights``, or the train
            stage's ``train/initial_weights.safetensors`` (random layers + ``model.encoder_weights``, which the
            card records). Workers load it; they never read a library's cache.
    """

    card: ModelCard
    spec: TrainSpec
    scenes: tuple[TrainingScene, ...]
    stride: int
    class_weights: tuple[float, ...] | None = None
    initial_weights: str | None = None

    @property
    def instance_model(self) -> bool:
        return is_instance_arch(self.card.arch)

    @property
    def has_validation(self) -> bool:
        return any(scene.val_area is not None for scene in self.scenes)

    @property
    def score_name(self) -> str:
        """The validation score that picks the best epoch: F1 for instance models, mIoU otherwise."""
        return "val_f1" if self.instance_model else "val_miou"

    def with_card(self, card: ModelCard) -> TrainingPlan:
        return TrainingPlan(card, self.spec, self.scenes, self.stride, self.class_weights, self.initial_weights)

    def digest(self) -> str:
        """A short hash of what decides the trained weights (not the per-cell class grids, which follow the labels)."""
        described = {
            # The job's prediction tiling rides on the card but does not change the weights: a job that only
            # changes its tiling (or lets `tiling: auto` choose) keeps its trained model.
            "card": self.card.model_dump(mode="json", exclude=_NOT_TRAINING),
            "spec": self.spec.model_dump(mode="json"),
            "scenes": [[s.image, s.labels, s.train_area, s.val_area, s.instances, s.id_classes] for s in self.scenes],
            "stride": self.stride,
            "class_weights": self.class_weights,
            "initial_weights": self.initial_weights,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:10]
