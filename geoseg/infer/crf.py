"""Fully connected CRF post-processing of a tile's logits, before argmax.

The model is the fully connected CRF of Krähenbühl & Koltun, "Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials" (NIPS 2011, arXiv:1210.5644), as DeepLab v1/v2
apply it to a network's scores: unary −logits, a Potts compatibility, and the pairwise kernel

    k(i, j) = w1·exp(−|p_i−p_j|²/2θα² − |I_i−I_j|²/2θβ²) + w2·exp(−|p_i−p_j|²/2θγ²)

(the bilateral "appearance" kernel plus the spatial "smoothness" kernel), solved by their
mean-field iterations: Q_i ← softmax(logits_i + Σ_m w_m·Σ_{j≠i} k̃_m(i, j)·Q_j). As in Krähenbühl's
released code, which DeepLab runs, each kernel is normalised per pixel, k̃_m(i, j) = k_m(i, j) /
Σ_{j'≠i} k_m(i, j'), so w1 and w2 weigh neighbourhood averages and DeepLab's weights keep their
meaning (the paper's formula leaves the sum unnormalised, which with θα = 80 px would drown the
unary). The Potts term's part that does not depend on the label cancels in the softmax.

Approximation: the messages are summed over a ``window``×``window`` neighbourhood, not over all
pixels, as in ConvCRF (Teichmann & Cipolla, "Convolutional CRFs for Semantic Segmentation",
BMVC 2019, arXiv:1805.04777). Pairs farther apart than ``window // 2`` pixels in x or y are
dropped, from the sums and from the normalisation. Krähenbühl & Koltun instead sum over all
pixels with a permutohedral lattice, itself an approximation; no maintained package for it
installs here from a wheel (pydensecrf 1.0rc3, 2018, fails to build on this Python; pydensecrf2
1.1 is an sdist that needs a C++ compiler; SimpleCRF's last release is from 2021). The window
runs in plain torch on the tile's own device, deterministically, and has a finite reach, so
``crf_halo(params)`` pixels of context make tiled results equal whole-image results. It sums
ConvCRF's unfolded window as shifted slices of the padded tile, one multiply-add per offset,
which on CPU is ~9× faster than unfold's copies. With the defaults the bilateral kernel's
spatial factor is almost 1 inside the window, so there the colour term decides (as in ConvCRF).

``exact_dense_crf`` is the same mean field with the full kernel, for tiny images (tests).

Bands: the bilateral kernel compares all the image's bands (Euclidean distance over B bands),
in the image's units, which should be scaled to 0–255 as ``bilateral_sigma_rgb`` assumes
(uint8 imagery as it is). More bands give larger distances (≈ √(B/3) times those of RGB for
similar per-band differences); raise ``bilateral_sigma_rgb`` accordingly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CrfParams", "crf_halo", "dense_crf", "exact_dense_crf"]

CHUNK_BYTES = 64 << 20  # working set of one row chunk of the message passing
CACHE_BYTES = 192 << 20  # the pairwise kernels are kept across iterations when they fit in this
EXACT_MAX_PIXELS = 4096
# exp(x) for x < −87 is subnormal and torch's CPU exp is ~50× slower there; exp(−80) ≈ 2e-35 is nil
# next to any real weight, and EPS below makes it nil for a pixel with no similar neighbour at all.
EXP_FLOOR = -80.0
EPS = 1e-20  # as in Krähenbühl's code: a pixel with no similar neighbour gets no message


@dataclass(frozen=True)
class CrfParams:
    """Parameters of the dense CRF; names follow Krähenbühl & Koltun (θ, w) and ConvCRF (window).

    Defaults: ``spatial_sigma`` θγ = 3 px and ``spatial_weight`` w2 = 3 are DeepLab's fixed values
    (Chen et al., ICLR 2015 and TPAMI 2017, also those of Krähenbühl's example program);
    ``bilateral_weight`` w1 = 4 is DeepLab's cross-validated value; ``bilateral_sigma_xy``
    θα = 80 px and ``bilateral_sigma_rgb`` θβ = 13 are Krähenbühl's example program's and ConvCRF's
    defaults (DeepLab cross-validated θα/θβ per model on PASCAL VOC: 49/5 for v1 LargeFOV, 65–67/3 for v2);
    ``window`` 11 is ConvCRF's default filter size; ``iterations`` 5 (DeepLab ran 10; mean field
    mostly converges within a few, and each iteration widens ``crf_halo`` by window // 2).
    """

    iterations: int = 5
    spatial_sigma: float = 3.0
    spatial_weight: float = 3.0
    bilateral_sigma_xy: float = 80.0
    bilateral_sigma_rgb: float = 13.0
    bilateral_weight: float = 4.0
    window: int = 11


def crf_halo(params: CrfParams) -> int:
    """Pixels of context the windowed CRF needs so that a tile's centre equals the whole image's.

    Each iteration reaches ``window // 2`` pixels further, so errors from a cut edge travel
    ``iterations × (window // 2)`` pixels inwards and stop there.
    """
    return params.iterations * (params.window // 2)


def _check_inputs(logits: Tensor, image: Tensor) -> None:
    if logits.ndim != 4 or image.ndim != 4:
        raise ValueError(
            f"dense CRF: logits and image must be [N,C,H,W] and [N,B,H,W] (got {logits.shape}, {image.shape})"
        )
    if logits.shape[0] != image.shape[0] or logits.shape[2:] != image.shape[2:]:
        raise ValueError(f"dense CRF: logits {tuple(logits.shape)} and image {tuple(image.shape)} differ in N, H or W")


def _offset_dist2(window: int, device: torch.device) -> Tensor:
    """Squared pixel distance of each window offset, in unfold's order (row-major), shape [k², 1, 1]."""
    r = torch.arange(window, device=device, dtype=torch.float32) - window // 2
    return (r[:, None] ** 2 + r[None, :] ** 2).reshape(-1, 1, 1)


def _kernel_chunk(image_p: Tensor, valid_p: Tensor, y0: int, rows: int, params: CrfParams, dist2: Tensor) -> Tensor:
    """Normalised pairwise kernel for the ``rows`` output rows from ``y0``: [N, k², rows, W].

    Entry d is the weight of neighbour (y + d // k − k // 2, x + d % k − k // 2), unfold's order.
    ``image_p`` and ``valid_p`` (1 inside the tile) are padded by window // 2 on every side. Each
    kernel is divided by its sum over the pixel's real neighbours (j ≠ i), as in Krähenbühl's code,
    then weighted. One offset at a time, so the working set does not grow with the band count.
    """
    k, n = params.window, image_p.shape[0]
    r = k // 2
    width = image_p.shape[3] - 2 * r
    centre = image_p[:, :, y0 + r : y0 + r + rows, r : r + width]
    colour = torch.empty(n, k * k, rows, width, device=image_p.device, dtype=torch.float32)
    near_valid = torch.empty(1, k * k, rows, width, device=image_p.device, dtype=torch.float32)
    diff = torch.empty_like(centre)
    for d in range(k * k):
        dy, dx = divmod(d, k)
        torch.sub(image_p[:, :, y0 + dy : y0 + dy + rows, dx : dx + width], centre, out=diff)
        torch.sum(diff.square_(), dim=1, out=colour[:, d])
        near_valid[:, d] = valid_p[:, 0, y0 + dy : y0 + dy + rows, dx : dx + width]
    near_valid[:, (k * k) // 2] = 0.0
    colour.mul_(-0.5 / params.bilateral_sigma_rgb**2).sub_(dist2 * (0.5 / params.bilateral_sigma_xy**2))
    kernel = colour.clamp_(min=EXP_FLOOR).exp_().mul_(near_valid)
    kernel.mul_(params.bilateral_weight / (kernel.sum(dim=1, keepdim=True) + EPS))
    spatial = torch.exp(dist2 * (-0.5 / params.spatial_sigma**2)) * near_valid
    kernel += spatial.mul_(params.spatial_weight / (spatial.sum(dim=1, keepdim=True) + EPS))
    return kernel


def _chunk_rows(n: int, width: int, params: CrfParams, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    per_row = (n + 2) * params.window**2 * width * 4  # the kernel, the valid neighbours and the spatial kernel
    return max(1, CHUNK_BYTES // per_row)


def _message(q_p: Tensor, kernel: Tensor, y0: int, out: Tensor) -> None:
    """out[:, :, y0:y0+rows] = Σ_d kernel[:, d]·Q(neighbour d), by shifted slices of the padded Q."""
    rows, width = kernel.shape[2], kernel.shape[3]
    k = math.isqrt(kernel.shape[1])
    chunk = out[:, :, y0 : y0 + rows]
    chunk.zero_()
    for d in range(k * k):
        dy, dx = divmod(d, k)
        chunk.addcmul_(q_p[:, :, y0 + dy : y0 + dy + rows, dx : dx + width], kernel[:, d : d + 1])


def dense_crf(logits: Tensor, image: Tensor, params: CrfParams, *, chunk_rows: int | None = None) -> Tensor:
    """Refine ``logits`` [N,C,H,W] with the windowed fully connected CRF; returns log Q, [N,C,H,W].

    ``image`` [N,B,H,W] is the tile's imagery scaled to 0–255, any band count; ``argmax(dim=1)`` of
    the result gives the labels. Runs on ``logits.device`` in float32, deterministically. The
    kernels, window² floats a pixel, are made in chunks of ``chunk_rows`` rows (default: ~64 MiB)
    and kept across iterations when they all fit in 192 MiB (up to ~600² pixels with window 11),
    else remade each iteration. Pixels outside the tile are absent: give ``crf_halo`` of context.
    """
    _check_inputs(logits, image)
    unary = logits.to(torch.float32)
    if params.iterations == 0:
        return torch.log_softmax(unary, dim=1)
    n, _, h, w = unary.shape
    k, r = params.window, params.window // 2
    image_p = F.pad(image.to(device=unary.device, dtype=torch.float32), (r, r, r, r))
    valid_p = F.pad(torch.ones(1, 1, h, w, device=unary.device), (r, r, r, r))
    dist2 = _offset_dist2(k, unary.device)
    step = _chunk_rows(n, w, params, chunk_rows)
    cache: dict[int, Tensor] | None = {} if n * k * k * h * w * 4 <= CACHE_BYTES else None
    q = torch.softmax(unary, dim=1)
    message = torch.empty_like(unary)
    for it in range(params.iterations):
        q_p = F.pad(q, (r, r, r, r))
        for y0 in range(0, h, step):
            kernel = cache.get(y0) if cache is not None else None
            if kernel is None:
                kernel = _kernel_chunk(image_p, valid_p, y0, min(step, h - y0), params, dist2)
                if cache is not None:
                    cache[y0] = kernel
            _message(q_p, kernel, y0, message)
        scores = unary + message
        if it == params.iterations - 1:
            return torch.log_softmax(scores, dim=1)
        q = torch.softmax(scores, dim=1)
    raise AssertionError("unreachable")


def exact_dense_crf(logits: Tensor, image: Tensor, params: CrfParams) -> Tensor:
    """The same mean field with the full pixel × pixel kernel (no window); tiny images only (tests).

    ``params.window`` is ignored. Refuses images of more than 4096 pixels (the kernel is P² floats).
    """
    _check_inputs(logits, image)
    n, c, h, w = logits.shape
    if h * w > EXACT_MAX_PIXELS:
        raise ValueError(f"exact_dense_crf: {h}×{w} = {h * w} pixels; at most {EXACT_MAX_PIXELS} (use dense_crf)")
    unary = logits.to(torch.float32).reshape(n, c, h * w)
    if params.iterations == 0:
        return torch.log_softmax(unary, dim=1).reshape(n, c, h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=unary.device),
        torch.arange(w, dtype=torch.float32, device=unary.device),
        indexing="ij",
    )
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
    pos2 = torch.cdist(pos, pos) ** 2  # [P, P]
    feats = image.to(device=unary.device, dtype=torch.float32).reshape(n, -1, h * w).transpose(1, 2)
    diff = feats[:, :, None, :] - feats[:, None, :, :]  # [N, P, P, B]
    col2 = (diff**2).sum(dim=-1)
    off_diagonal = 1.0 - torch.eye(h * w, device=unary.device)
    bilateral = torch.exp(-pos2 / (2 * params.bilateral_sigma_xy**2) - col2 / (2 * params.bilateral_sigma_rgb**2))
    bilateral = bilateral * off_diagonal
    spatial = torch.exp(-pos2 / (2 * params.spatial_sigma**2)) * off_diagonal
    kernel = params.bilateral_weight * bilateral / (bilateral.sum(dim=2, keepdim=True) + EPS)
    kernel = kernel + params.spatial_weight * spatial / (spatial.sum(dim=1, keepdim=True) + EPS)
    q = torch.softmax(unary, dim=1)
    for _ in range(params.iterations):
        scores = unary + torch.bmm(q, kernel.transpose(1, 2))  # message_i = Σ_j kernel[i, j]·Q_j
        q = torch.softmax(scores, dim=1)
    return torch.log_softmax(scores, dim=1).reshape(n, c, h, w)
