"""Classic segmentation losses from the literature, beyond the smp set in :mod:`geoseg.train.losses`.

Each is a ``torch.nn.Module`` called as ``loss(logits, targets, pixel_weights=None)``
with logits (N, C, H, W) and integer targets (N, H, W), like the terms of
:class:`~geoseg.train.losses.CombinedLoss`; ``pixel_weights`` is accepted and
unused. Pixels labelled :data:`~geoseg.io.labels.IGNORE` (no data) count nowhere:
not in a value, a normalization or a gradient, and not as a boundary of a
distance map. A batch whose pixels are all ignored gives 0 (with a gradient).

- ``topk``: cross-entropy averaged over the hardest 10 % of the valid pixels of
  the batch (the top-k loss of Wu et al., "Bridging category-level and
  instance-level semantic image segmentation", 2016, as used by nnU-Net), after
  a warm-up: plain cross-entropy for the first 10 % of training, then the share
  of pixels kept falls linearly to 10 % at half-way, as the bootstrapped
  cross-entropy of Cheng et al. (STCN, NeurIPS 2021; 20k → 70k of 150k steps).
  From random weights every pixel is hard, and the hardest 10 % alone train slowly.
- ``boundary``: Kervadec et al., "Boundary loss for highly unbalanced
  segmentation", MIDL 2019: softmax probabilities times the signed distance map
  of each class's labels. Its weight rises linearly with training progress from
  1 % to the job's weight, the paper's rebalancing (§3.4: the regional loss
  first, the boundary term growing by 0.01 per epoch), so the distance term
  (tens of pixels) does not drown the regional loss of an untrained model.

The two schedules read ``progress`` (0 at the first step, 1 at the last), which
the training loop sets through :meth:`CombinedLoss.set_progress
<geoseg.train.losses.CombinedLoss.set_progress>`; it is 1 by default, so a loss
built on its own is the paper's final loss.
- ``hausdorff``: Karimi & Salcudean, "Reducing the Hausdorff Distance in Medical
  Image Segmentation with Convolutional Neural Networks", IEEE TMI 2019: the
  distance-transform (HD_DT) loss, alpha = 2.
- ``sensitivity_specificity``: Brosch et al., "Deep convolutional encoder
  networks for multiple sclerosis lesion segmentation", MICCAI 2015, r = 0.05.
- ``iou_balanced``: the IoU-balanced classification loss of Wu, Li & Wang,
  "IoU-balanced loss functions for single-stage object detection" (2019/2022),
  with the region IoU of each class in place of the box IoU, eta = 1.5.
- ``distance_ce``: Calivà et al., "Distance Map Loss Penalty Term for Semantic
  Segmentation", MIDL 2019: cross-entropy weighted up near label boundaries.

Distance maps are Euclidean, in pixels, computed per sample on the CPU with
``scipy.ndimage.distance_transform_edt``; the crop edge is not a boundary.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from geoseg.io.labels import IGNORE

__all__ = [
    "BoundaryLoss",
    "DistancePenalizedCrossEntropy",
    "HausdorffDTLoss",
    "IoUBalancedCrossEntropy",
    "SensitivitySpecificityLoss",
    "TopKCrossEntropy",
    "class_distances",
]

TOPK_FRACTION = 0.10
TOPK_WARMUP = (0.10, 0.50)  # progress where plain CE ends and where the share reaches TOPK_FRACTION
BOUNDARY_START = 0.01  # the boundary term's share of its weight at the first step
SENSITIVITY_R = 0.05  # Brosch et al. (2015): a small r, since lesions are a tiny share of the pixels
HAUSDORFF_ALPHA = 2.0
IOU_ETA = 1.5  # Wu et al.'s default for the classification loss


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """0 that still backpropagates (an all-ignored batch)."""
    return logits.sum() * 0.0


def _one_hot(targets: torch.Tensor, num_classes: int, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, C, H, W) one-hot of the targets, all zeros on ignored pixels."""
    onehot = F.one_hot(targets.masked_fill(~valid, 0), num_classes).permute(0, 3, 1, 2)
    return onehot.to(dtype) * valid.unsqueeze(1).to(dtype)


def _mask_distances(fg: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, outside)`` distances of one class mask of one sample.

    ``inside[x]``: on ``fg``, distance to the nearest valid pixel not in ``fg``;
    ``outside[x]``: on valid pixels not in ``fg``, distance to the nearest ``fg``
    pixel; 0 elsewhere. Ignored pixels are neither ``fg`` nor targets of a
    distance, so no-data never makes a boundary. Without a boundary (``fg`` empty
    or covering every valid pixel) both are 0.
    """
    rest = valid & ~fg
    if not fg.any() or not rest.any():
        zeros = np.zeros(fg.shape)
        return zeros, zeros
    # edt gives each non-zero pixel its distance to the nearest zero pixel.
    inside = ndimage.distance_transform_edt(~rest) * fg
    outside = ndimage.distance_transform_edt(~fg) * rest
    return inside, outside


def class_distances(labels: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, outside)`` (N, C, H, W) float64 of :func:`_mask_distances`, per sample and class."""
    t = labels.detach().cpu().numpy()
    valid = t != IGNORE
    inside = np.zeros((t.shape[0], num_classes, *t.shape[1:]))
    outside = np.zeros_like(inside)
    for n in range(t.shape[0]):
        for c in range(num_classes):
            inside[n, c], outside[n, c] = _mask_distances(t[n] == c, valid[n])
    return inside, outside


