"""The tile plan: pure window arithmetic, no I/O.

A tile is a *core* window (written to the mosaic) plus a *halo* of context on
every side (read, seen by the model, then cropped away). Cores are exactly the
mosaic's Zarr chunks, so each chunk has one writer. Where the halo leaves the
image it is filled by mirroring the image about its edge (the U-Net paper's
overlap-tile strategy), never by zeros, so a tile at the border sees what
whole-image inference on a mirror-padded image would see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import SupportsInt

import numpy as np

__all__ = ["Tile", "check_tile_size", "mirror_indices", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One unit of prediction work: small and serializable (sent to a Ray actor as is)."""

    index: int
    row: int  # core's top-left pixel in the scene
    col: int
    height: int  # core size; smaller than the full core only at the bottom/right edge
    width: int
    halo: int
    size: int  # model input pixels a side (full core + 2*halo)

    @property
    def read_rows(self) -> tuple[int, int]:
        """Half-open scene row range the model input covers (may leave the image)."""
        return self.row - self.halo, self.row - self.halo + self.size

    @property
    def read_cols(self) -> tuple[int, int]:
        return self.col - self.halo, self.col - self.halo + self.size

    def as_row(self) -> dict[str, int]:
        return {
            "index": self.index,
            "row": self.row,
            "col": self.col,
            "height": self.height,
            "width": self.width,
            "halo": self.halo,
            "size": self.size,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, SupportsInt]) -> Tile:
        return cls(**{key: int(row[key]) for key in ("index", "row", "col", "height", "width", "halo", "size")})


def plan_tiles(height: int, width: int, *, tile_size: int, halo: int) -> list[Tile]:
    """Cover a ``height`` × ``width`` scene with tiles whose cores are the mosaic chunks."""
    core = tile_size - 2 * halo
    if core <= 0:
        raise ValueError(f"tile_size {tile_size} leaves no core with halo {halo}")
    tiles: list[Tile] = []
    for row in range(0, height, core):
        for col in range(0, width, core):
            tiles.append(Tile(len(tiles), row, col, min(core, height - row), min(core, width - col), halo, tile_size))
    return tiles


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Scene indices for positions ``start..stop-1``, reflecting out-of-range ones.

    Reflection excludes the edge pixel (numpy's ``reflect`` mode: -1 → 1), and
    repeats for halos wider than the image, so the result equals indexing
    ``np.pad(image, pad, mode="reflect")``.
    """
    idx = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - idx, idx)


def check_tile_size(tile_size: int, stride: int, arch: str, halo: int = 0) -> str | None:
    """Return an error message if the model cannot take this tiling, else None.

    The tile must be a multiple of the stride for the model to run at all, and
    so must the halo (hence the core): otherwise tiles sample the model's
    downsampling grid at different phases than the whole image, leaving seams.
    """
    if tile_size % stride:
        lower = max(stride, (tile_size // stride) * stride)
        upper = math.ceil(tile_size / stride) * stride
        return f"{tile_size} is not divisible by {arch}'s output stride {stride}; use {upper}" + (
            f" or {lower}" if lower != upper else ""
        )
    if halo % stride:
        return (
            f"halo {halo} is not a multiple of {arch}'s output stride {stride}, so tile cores would fall "
            f"off the model's grid and leave seams; use halo {math.ceil(halo / stride) * stride}"
            + (f" or {halo // stride * stride}" if halo > stride else "")
        )
    return None
