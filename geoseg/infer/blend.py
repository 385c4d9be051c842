"""Blend stitching: overlapping tile predictions weighted by a Hann window.

Two passes keep the one-writer-per-chunk rule without locks:

1. every tile writes the class probabilities of its *whole* window (core + halo)
   to a scratch array, one Zarr chunk per tile (:meth:`BlendScratch.write`);
2. every chunk is then written once, from the ≤ 9 windows that cover it:
   Σ w·p / Σ w with w the 2-D Hann window of each tile (:func:`blend_tiles`).

Neighbouring windows overlap by 2·halo centred on the seam, and at the seam both
carry the same weight, so predictions fade from one tile to the next instead of
switching. Whole-image inference is not reproduced exactly (that is crop mode's
promise when the halo covers the model's context); blending hides seams of
models whose context is wider than any affordable halo.
"""

from __future__ import annotations

import numpy as np
import zarr

from geoseg.io.mosaic import MosaicInfo, mark_done, write_block
from geoseg.tiling import Tile

__all__ = ["SCRATCH", "BlendScratch", "blend_tiles", "drop_scratch", "hann_window"]

SCRATCH = "blend_scratch"  # group inside the partial mosaic, deleted once the mosaic is complete


def hann_window(size: int) -> np.ndarray:
    """2-D Hann weights, strictly positive (sampled at pixel centres)."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


class BlendScratch:
    """Per-tile window probabilities, stored in the partial mosaic."""

    def __init__(self, mosaic: MosaicInfo):
        self.probs = mosaic.array(f"{SCRATCH}/probs")
        self.done = mosaic.array(f"{SCRATCH}/done")

    @staticmethod
    def create(mosaic: MosaicInfo, tile_count: int, classes: int, size: int) -> None:
        """Made once by the driver before any worker starts (workers only open it)."""
        if SCRATCH in mosaic.group:
            return
        scratch = mosaic.group.create_group(SCRATCH)
        scratch.create_array(
            "probs",
            shape=(tile_count, classes, size, size),
            chunks=(1, classes, size, size),
            dtype="float16",
            fill_value=0,
        )
        scratch.create_array("done", shape=(tile_count,), chunks=(1,), dtype="uint8", fill_value=0)

    def write(self, tile: Tile, probs: np.ndarray) -> None:
        self.probs[tile.index] = probs.astype(np.float16)
        self.done[tile.index] = 1  # after the probabilities, as with chunks

    def finished(self) -> set[int]:
        return set(np.nonzero(np.asarray(self.done[:]))[0].tolist())


def _neighbours(tile: Tile, mosaic: MosaicInfo):
    """Tiles (as index, window row, window col) whose windows cover ``tile``'s core."""
    rows, cols = mosaic.grid
    core = tile.size - 2 * tile.halo
    grid_row, grid_col = tile.row // core, tile.col // core
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = grid_row + dr, grid_col + dc
            if 0 <= r < rows and 0 <= c < cols:
                yield r * cols + c, r * core - tile.halo, c * core - tile.halo


def blend_tiles(tiles: list[Tile], mosaic: MosaicInfo, scratch: BlendScratch, valid: list[np.ndarray]) -> None:
    """Blend each tile's core from the windows covering it; write labels (and scores) once."""
    for tile, core_valid in zip(tiles, valid, strict=True):
        # The window weights are a function of the tile size only: recomputed, not cached, to stay simple.
        weight = hann_window(tile.size)
        total = None
        weights = np.zeros((tile.height, tile.width), np.float32)
        for index, top, left in _neighbours(tile, mosaic):
            r0, r1 = max(tile.row, top), min(tile.row + tile.height, top + tile.size)
            c0, c1 = max(tile.col, left), min(tile.col + tile.width, left + tile.size)
            if r0 >= r1 or c0 >= c1:
                continue
            probs = np.asarray(scratch.probs[index, :, r0 - top : r1 - top, c0 - left : c1 - left]).astype(np.float32)
            w = weight[r0 - top : r1 - top, c0 - left : c1 - left]
            if total is None:
                total = np.zeros((probs.shape[0], tile.height, tile.width), np.float32)
            total[:, r0 - tile.row : r1 - tile.row, c0 - tile.col : c1 - tile.col] += probs * w
            weights[r0 - tile.row : r1 - tile.row, c0 - tile.col : c1 - tile.col] += w
        assert total is not None  # the tile's own window (dr = dc = 0) always covers its core
        blended = total / weights
        labels = blended.argmax(axis=0).astype(np.uint8)
        labels[~core_valid] = 0
        scores = None
        if mosaic.has_scores:
            scores = np.round(blended * 255).astype(np.uint8)
            scores[:, ~core_valid] = 0
        write_block(mosaic, tile.row, tile.col, labels, core_valid.astype(np.uint8), scores)
        mark_done(mosaic, tile.row, tile.col)


def drop_scratch(group: zarr.Group) -> None:
    if SCRATCH in group:
        del group[SCRATCH]
