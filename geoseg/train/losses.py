"""Training losses by name, combined with weights from the job file.

A job names its loss as ``{name: weight}``, e.g. ``{"ce": 1.0, "dice": 1.0}``;
:func:`build_loss` turns that into one :class:`CombinedLoss` that returns the
weighted sum. Every loss skips pixels labelled :data:`~geoseg.io.labels.IGNORE`
(no data): they add nothing to the value, the normalization or the gradient.

The soft overlap losses come from segmentation-models-pytorch (``smp.losses``,
``mode="multiclass"``); the cross-entropy family is ``F.cross_entropy`` with
per-pixel weights. Two smp losses mishandle a batch whose pixels are all
ignored (``FocalLoss`` returns NaN, ``LovaszLoss`` an empty tensor instead of
a scalar); they are wrapped to return a zero that still backpropagates.

The weights of ``weighted_ce`` and the per-pixel weight maps of ``border_ce``
come from :mod:`geoseg.train.loss_weights`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from geoseg.errors import JobConfigError
from geoseg.io.labels import IGNORE
from geoseg.train.classic_losses import (
    BoundaryLoss,
    DistancePenalizedCrossEntropy,
    HausdorffDTLoss,
    IoUBalancedCrossEntropy,
    SensitivitySpecificityLoss,
    TopKCrossEntropy,
)
from geoseg.train.gscnn_loss import GatedSCNNLoss

__all__ = [
    "LOSSES",
    "CombinedLoss",
    "build_loss",
]

LOSSES = (
    "ce",
    "weighted_ce",
    "border_ce",
    "dice",
    "focal",
    "lovasz",
    "jaccard",
    "tversky",
    # the classic losses of geoseg.train.classic_losses
    "topk",
    "boundary",
    "hausdorff",
    "sensitivity_specificity",
    "iou_balanced",
    "distance_ce",
    # Gated-SCNN's boundary loss and dual-task regularisers (geoseg.train.gscnn_loss): a gatedscnn model only
    "gscnn_edge",
)
# Built without arguments from geoseg.train.classic_losses; their defaults are the papers' settings.
_CLASSIC = {
    "topk": TopKCrossEntropy,
    "boundary": BoundaryLoss,
    "hausdorff": HausdorffDTLoss,
    "sensitivity_specificity": SensitivitySpecificityLoss,
    "iou_balanced": IoUBalancedCrossEntropy,
    "distance_ce": DistancePenalizedCrossEntropy,
}

# Tversky weights of false positives (alpha) and false negatives (beta). smp's
# defaults (0.5, 0.5) make it the Dice loss again; 0.3/0.7 favours recall of
# small classes, as in Salehi et al. (2017).
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7
FOCAL_GAMMA = 2.0

# ---------------------------------------------------------------------- losses


class _CrossEntropy(torch.nn.Module):
    """Cross-entropy as a weighted mean over the non-ignored pixels.

    ``sum(w * ce) / sum(w)``: with no weights this is ``F.cross_entropy``'s
    mean, with class weights it is its ``weight=`` mean, and a border-weighted
    batch keeps the same scale whatever the share of border pixels. The sum of
    weights is clamped so an all-ignored batch gives 0, not 0/0.
    """

    class_weights: torch.Tensor | None  # a buffer (register_buffer), moved with the module

    def __init__(self, class_weights: torch.Tensor | None = None, use_pixel_weights: bool = False):
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.use_pixel_weights = use_pixel_weights

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        per_pixel = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        valid = targets != IGNORE
        weights = valid.to(per_pixel.dtype)
        if self.class_weights is not None:
            # .to(): the caller may leave this module on the CPU while the logits are on a GPU.
            table = self.class_weights.to(per_pixel.device, per_pixel.dtype)
            weights = weights * table[targets.masked_fill(~valid, 0)]
        if self.use_pixel_weights:
            if pixel_weights is None:
                raise ValueError(
                    "border_ce needs pixel_weights (N, H, W); build them per crop with unet_border_weights"
                )
            if pixel_weights.shape != targets.shape:
                raise ValueError(
                    f"pixel_weights shape {tuple(pixel_weights.shape)} does not match targets {tuple(targets.shape)}"
                )
            weights = weights * pixel_weights.to(per_pixel.dtype)
        total = weights.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)
        return (weights * per_pixel).sum() / total


class _SkipAllIgnored(torch.nn.Module):
    """Run an smp loss, but give 0 (with a gradient) when every pixel is ignored.

    smp's FocalLoss averages over an empty selection (NaN) and LovaszLoss returns
    an empty (0, C) tensor in that case; both handle partly ignored batches fine.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not (targets != IGNORE).any():
            return logits.sum() * 0.0
        return self.loss(logits, targets)


