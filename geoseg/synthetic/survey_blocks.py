"""A survey-sized label map made block by block: the known "prediction" of ``geoseg bench pipeline``.

Every pixel's class is a pure function of ``(seed, row, col)``: noise fields are
hashed from lattice points, rivers are sinusoids in scene coordinates, roads a
per-district grid and buildings one rectangle (or none) per cell. So any block of
an N×N map can be made alone, with memory proportional to the block, and equals
the same region of the whole map pixel for pixel.

The classes and their burn order follow the demo (:data:`DEMO_CLASSES`):
vegetation patches, then the road grid of "urban" districts, then water (rivers
cross the whole scene unbroken, ponds are blobs), then buildings lined up in the
road blocks. Roads stop short of a district's edge so a road network is bounded
in size, as real road polygons are once clipped to a map sheet; rivers are not,
so one feature can cross every chunk. About 200 features per megapixel, like the
demo survey (3,257 polygons at 4096²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.synthetic.layout import DEMO_CLASSES

__all__ = ["BlockWindow", "reference_block", "survey_block"]

WATER, BUILDING, ROAD, VEGETATION = (DEMO_CLASSES.index(name) for name in ("water", "building", "road", "vegetation"))

DISTRICT = 1536  # px: one road grid (spacing, phase, urban or not) per district
ROAD_MARGIN = 24  # px: roads stop this far from a district's edge
RIVER_LANE = 3000  # px: one river per lane of rows, crossing the scene from west to east
HOUSE_CELL = 40  # px: at most one building per cell, never touching its neighbours'
URBAN = 21  # hash salt of the urban-or-not draw, shared by roads and buildings
REFERENCE_FLIP = 0.02  # share of pixels the reference gives another class


@dataclass(frozen=True)
class BlockWindow:
    """Where a block lies in the scene: its first row and column and its size, in pixels."""

    row: int
    col: int
    height: int
    width: int


def _mix(*keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash (splitmix64 finaliser) of integer keys, elementwise; wraps silently as uint64."""
    value = np.zeros(np.broadcast_shapes(*(np.shape(k) for k in keys)), np.uint64)
    for key in keys:
        value = value ^ np.asarray(key).astype(np.uint64)
        value = value + np.uint64(0x9E3779B97F4A7C15)
        value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        value = value ^ (value >> np.uint64(31))
    return value


def _uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Floats in [0, 1) hashed from the keys."""
    return (_mix(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _cells(seed: int, salt: int, cell_rows: np.ndarray, cell_cols: np.ndarray) -> np.ndarray:
    """``_uniform(seed, salt, cell_row, cell_col)`` for a (h, 1) column of cell rows and a (1, w) row of cell columns.

    Hashes each cell of the block once and gathers, rather than hashing every pixel:
    the cell indices of a block are a small contiguous range.
    """
    row0, col0 = int(cell_rows.min()), int(cell_cols.min())
    table = _uniform(
        seed,
        salt,
        np.arange(row0, int(cell_rows.max()) + 1, dtype=np.int64)[:, None],
        np.arange(col0, int(cell_cols.max()) + 1, dtype=np.int64)[None, :],
    )
    return table[cell_rows - row0, cell_cols - col0]


def _value_noise(seed: int, salt: int, rows: np.ndarray, cols: np.ndarray, spacing: int) -> np.ndarray:
    """Smooth noise in [0, 1): hashed values at lattice points ``spacing`` apart, smoothstep-interpolated."""
    gy, gx = rows // spacing, cols // spacing
    fy = (rows % spacing) / spacing
    fx = (cols % spacing) / spacing
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = _cells(seed, salt, gy, gx) * (1 - fx) + _cells(seed, salt, gy, gx + 1) * fx
    bottom = _cells(seed, salt, gy + 1, gx) * (1 - fx) + _cells(seed, salt, gy + 1, gx + 1) * fx
    return top * (1 - fy) + bottom * fy


def _rivers(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels of the lane's river: a meandering band of 12–40 px whose centre is a sum of two sinusoids."""
    lane = rows // RIVER_LANE
    u = [_uniform(seed, 11, lane, k) for k in range(5)]  # (h, 1): per row, cheap
    x = cols.astype(np.float64)
    centre = (
        lane * RIVER_LANE
        + RIVER_LANE / 2
        + 500 * np.sin(2 * np.pi * (x / (2000 + 2000 * u[0]) + u[1]))
        + 80 * np.sin(2 * np.pi * (x / (350 + 300 * u[2]) + u[3]))
    )
    return np.abs(rows - centre) < 6 + 14 * u[4]


