"""The Gated-SCNN training loss: boundary supervision and the dual-task regularisers.

Takikawa, Acuna, Jampani & Fidler, "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation", ICCV 2019,
arXiv:1907.05740, §3.3. :class:`GatedSCNNLoss` takes the segmentation logits (N, C, H, W) that
:class:`geoseg.models.gatedscnn.GatedSCNN` returns, the boundary logits (N, 1, H, W) it keeps on
``model.edge_logits`` in training mode, and integer targets (N, H, W). Its value is

    seg_weight · CE + edge_weight · BCE + dual_weight · L_reg→ + attention_weight · L_reg←

The paper's weights: CE 1, BCE 20, L_reg→ 1, L_reg← 1 (the paper numbers them λ2, λ1, λ3, λ4; the authors' code
multiplies the BCE by 20). ``seg_weight`` defaults to 0 because geoseg's own loss already holds the
segmentation term; set it to 1 to use this module alone.

- Ground-truth boundaries (:func:`boundary_map`): a pixel is a boundary pixel when a 4-neighbour inside the crop
  has another label (so both sides of a label change are). Pixels labelled ``ignore_index`` and their
  4-neighbours count nowhere: not in a value, a normalisation or a gradient. The authors' code derives
  boundaries from one-hot masks with a 2-pixel radius instead.
- BCE: class-balanced binary cross-entropy of the boundary logits, as HED: positives weighted
  β = |negatives| / |valid pixels|, negatives 1 − β, counted over the batch and averaged over the valid pixels
  (the authors' code averages over all pixels, ignored ones included, and applies it to sigmoid outputs twice).
- L_reg→ (dual-task regulariser on the segmentation): ``|ζ − ζ̂|`` averaged over the pixels where ζ > 1e-8,
  plus the same averaged over the ground-truth boundary pixels, half each, as the authors' code. ζ̂ is the
  ground-truth boundary map (0/1). ζ is a boundary map of the softmax probabilities instead of the paper's
  Gumbel-softmax argmax, smoothed and differentiated then normalised by its maximum: at each pixel the largest,
  over its 4-neighbours, total-variation distance ½ Σ_k |p_k(x) − p_k(y)| between the class distributions.
  It lies in [0, 1], is local (no per-image maximum), and on one-hot probabilities it is exactly ζ̂.
- L_reg← (consistency of the segmentation with the predicted boundaries): cross-entropy of the segmentation
  averaged over the labelled pixels where sigmoid(boundary logit) > 0.8 (the paper's threshold); the mask
  carries no gradient, as in the authors' code. Plain cross-entropy, not the code's per-image class weights.

Terms with no pixel to average over (e.g. an all-ignored batch) are 0, with a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DUAL_EPS", "EDGE_THRESHOLD", "GatedSCNNLoss", "boundary_map", "softmax_boundary"]

EDGE_THRESHOLD = 0.8  # the paper's threshold on sigmoid(boundary logits) for L_reg←
DUAL_EPS = 1e-8  # the authors' code: pixels with ζ above this are predicted-boundary pixels of L_reg→


def _pair_max(horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """Per pixel, the largest value of the pairs it belongs to (values ≥ 0; (…, H, W-1) and (…, H-1, W) in)."""
    out = torch.maximum(F.pad(horizontal, (0, 1)), F.pad(horizontal, (1, 0)))
    return torch.maximum(out, torch.maximum(F.pad(vertical, (0, 0, 0, 1)), F.pad(vertical, (0, 0, 1, 0))))


def boundary_map(targets: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth boundaries and the pixels where they are defined, both bool (N, H, W).

    ``valid``: neither the pixel nor a 4-neighbour is ``ignore_index``. ``boundary``: valid, and a 4-neighbour
    has another label. Pixels outside the crop are no neighbours.
    """
    ignored = targets == ignore_index
    h_ignored = ignored[..., :, 1:] | ignored[..., :, :-1]
    v_ignored = ignored[..., 1:, :] | ignored[..., :-1, :]
    valid = ~(ignored | _pair_max(h_ignored.float(), v_ignored.float()).bool())
    h_differs = (targets[..., :, 1:] != targets[..., :, :-1]).float()
    v_differs = (targets[..., 1:, :] != targets[..., :-1, :]).float()
    return _pair_max(h_differs, v_differs).bool() & valid, valid


