"""Impact scored against a truth: flood-extent IoU and affected-building precision, recall and F1.

- Flood extent: the ``flood`` array against a flood-code raster on the same grid (0 dry,
  1 permanent water, 2 flood water, 255 unknown), counted chunk by chunk over the pixels both
  know: IoU of flood water, and the share of truly permanent water that was taken for flood.
- Buildings: a predicted flooded building is right when it overlaps a truly flooded one, and a truly
  flooded building is found when a predicted flooded one overlaps it (footprints from different
  sources never match one to one: a model may merge two houses). Precision counts the first,
  recall the second; each band of chunk rows reads only its own buildings and those that touch them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import rasterio
import rasterio.warp
import shapely
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.evaluate.confusion import chunk_row_bands
from geoseg.impact.assets import AssetLayer, band_area, read_band_features, read_crossing
from geoseg.impact.flood import FLOOD, MIN_BANDS, UNKNOWN
from geoseg.io.mosaic import open_mosaic
from geoseg.vectorize.classes import RunTasks, in_process

__all__ = ["BuildingScores", "FloodScores", "building_scores", "flood_scores"]


@dataclass(frozen=True)
class FloodScores:
    """``counts[t, p]``: pixels of true code ``t`` predicted as ``p`` (0 dry, 1 permanent, 2 flood), both known."""

    counts: np.ndarray

    @property
    def flood_iou(self) -> float | None:
        hit = self.counts[2, 2]
        union = self.counts[2, :].sum() + self.counts[:, 2].sum() - hit
        return float(hit / union) if union else None

    @property
    def permanent_as_flood(self) -> float | None:
        """Of the truly permanent water, the share predicted as flood water."""
        permanent = self.counts[1, :].sum()
        return float(self.counts[1, 2] / permanent) if permanent else None

    def as_json(self) -> dict[str, Any]:
        return {
            "flood_iou": self.flood_iou,
            "permanent_as_flood": self.permanent_as_flood,
            "confusion": self.counts.tolist(),
            "codes": ["dry", "permanent_water", "flood_water"],
        }


def flood_band(mosaic_path: str, truth_path: str, first_row: int, stop_row: int) -> np.ndarray:
    """The 3×3 code counts of the chunks in pixel rows ``first_row:stop_row``."""
    mosaic = open_mosaic(mosaic_path)
    flood = mosaic.array(FLOOD)
    counts = np.zeros((3, 3), np.int64)
    with rasterio.open(truth_path) as truth:
        for row, col, h, w in mosaic.chunk_windows():
            if not first_row <= row < stop_row:
                continue
            predicted = np.asarray(flood[row : row + h, col : col + w])
            true = truth.read(1, window=Window(col, row, w, h))
            known = (predicted != UNKNOWN) & (true != UNKNOWN) & (true <= 2) & (predicted <= 2)
            counts += np.bincount(true[known] * 3 + predicted[known], minlength=9).reshape(3, 3)
    return counts


def flood_scores(mosaic_path: Path, truth_path: Path, run_tasks: RunTasks = in_process) -> FloodScores:
    """The ``flood`` array against ``truth_path`` (see the module), band of chunk rows by band."""
    mosaic = open_mosaic(mosaic_path)
    bands = chunk_row_bands(mosaic.height, mosaic.chunk, MIN_BANDS)
    requests = [(str(mosaic_path), str(truth_path), first, stop) for first, stop in bands]
    counts = np.zeros((3, 3), np.int64)
    for band in cast(Iterable[np.ndarray], run_tasks(flood_band, requests)):
        counts += band
    return FloodScores(counts)


@dataclass(frozen=True)
class BuildingScores:
    predicted: int  # buildings predicted flooded
    predicted_right: int  # of those, overlapping a truly flooded building
    true: int  # truly flooded buildings
    found: int  # of those, overlapped by a building predicted flooded

    @property
    def precision(self) -> float | None:
        return self.predicted_right / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.found / self.true if self.true else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None

    def __add__(self, other: BuildingScores) -> BuildingScores:
        return BuildingScores(
            self.predicted + other.predicted,
            self.predicted_right + other.predicted_right,
            self.true + other.true,
            self.found + other.found,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "predicted_flooded": self.predicted,
            "true_flooded": self.true,
        }


def _overlapping(own: np.ndarray, layer: AssetLayer, crs: CRS) -> np.ndarray:
    """For each of ``own`` (mosaic CRS), whether a feature of ``layer`` (from any band) overlaps it by some area."""
    found = np.zeros(len(own), bool)
    if not len(own):
        return found
    geoms = read_crossing(layer, crs, tuple(shapely.total_bounds(own))).geometry.values
    if not len(geoms):
        return found
    tree = shapely.STRtree(geoms)
    mine, theirs = tree.query(own, predicate="intersects")
    areas = shapely.area(shapely.intersection(own[mine], geoms[theirs]))
    found[np.unique(mine[areas > 0])] = True
    return found


def building_band(
    mosaic_path: str, predicted: AssetLayer, truth: AssetLayer, first_row: int, stop_row: int
) -> BuildingScores:
    """The scores' counts for the buildings of pixel rows ``first_row:stop_row``."""
    mosaic = open_mosaic(mosaic_path)
    area = band_area(mosaic, first_row, stop_row)
    mine = read_band_features(predicted, mosaic, area).geometry.values
    true = read_band_features(truth, mosaic, area).geometry.values
    right = _overlapping(np.asarray(mine), truth, mosaic.crs)
    found = _overlapping(np.asarray(true), predicted, mosaic.crs)
    return BuildingScores(len(mine), int(right.sum()), len(true), int(found.sum()))


def building_scores(
    mosaic_path: Path, predicted: AssetLayer, truth: AssetLayer, run_tasks: RunTasks = in_process
) -> BuildingScores:
    """Flooded buildings ``predicted`` against the truly flooded ``truth`` (both filtered by their ``where``)."""
    mosaic = open_mosaic(mosaic_path)
    bands = chunk_row_bands(mosaic.height, mosaic.chunk, MIN_BANDS)
    requests = [(str(mosaic_path), predicted, truth, first, stop) for first, stop in bands]
    total = BuildingScores(0, 0, 0, 0)
    for band in cast(Iterable[BuildingScores], run_tasks(building_band, requests)):
        total = total + band
    return total