def _tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)


class TopKCrossEntropy(torch.nn.Module):
    """Cross-entropy over the hardest ``fraction`` of the valid pixels of the batch.

    ``k = max(1, ceil(fraction * n_valid))`` and the loss is the mean of the
    ``k`` largest per-pixel cross-entropies (Wu et al., 2016; nnU-Net's TopK10):
    easy pixels, the bulk of a large homogeneous class, stop swamping the rest.
    """

    def __init__(self, fraction: float = TOPK_FRACTION, warmup: tuple[float, float] = TOPK_WARMUP):
        super().__init__()
        if not 0 < fraction <= 1:
            raise ValueError(f"topk fraction must be in (0, 1] (got {fraction!r})")
        if not 0 <= warmup[0] < warmup[1] <= 1:
            raise ValueError(f"topk warmup must be 0 <= start < end <= 1 (got {warmup!r})")
        self.fraction, self.warmup = fraction, warmup
        self.progress = 1.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def current_fraction(self) -> float:
        """The share of valid pixels kept at this point of training (1 during the warm-up's start)."""
        start, end = self.warmup
        ramp = min(max((self.progress - start) / (end - start), 0.0), 1.0)
        return 1.0 + (self.fraction - 1.0) * ramp

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        values = per_pixel[targets != IGNORE]
        if values.numel() == 0:
            return _zero(logits)
        # round(): 0.1 * 30 is 3.0000000000000004 in floating point, whose ceil would be 4.
        k = max(1, math.ceil(round(self.current_fraction() * values.numel(), 9)))
        return values.topk(k).values.mean()


class BoundaryLoss(torch.nn.Module):
    """Kervadec et al. (MIDL 2019) boundary loss: ``mean over valid pixels and classes of phi_c * s_c``.

    ``s_c`` is the softmax probability of class ``c`` and ``phi_c`` the signed
    distance map of its labels, as in the authors' ``one_hot2dist``: outside the
    class the distance to its nearest pixel (> 0), inside ``-(d - 1)`` with ``d``
    the distance to the nearest valid pixel of another class (so 0 on the
    boundary's inner row, negative deeper in), and 0 for a class with no
    boundary in the sample. The minimum puts all probability inside each class.
    The value can be negative; pair it with a regional loss (``ce``, ``dice``),
    as the paper does. It is scaled by :meth:`current_scale`, the rebalancing ramp.
    """

    def __init__(self) -> None:
        super().__init__()
        self.progress = 1.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def current_scale(self) -> float:
        """The share of the job's weight at this point of training: BOUNDARY_START at 0, 1 at the end."""
        return BOUNDARY_START + (1.0 - BOUNDARY_START) * min(max(self.progress, 0.0), 1.0)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        valid = targets != IGNORE
        n_valid = int(valid.sum())
        if n_valid == 0:
            return _zero(logits)
        inside, outside = class_distances(targets, logits.shape[1])
        phi = _tensor(outside - np.where(inside > 0, inside - 1.0, 0.0), logits)
        probs = logits.softmax(1) * valid.unsqueeze(1)
        return self.current_scale() * (phi * probs).sum() / (n_valid * logits.shape[1])


class HausdorffDTLoss(torch.nn.Module):
    """Karimi & Salcudean (IEEE TMI 2019) distance-transform Hausdorff loss, one-vs-rest per class.

    ``mean over valid pixels and classes of (s_c - y_c)**2 * (d_p**alpha + d_q**alpha)``
    with ``s_c`` the softmax probability, ``y_c`` the one-hot label, ``d_q`` the
    unsigned distance of each pixel to the boundary of class ``c``'s labels and
    ``d_p`` the same for the predicted mask (``argmax == c``, held constant as
    in the paper). Distances are ``inside + outside`` of :func:`class_distances`
    (1 on both sides next to a boundary); a mask with no boundary has 0.
    """

    def __init__(self, alpha: float = HAUSDORFF_ALPHA):
        super().__init__()
        self.alpha = alpha

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        valid = targets != IGNORE
        n_valid = int(valid.sum())
        if n_valid == 0:
            return _zero(logits)
        num_classes = logits.shape[1]
        with torch.no_grad():
            predicted = logits.argmax(1).masked_fill(~valid, IGNORE)
        q_in, q_out = class_distances(targets, num_classes)
        p_in, p_out = class_distances(predicted, num_classes)
        dq, dp = q_in + q_out, p_in + p_out
        distance = _tensor(dp**self.alpha + dq**self.alpha, logits)
        error = (logits.softmax(1) - _one_hot(targets, num_classes, valid, logits.dtype)) ** 2
        return (error * valid.unsqueeze(1) * distance).sum() / (n_valid * num_classes)