def _roads(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Road grids of the urban districts (half of them): 6–12 px roads every 180–330 px."""
    dy, dx = rows // DISTRICT, cols // DISTRICT
    urban = _cells(seed, URBAN, dy, dx) < 0.5
    spacing = (180 + 150 * _cells(seed, 22, dy, dx)).astype(np.int64)
    width = (6 + 6 * _cells(seed, 23, dy, dx)).astype(np.int64)
    ry, rx = rows % DISTRICT, cols % DISTRICT
    inside = (np.minimum(ry, DISTRICT - 1 - ry) >= ROAD_MARGIN) & (np.minimum(rx, DISTRICT - 1 - rx) >= ROAD_MARGIN)
    on_grid = ((ry % spacing) < width) | ((rx % spacing) < width)
    return urban & inside & on_grid


def _buildings(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """One rectangle of 10–34 px sides or none in each cell, never touching the cell's edge (so never a neighbour)."""
    cy, cx = rows // HOUSE_CELL, cols // HOUSE_CELL
    urban = _cells(seed, URBAN, rows // DISTRICT, cols // DISTRICT) < 0.5  # the districts with roads: dense
    present = _cells(seed, 32, cy, cx) < np.where(urban, 0.6, 0.05)
    half_h = 5 + 12 * _cells(seed, 33, cy, cx)
    half_w = 5 + 12 * _cells(seed, 34, cy, cx)
    centre_y = cy * HOUSE_CELL + HOUSE_CELL / 2 + (HOUSE_CELL / 2 - 2 - half_h) * (2 * _cells(seed, 35, cy, cx) - 1)
    centre_x = cx * HOUSE_CELL + HOUSE_CELL / 2 + (HOUSE_CELL / 2 - 2 - half_w) * (2 * _cells(seed, 36, cy, cx) - 1)
    return present & (np.abs(rows + 0.5 - centre_y) < half_h) & (np.abs(cols + 0.5 - centre_x) < half_w)


def _coordinates(window: BlockWindow) -> tuple[np.ndarray, np.ndarray]:
    """The block's scene rows as a (h, 1) column and its scene columns as a (1, w) row."""
    rows = np.arange(window.row, window.row + window.height, dtype=np.int64)[:, None]
    cols = np.arange(window.col, window.col + window.width, dtype=np.int64)[None, :]
    return rows, cols


def survey_block(window: BlockWindow, seed: int = 0) -> np.ndarray:
    """(height, width) uint8 class indices (:data:`DEMO_CLASSES`) of the block at ``window``."""
    rows, cols = _coordinates(window)
    labels = np.zeros((window.height, window.width), np.uint8)
    vegetation = _value_noise(seed, 1, rows, cols, 160) * 0.7 + _value_noise(seed, 2, rows, cols, 48) * 0.3
    labels[vegetation > 0.62] = VEGETATION
    labels[_roads(seed, rows, cols)] = ROAD
    ponds = _value_noise(seed, 3, rows, cols, 96) > 0.86
    labels[ponds | _rivers(seed, rows, cols)] = WATER
    free = (labels != ROAD) & (labels != WATER)
    labels[free & _buildings(seed, rows, cols)] = BUILDING
    return labels


def reference_block(window: BlockWindow, seed: int = 0) -> np.ndarray:
    """The reference ("truth") for the same block: :func:`survey_block` with 2% of pixels a class further on.

    The flips are hashed per pixel, so the reference is as block-independent as the map,
    and scores against it are high but not 1.0.
    """
    labels = survey_block(window, seed)
    rows, cols = _coordinates(window)
    flip = _uniform(seed, 41, rows, cols) < REFERENCE_FLIP
    classes = len(DEMO_CLASSES)
    labels[flip] = (labels[flip] + 1) % classes
    return labels
