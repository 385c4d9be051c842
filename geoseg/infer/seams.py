"""Seams measured: how often crop-mode tiles disagree with whole-image prediction, and the tiling that follows.

A crop-mode tile keeps its core; a core pixel at distance ``d`` from its core's edge sees
``halo + d`` pixels of context on that side. Where the model looks further, its label can differ
from what whole-image prediction gives it. That happens in a band along every core edge, whose
width depends on the halo only, not on the tile size. So one tiled pass per halo over a held-out
region measures the *edge depth* ``D(halo)``: pixels changed per pixel of core edge. For a scene
much larger than a tile, a core of side ``c = tile - 2·halo`` has ``4c`` pixels of edge over ``c²``
pixels, so the changed share is ``4·D/c``; the model sees ``(tile / c)²`` times the scene's pixels.
The candidate tilings of the model card are these figures; ``tiling: auto`` picks the cheapest
under ``tiling.max_seam_error`` that fits ``tiling.max_tile_memory_gb``.

The reference is whole-image prediction of the region mirror-padded (numpy's ``reflect``, as
prediction pads a scene), and every tile reads that same padded image, so the only difference
between the two is the context a tile cuts off. A halo at least the measured receptive-field
radius of an exact architecture (geoseg.models.context) changes nothing (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from geoseg.infer.device import first_argmax, forward
from geoseg.models.card import SeamCheck, SeamEdge, TilingFigure
from geoseg.tiling import mirror_indices

__all__ = [
    "CANDIDATE_TILE_SIZES",
    "MEASURE_CORE",
    "activation_bytes_per_pixel",
    "choose_tiling",
    "core_edge_pixels",
    "halos_to_measure",
    "max_tile_for_memory",
    "measure_edges",
    "seam_check",
    "tiling_figure",
    "tiling_figures",
]

# Tile sides the card gives figures for (those on the model's stride).
CANDIDATE_TILE_SIZES = (256, 384, 512, 640, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 4096)
MEASURE_CORE = 512  # core side of the measuring passes: a few tiles across a validation strip


def halos_to_measure(stride: int, exact_radius: int | None, cap: int = 256) -> list[int]:
    """Multiples of a step of ~32 px on the stride, up to ``cap`` (below an exact model's radius), then that radius.

    Each halo is one tiled pass over the region; the demo's four cost ~12 MPix through the model. The step
    is the stride's first multiple of at least 32 px: halos of 8 to 32 px tell nothing useful about a
    stride-8 model that looks hundreds of pixels away.
    """
    limit = min(cap, exact_radius - 1) if exact_radius else cap
    unit = stride * math.ceil(32 / stride)
    # An exact model gets a few small halos and its radius (which changes nothing); another one more steps.
    steps = (1, 2, 3, 4) if exact_radius else (1, 2, 3, 4, 6, 8)
    halos = [unit * k for k in steps if unit * k <= limit]
    if exact_radius and exact_radius % stride == 0 and exact_radius <= 2 * cap:
        halos.append(exact_radius)
    return halos


def _padded(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``image`` (bands, h, w) mirror-padded as prediction pads a scene."""
    _, h, w = image.shape
    rows = mirror_indices(-top, h + bottom, h)
    cols = mirror_indices(-left, w + right, w)
    return np.ascontiguousarray(image[:, rows][:, :, cols])


def _labels(model: torch.nn.Module, inputs: np.ndarray, device: torch.device) -> np.ndarray:
    """First-maximum labels of a batch (n, bands, h, w) of normalized inputs."""
    logits = forward(model, torch.from_numpy(inputs).to(device), device)
    return np.stack([first_argmax(item).cpu().numpy() for item in logits])


def measure_edges(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    halos: Sequence[int],
    device: torch.device,
    core: int = MEASURE_CORE,
    batch: int = 2,
) -> list[SeamEdge]:
    """Changed pixels and core-edge pixels of one crop-mode pass per halo over ``image`` (bands, h, w, normalized).

    Cores of ``core`` pixels start at the image's top-left; a core edge counts where it lies inside
    the image (the part of a core past the image is predicted but not compared).
    """
    _, height, width = image.shape
    margin = max(halos)
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    # Padded so that every tile of every halo reads inside it, and whole-image prediction sees as far.
    padded = _padded(image, margin, rows * core - height + margin, margin, cols * core - width + margin)
    model.eval()
    reference = _labels(model, padded[None], device)[0, margin : margin + height, margin : margin + width]
    origins = [(r * core, c * core) for r in range(rows) for c in range(cols)]
    edge_px = core_edge_pixels(height, width, core)
    edges = []
    for halo in halos:
        tiled = np.empty_like(reference)
        side = core + 2 * halo
        for start in range(0, len(origins), batch):
            group = origins[start : start + batch]
            reads = [(margin + r0 - halo, margin + c0 - halo) for r0, c0 in group]
            inputs = np.stack([padded[:, r : r + side, c : c + side] for r, c in reads])
            for (r0, c0), labels in zip(group, _labels(model, inputs, device), strict=True):
                h, w = min(core, height - r0), min(core, width - c0)
                tiled[r0 : r0 + h, c0 : c0 + w] = labels[halo : halo + h, halo : halo + w]
        edges.append(SeamEdge(halo=halo, changed_px=int((tiled != reference).sum()), edge_px=edge_px))
    return edges


def core_edge_pixels(height: int, width: int, core: int) -> int:
    """Pixels of core edge inside a ``height`` × ``width`` scene whose cores of ``core`` start at its top-left.

    Every core row has its top edge inside (``width`` pixels) and its bottom edge too unless the scene
    ends first; likewise for columns.
    """
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    return width * (rows + height // core) + height * (cols + width // core)


def tiling_figure(edge: SeamEdge, tile: int, scene: tuple[int, int] | None = None) -> TilingFigure:
    """Changed share and cost of tiles of ``tile`` with ``edge``'s halo on a scene of (height, width).

    ``scene`` None: on a scene much larger than a tile, ``4·D/core`` and ``(tile / core)²``.
    """
    core = tile - 2 * edge.halo
    depth = edge.changed_px / edge.edge_px
    if scene is None:
        share, cost = 4 * depth / core, (tile / core) ** 2
    else:
        height, width = scene
        tiles = math.ceil(height / core) * math.ceil(width / core)
        share = depth * core_edge_pixels(height, width, core) / (height * width)
        cost = tiles * tile * tile / (height * width)
    return TilingFigure(
        tile_size=tile, halo=edge.halo, changed_percent=round(min(100.0, 100 * share), 6), cost=round(cost, 4)
    )


def tiling_figures(
    edges: Sequence[SeamEdge],
    stride: int,
    tile_sizes: Sequence[int] = CANDIDATE_TILE_SIZES,
    scene: tuple[int, int] | None = None,
) -> list[TilingFigure]:
    """Every (tile, halo) on the stride with a core at least twice the halo (see :func:`tiling_figure`)."""
    return [
        tiling_figure(edge, tile, scene)
        for edge in edges
        for tile in tile_sizes
        if tile % stride == 0 and tile - 2 * edge.halo >= max(2 * edge.halo, stride)
    ]


def max_tile_for_memory(memory_gb: float, batch: int, bytes_per_pixel: float) -> int:
    """The largest tile side whose batch of activations fits ``memory_gb``."""
    return int(math.sqrt(memory_gb * 2**30 / (batch * bytes_per_pixel)))


def choose_tiling(figures: Sequence[TilingFigure], *, max_error_percent: float, max_tile: int) -> TilingFigure | None:
    """The cheapest tiling (then the most exact, then the smallest) under both limits; None when none is."""
    fits = [f for f in figures if f.changed_percent <= max_error_percent and f.tile_size <= max_tile]
    return min(fits, key=lambda f: (f.cost, f.changed_percent, f.tile_size), default=None)


def activation_bytes_per_pixel(
    model: torch.nn.Module, in_channels: int, device: torch.device, side: int = 256
) -> float:
    """Bytes of every layer's output per input pixel: an upper bound of a forward pass's working memory.

    Inference frees most outputs as it goes (the demo U-Net peaks near a third of this), so a
    tile this sizes fits with room to spare.
    """
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, in_channels, side, side, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total / (side * side)


def seam_check(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    region: str,
    stride: int,
    exact_radius: int | None,
    device: torch.device,
) -> SeamCheck:
    """The model card's seam record: edge depths per halo over ``image`` and the tilings they imply."""
    edges = measure_edges(model, image, halos=halos_to_measure(stride, exact_radius), device=device)
    return SeamCheck(
        region=region,
        stride=stride,
        pixels=int(image.shape[1] * image.shape[2]),
        edges=tuple(edges),
        tilings=tuple(tiling_figures(edges, stride)),
        activation_bytes_per_pixel=round(activation_bytes_per_pixel(model, image.shape[0], device), 1),
    )