class _Smp(torch.nn.Module):
    """Adapt an smp loss to the ``(logits, targets, pixel_weights)`` call."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.loss(logits, targets)


def _make(name: str, class_weights: torch.Tensor | None) -> torch.nn.Module:
    kw = {"mode": "multiclass", "ignore_index": IGNORE}
    if name == "ce":
        return _CrossEntropy()
    if name == "weighted_ce":
        return _CrossEntropy(class_weights)
    if name == "border_ce":  # the class balance is already in the pixel weights (w_c)
        return _CrossEntropy(use_pixel_weights=True)
    if name == "dice":
        return _Smp(smp.losses.DiceLoss(**kw))
    if name == "jaccard":
        return _Smp(smp.losses.JaccardLoss(**kw))
    if name == "tversky":
        return _Smp(smp.losses.TverskyLoss(alpha=TVERSKY_ALPHA, beta=TVERSKY_BETA, **kw))
    if name == "focal":
        return _SkipAllIgnored(smp.losses.FocalLoss(gamma=FOCAL_GAMMA, **kw))
    if name == "lovasz":
        return _SkipAllIgnored(smp.losses.LovaszLoss(**kw))
    if name in _CLASSIC:
        return _CLASSIC[name]()
    if name == "gscnn_edge":
        return GatedSCNNLoss()  # the paper's weights; the segmentation's own CE is the job's ce term
    raise AssertionError(name)  # names are validated before


class CombinedLoss(torch.nn.Module):
    """Weighted sum of named losses; build it with :func:`build_loss`.

    Call it as ``loss(logits, targets, pixel_weights=None, edge_logits=None)`` with logits
    (N, C, H, W), integer targets (N, H, W), when :attr:`needs_pixel_weights`
    per-pixel weights (N, H, W) from :func:`unet_border_weights`, and with ``gscnn_edge``
    Gated-SCNN's boundary logits (N, 1, H, W). Returns a scalar tensor.

    Attributes:
        weights: ``{name: weight}`` of the terms summed (zero weights dropped).
        needs_pixel_weights: True when ``border_ce`` is a term.
        needs_class_weights: True when ``weighted_ce`` or ``border_ce`` is a term
            (``border_ce`` takes them through its pixel weights' ``w_c``).
    """

    def __init__(self, weights: Mapping[str, float], num_classes: int, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.weights = dict(weights)
        self.num_classes = num_classes
        self.terms = torch.nn.ModuleDict({name: _make(name, class_weights) for name in self.weights})
        self.needs_pixel_weights = "border_ce" in self.weights
        self.needs_class_weights = bool({"weighted_ce", "border_ce"} & self.weights.keys())

    def set_progress(self, progress: float) -> None:
        """Tell the scheduled terms (``topk``, ``boundary``) how far training is: 0 first step, 1 last."""
        for term in self.terms.values():
            if isinstance(term, (TopKCrossEntropy, BoundaryLoss)):
                term.set_progress(progress)

    def parts(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        pixel_weights: torch.Tensor | None = None,
        edge_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, by name (for logging)."""
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (N, {self.num_classes}, H, W) (got {tuple(logits.shape)})")
        if targets.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)}")
        # Sums over a whole batch of pixels lose too much precision in bf16/fp16.
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        targets = targets.long()
        if "gscnn_edge" in self.terms and edge_logits is None:
            raise ValueError("gscnn_edge needs the boundary logits a gatedscnn model keeps in training mode")
        return {
            name: term(logits, edge_logits.float(), targets, IGNORE)  # type: ignore[union-attr]
            if name == "gscnn_edge"
            else term(logits, targets, pixel_weights)
            for name, term in self.terms.items()
        }

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        pixel_weights: torch.Tensor | None = None,
        edge_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = self.parts(logits, targets, pixel_weights, edge_logits)
        total = sum(self.weights[name] * value for name, value in parts.items())
        # build_loss keeps at least one term, so this is a tensor, never sum()'s empty start 0.
        assert isinstance(total, torch.Tensor)
        return total