class SensitivitySpecificityLoss(torch.nn.Module):
    """Brosch et al. (MICCAI 2015) sensitivity-specificity loss, one-vs-rest, mean over classes.

    Per class, over the valid pixels of the batch, with ``S`` the one-hot label
    and ``p`` the softmax probability:
    ``r * sum((S - p)**2 * S) / sum(S) + (1 - r) * sum((S - p)**2 * (1 - S)) / sum(1 - S)``.
    A term whose denominator is 0 (class absent, or everywhere) is 0.
    """

    def __init__(self, r: float = SENSITIVITY_R):
        super().__init__()
        self.r = r

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        valid = (targets != IGNORE).unsqueeze(1).to(logits.dtype)
        positive = _one_hot(targets, logits.shape[1], targets != IGNORE, logits.dtype)
        negative = (1.0 - positive) * valid
        error = (positive - logits.softmax(1)) ** 2
        tiny = torch.finfo(logits.dtype).tiny  # a zero denominator comes with a zero numerator
        dims = (0, 2, 3)
        sensitivity = (error * positive).sum(dims) / positive.sum(dims).clamp_min(tiny)
        specificity = (error * negative).sum(dims) / negative.sum(dims).clamp_min(tiny)
        return (self.r * sensitivity + (1.0 - self.r) * specificity).mean()


class IoUBalancedCrossEntropy(torch.nn.Module):
    """IoU-balanced cross-entropy: Wu, Li & Wang's IoU-balanced classification loss for segmentation.

    Wu et al. weight each positive example by ``iou**eta``, renormalized so that
    the total loss is unchanged, with the IoU held constant: the value stays
    that of the plain loss while the gradient moves towards well-localized
    examples. Here, for sample ``n``, each valid pixel ``x`` of label ``c`` has
    ``iou(x) = |P ∩ G| / |P ∪ G|`` of the predicted region ``P = {argmax == c}``
    and the label region ``G = {label == c}`` of that sample (valid pixels
    only), and::

        w(x) = iou(x)**eta * sum(ce) / sum(iou**eta * ce)      (no gradient)
        loss = sum(w * ce) / n_valid

    so the value equals the mean cross-entropy. Pixels of a class the network
    does not find at all (IoU 0) get no gradient, as in the paper; pair it with
    ``ce`` so such classes are still learned. With no overlap anywhere, ``w = 1``.
    """

    def __init__(self, eta: float = IOU_ETA):
        super().__init__()
        self.eta = eta

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        valid = targets != IGNORE
        n_valid = int(valid.sum())
        if n_valid == 0:
            return _zero(logits)
        with torch.no_grad():
            num_classes = logits.shape[1]
            label = _one_hot(targets, num_classes, valid, torch.float64)
            predicted = _one_hot(logits.argmax(1), num_classes, valid, torch.float64)
            inter = (label * predicted).sum((2, 3))
            union = (label + predicted - label * predicted).sum((2, 3))
            iou = inter / union.clamp_min(1.0)  # (N, C)
            weights = (label * iou[:, :, None, None] ** self.eta).sum(1).to(per_pixel.dtype)
            ce = per_pixel.detach()
            balanced = (weights * ce).sum()
            weights = weights * ce.sum() / balanced if balanced > 0 else valid.to(per_pixel.dtype)
        return (weights * per_pixel).sum() / n_valid


class DistancePenalizedCrossEntropy(torch.nn.Module):
    """Calivà et al. (MIDL 2019) distance-map penalty: cross-entropy weighted up near label boundaries.

    ``d(x)`` is the distance of valid pixel ``x`` to the nearest valid pixel of
    another class (1 next to a boundary); the penalty is the inverted map
    ``phi = max(d) - d`` of the sample (0 where it has one class only), and::

        loss = sum((1 + phi) * ce) / sum(1 + phi)          (valid pixels)

    The weighted mean (rather than the paper's plain mean) keeps the value on
    the cross-entropy's scale whatever the crop size, since ``phi`` is in pixels.
    """

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        valid = (targets != IGNORE).cpu().numpy()
        inside, _outside = class_distances(targets, logits.shape[1])
        distance = inside.sum(1)  # only the channel of the pixel's own label is non-zero
        top = distance.max(axis=(1, 2), keepdims=True)
        phi = np.where(valid & (top > 0), top - distance, 0.0)
        weights = _tensor((1.0 + phi) * valid, per_pixel)
        total = weights.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)
        return (weights * per_pixel).sum() / total
