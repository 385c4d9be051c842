"""The per-pixel colour baseline: what a model gets from colour alone.

A multinomial logistic regression on each pixel's RGB values, trained on a
random sample of the training scene's valid pixels and scored on the survey
scene. A segmentation model earns its keep by the margin it wins over this:
everything it gains comes from spatial context (shape, texture, neighbours).

Both scenes are read window by window (their internal blocks), so memory stays
O(block) whatever the scene size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from sklearn.linear_model import LogisticRegression

from geoseg.config.locations import RemotePath, as_location
from geoseg.errors import InputRasterError
from geoseg.evaluate.metrics import confusion_matrix, scores_from_confusion

__all__ = ["colour_baseline"]


def _open_pair(
    scene_path: Path | RemotePath, labels_path: Path | RemotePath
) -> tuple[rasterio.DatasetReader, rasterio.DatasetReader]:
    try:
        scene = rasterio.open(scene_path)
    except RasterioIOError as exc:
        raise InputRasterError(f"{scene_path}: cannot open scene raster ({exc})") from exc
    try:
        labels = rasterio.open(labels_path)
    except RasterioIOError as exc:
        scene.close()
        raise InputRasterError(f"{labels_path}: cannot open label raster ({exc})") from exc
    if (scene.width, scene.height) != (labels.width, labels.height) or scene.transform != labels.transform:
        scene.close()
        labels.close()
        raise InputRasterError(
            f"{labels_path}: label grid {labels.width}x{labels.height} {tuple(labels.transform)[:6]!r} does not match "
            f"scene {scene_path} {scene.width}x{scene.height} {tuple(scene.transform)[:6]!r}; "
            "rasterize the labels on the scene's grid"
        )
    return scene, labels


def _windows(ds: rasterio.DatasetReader) -> Iterator[Window]:
    for _, window in ds.block_windows(1):
        yield window


def _read(
    scene: rasterio.DatasetReader, labels: rasterio.DatasetReader, window: Window, bands: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of ``bands`` as ``(n, bands)`` floats, their labels, and the validity mask."""
    pixels = scene.read(list(bands), window=window)
    truth = labels.read(1, window=window)
    # GDAL's dataset mask folds nodata (no-data only where every band holds it) and alpha together.
    valid = scene.dataset_mask(window=window) > 0
    if labels.nodata is not None:
        valid &= truth != labels.nodata
    return pixels.reshape(pixels.shape[0], -1).T.astype(np.float32), truth.ravel(), valid.ravel()


def colour_baseline(
    train_scene: str | Path,
    train_labels: Path,
    survey_scene: str | Path,
    survey_labels: Path,
    class_names: Sequence[str],
    *,
    bands: Sequence[int] | None = None,
    sample_pixels: int = 200_000,
    seed: int = 0,
) -> dict:
    """Score a per-pixel colour classifier trained on one scene, on another.

    Args:
        train_scene: the training image.
        train_labels: the training image's label raster (class indices, same grid).
        survey_scene: the scene to score.
        survey_labels: the survey scene's label raster (class indices, same grid).
        class_names: names of classes ``0..n-1`` of the label rasters.
        bands: 1-based bands to classify on (the model's); default: every band but alpha.
        sample_pixels: number of valid training pixels to fit on.
        seed: seed of the pixel sample.

    Returns:
        The metrics of :func:`geoseg.evaluate.metrics.scores_from_confusion`.
        Pixels labelled with the nodata value (255) or outside
        ``[0, len(class_names))``, and scene no-data pixels, are ignored.
    """
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"class_names must name at least two classes (got {list(class_names)!r})")
    if sample_pixels < num_classes:
        raise ValueError(f"sample_pixels must be at least the number of classes (got {sample_pixels!r})")
    rng = np.random.default_rng(seed)

    scene, labels = _open_pair(as_location(train_scene), as_location(train_labels))
    if bands is None:
        bands = [i for i, kind in enumerate(scene.colorinterp, 1) if kind != ColorInterp.alpha]
    with scene, labels:
        # Bernoulli thinning per window with a slight surplus, then an exact draw:
        # one pass, memory bounded by the sample, not by the scene.
        keep_prob = min(1.0, 1.25 * sample_pixels / (scene.width * scene.height))
        xs, ys = [], []
        for window in _windows(scene):
            x, y, valid = _read(scene, labels, window, bands)
            valid &= y < num_classes
            valid &= rng.random(valid.shape) < keep_prob
            xs.append(x[valid])
            ys.append(y[valid])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) > sample_pixels:
        pick = rng.choice(len(y), sample_pixels, replace=False)
        x, y = x[pick], y[pick]
    if len(np.unique(y)) < 2:
        raise InputRasterError(
            f"{train_labels}: fewer than two classes among the sampled valid pixels; nothing to learn"
        )
    # Standardised per band with the training sample's statistics, so 8-bit, 12-bit-in-uint16
    # and 16-bit imagery all reach the regularised fit on the same scale.
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    x = (x - mean) / std
    model = LogisticRegression(max_iter=1000)
    model.fit(x, y)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    scene, labels = _open_pair(as_location(survey_scene), as_location(survey_labels))
    with scene, labels:
        for window in _windows(scene):
            x, truth, valid = _read(scene, labels, window, bands)
            pred = np.zeros(truth.shape, np.int64)
            if valid.any():
                pred[valid] = model.predict((x[valid] - mean) / std)
            matrix += confusion_matrix(truth, pred, num_classes, valid)
    return scores_from_confusion(matrix, list(class_names))