def _check_spec(spec) -> dict[str, float]:
    """Validate ``train.loss``; raise one JobConfigError listing every problem."""
    choices = ", ".join(LOSSES)
    if not isinstance(spec, Mapping) or not spec:
        raise JobConfigError(
            f"train.loss: must map loss names to weights, e.g. {{ce: 1.0, dice: 1.0}} "
            f"(got {spec!r}); choose from {choices}"
        )
    problems, weights = [], {}
    for name, weight in spec.items():
        if name not in LOSSES:
            close = difflib.get_close_matches(str(name), LOSSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"train.loss: unknown loss {name!r}{hint}; choose from {choices}")
            continue
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight) or weight < 0:
            problems.append(f"train.loss.{name}: weight must be a number ≥ 0 (got {weight!r})")
            continue
        weights[name] = float(weight)
    if not problems and sum(weights.values()) == 0:
        problems.append(f"train.loss: weights must not all be 0 (got {dict(spec)!r})")
    if problems:
        raise JobConfigError(problems)
    return {name: w for name, w in weights.items() if w > 0}


def build_loss(
    spec: Mapping[str, float], *, num_classes: int, class_weights: Sequence[float] | None = None
) -> CombinedLoss:
    """Build the training loss the job names, e.g. ``{"ce": 1.0, "dice": 1.0}``.

    Names (:data:`LOSSES`): ``ce``; ``weighted_ce`` (class weights, see
    :func:`median_frequency_weights`); ``border_ce`` (per-pixel weights, see
    :func:`unet_border_weights`); ``dice``, ``jaccard``, ``tversky``
    (alpha=0.3, beta=0.7), ``focal`` (gamma=2), ``lovasz`` (Lovász-Softmax),
    from ``smp.losses`` in multiclass mode; ``topk``, ``boundary``, ``hausdorff``,
    ``sensitivity_specificity``, ``iou_balanced``, ``distance_ce`` from
    :mod:`geoseg.train.classic_losses`. Terms with weight 0 are left out.

    Note that smp's multiclass FocalLoss is a one-vs-rest *sigmoid* focal loss
    averaged over classes, and its Dice/Jaccard/Tversky average over all C
    classes with 0 for those absent from the batch.

    Args:
        spec: ``{name: weight}``, weights ≥ 0 and not all 0.
        num_classes: number of classes C (the logits' channels).
        class_weights: (C,) weights, needed for ``weighted_ce``.

    Raises:
        JobConfigError: unknown names or bad weights (all problems at once).
        ValueError: ``weighted_ce`` without ``class_weights``, or a wrong length.
    """
    weights = _check_spec(spec)
    tensor = None
    if class_weights is not None:
        tensor = torch.as_tensor(np.asarray(class_weights, np.float32))
        if tensor.shape != (num_classes,) or (tensor < 0).any() or not torch.isfinite(tensor).all():
            raise ValueError(f"class_weights must be {num_classes} numbers ≥ 0 (got {list(class_weights)!r})")
    if "weighted_ce" in weights and tensor is None:
        raise ValueError("weighted_ce needs class_weights; compute them with median_frequency_weights")
    return CombinedLoss(weights, num_classes, tensor)
