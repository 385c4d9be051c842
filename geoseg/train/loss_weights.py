"""Class and per-pixel weights of the weighted cross-entropy losses (``weighted_ce``, ``border_ce``).

:func:`median_frequency_weights` gives a class weight per class from pixel counts; the per-pixel weight
maps of ``border_ce`` are built per crop, on the data side, with :func:`class_weight_map` and
:func:`unet_border_weights`, and handed to the loss as ``pixel_weights`` (:mod:`geoseg.train.losses`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from geoseg.io.labels import IGNORE

__all__ = ["class_weight_map", "median_frequency_weights", "unet_border_weights"]

# The U-Net border term is dropped where it is below this fraction of w0; that
# bounds how far from each instance its distance map must be computed.
_NEGLIGIBLE = 1e-6


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing class weights (Eigen & Fergus, 2015).

    ``freq(c) = counts[c] / counts.sum()`` and ``weight(c) = median(freq) / freq(c)``,
    the median taken over the classes that occur. A class with no pixels gets
    weight 0: it never appears as a target, and 0 keeps it from dominating if a
    stray pixel of it shows up in a crop the counts did not cover.

    Args:
        counts: (C,) pixel count per class, ignored pixels left out, e.g.
            ``np.bincount(labels[labels != IGNORE], minlength=C)``.

    Returns:
        (C,) float64 weights; the median-frequency class has weight 1.

    Raises:
        ValueError: if counts are not 1-D, are negative, or are all zero.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError(f"class pixel counts must be a 1-D array of counts ≥ 0 (got {counts.tolist()!r})")
    total = counts.sum()
    if total == 0:
        raise ValueError("class pixel counts are all zero: no labelled pixels to balance")
    freq = counts / total
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def class_weight_map(labels: np.ndarray, class_weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-pixel class weights ``w_c(x) = class_weights[labels[x]]``, 0 on ignored pixels.

    Args:
        labels: (H, W) class labels, :data:`IGNORE` for no data.
        class_weights: (C,) weight per class.

    Returns:
        (H, W) float32 weight map, the ``w_c`` of :func:`unet_border_weights`.
    """
    labels = np.asarray(labels)
    table = np.zeros(max(256, int(labels.max(initial=0)) + 1), np.float32)
    table[: len(class_weights)] = np.asarray(class_weights, np.float32)
    table[IGNORE] = 0.0
    return table[labels]


def unet_border_weights(
    instances: np.ndarray, class_weight_map: np.ndarray | None = None, *, w0: float = 10.0, sigma: float = 5.0
) -> np.ndarray:
    """U-Net weight map: class balance plus a bonus on the gaps between objects.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``, with
    ``d1``, ``d2`` the distances (in pixels) to the nearest and second-nearest
    instance (Ronneberger et al., 2015, eq. 2). As in the paper the border term
    goes on background pixels only (``instances == 0``): it makes the network
    learn the thin separating strips between touching objects, which is what
    keeps them apart when the class mask is polygonized. Pixels inside an
    instance keep ``w_c``. With fewer than two instances in the crop there is no
    gap to separate and the border term is 0 everywhere.

    Distances are measured to instances inside the array only (a crop does not
    see objects beyond its edge). The border term is set to 0 where it is below
    ``1e-6 * w0``; that lets each instance's distance map be computed in a
    window around it instead of over the whole crop (fast for many instances).

    Args:
        instances: (H, W) integer instance ids; 0 = no instance.
        class_weight_map: (H, W) ``w_c``, e.g. from :func:`class_weight_map`;
            None means ``w_c = 1`` (plain border-weighted cross-entropy).
        w0: height of the border term.
        sigma: width of the border term, in pixels.

    Returns:
        (H, W) float32 weights.
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be an (H, W) array of ids (got shape {instances.shape})")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"U-Net border weights need w0 ≥ 0 and sigma > 0 (got w0={w0!r}, sigma={sigma!r})")
    if class_weight_map is None:
        base = np.ones(instances.shape, np.float32)
    else:
        base = np.asarray(class_weight_map, np.float32)
        if base.shape != instances.shape:
            raise ValueError(f"class_weight_map shape {base.shape} does not match instances {instances.shape}")
    # Compact the ids to 1..n so that find_objects gives one bounding box per instance.
    _ids, compact = np.unique(instances, return_inverse=True)
    compact = compact.reshape(instances.shape) + 1
    compact[instances == 0] = 0
    boxes = ndimage.find_objects(compact)
    if sum(box is not None for box in boxes) < 2 or w0 == 0:
        return base.copy()

    # Beyond d1 + d2 > reach the term is negligible; when d2 ≤ reach both nearest
    # instances lie within reach, so a window of that margin around each
    # instance holds every pixel whose term matters, with exact distances.
    reach = sigma * math.sqrt(2.0 * math.log(1.0 / _NEGLIGIBLE))
    margin = math.ceil(reach)
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    for label, box in enumerate(boxes, start=1):
        if box is None:  # the id slot of background 0
            continue
        window = tuple(
            slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, instances.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(compact[window] != label)
        near = d1[window]
        d2[window] = np.minimum(d2[window], np.maximum(near, dist))  # before d1 changes under it
        d1[window] = np.minimum(near, dist)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))  # inf distances give exactly 0
    border[(instances != 0) | (border < _NEGLIGIBLE * w0)] = 0.0
    return (base + border).astype(np.float32)