def softmax_boundary(logits: torch.Tensor) -> torch.Tensor:
    """ζ (N, H, W): the largest total-variation distance of a pixel's softmax to its 4-neighbours', in [0, 1]."""
    p = logits.softmax(dim=1)
    h = 0.5 * (p[..., :, 1:] - p[..., :, :-1]).abs().sum(dim=1)
    v = 0.5 * (p[..., 1:, :] - p[..., :-1, :]).abs().sum(dim=1)
    return _pair_max(h, v)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (still backpropagating) where nothing is masked in."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def _pixel_ce(logits: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets.masked_fill(~labelled, 0), reduction="none")


class GatedSCNNLoss(torch.nn.Module):
    """Gated-SCNN's joint loss (see the module doc); ``terms`` gives the four unweighted terms.

    Args:
        seg_weight: cross-entropy of the segmentation (paper: 1; 0 when geoseg's loss holds it).
        edge_weight: class-balanced BCE of the boundary logits (paper: 20).
        dual_weight: L_reg→, segmentation boundaries against ground-truth boundaries (paper: 1).
        attention_weight: L_reg←, cross-entropy where the predicted boundary is confident (paper: 1).
        edge_threshold: sigmoid(boundary logits) above which L_reg← counts a pixel (paper: 0.8).
    """

    def __init__(
        self,
        seg_weight: float = 0.0,
        edge_weight: float = 20.0,
        dual_weight: float = 1.0,
        attention_weight: float = 1.0,
        edge_threshold: float = EDGE_THRESHOLD,
    ):
        super().__init__()
        self.weights = {"seg": seg_weight, "edge": edge_weight, "dual": dual_weight, "attention": attention_weight}
        for name, weight in self.weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise ValueError(f"GatedSCNNLoss {name}_weight must be a finite number ≥ 0 (got {weight!r})")
        if (
            isinstance(edge_threshold, bool)
            or not isinstance(edge_threshold, (int, float))
            or not 0 < edge_threshold < 1
        ):
            raise ValueError(f"GatedSCNNLoss edge_threshold must lie strictly between 0 and 1 (got {edge_threshold!r})")
        self.edge_threshold = float(edge_threshold)

    @staticmethod
    def _check(logits: torch.Tensor, edge_logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.dim() != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"logits (N, C, H, W) {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
        if edge_logits.shape != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(f"edge_logits must be (N, 1, H, W) like the logits (got {tuple(edge_logits.shape)})")

    def terms(
        self, logits: torch.Tensor, edge_logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms ``seg``, ``edge``, ``dual`` and ``attention`` (scalars)."""
        self._check(logits, edge_logits, targets)
        labelled = targets != ignore_index
        boundary, valid = boundary_map(targets, ignore_index)
        ce = _pixel_ce(logits, targets, labelled)

        edge = edge_logits[:, 0]
        positives, negatives = boundary.sum().to(edge.dtype), (valid & ~boundary).sum().to(edge.dtype)
        beta = negatives / (positives + negatives).clamp(min=1)  # in the logits' precision
        weight = torch.where(boundary, beta, 1 - beta)
        bce = F.binary_cross_entropy_with_logits(edge, boundary.to(edge.dtype), reduction="none")

        zeta = softmax_boundary(logits)
        error = (zeta - boundary.to(zeta.dtype)).abs()
        predicted = valid & (zeta.detach() > DUAL_EPS)
        dual = 0.5 * _masked_mean(error, predicted) + 0.5 * _masked_mean(error, boundary)

        confident = labelled & (torch.sigmoid(edge.detach()) > self.edge_threshold)
        return {
            "seg": _masked_mean(ce, labelled),
            "edge": _masked_mean(weight * bce, valid),
            "dual": dual,
            "attention": _masked_mean(ce, confident),
        }

    def forward(
        self, logits: torch.Tensor, edge_logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255
    ) -> torch.Tensor:
        """The weighted sum of the terms: a scalar."""
        terms = self.terms(logits, edge_logits, targets, ignore_index)
        return sum((self.weights[name] * value for name, value in terms.items()), logits.new_zeros(()))
