"""What was water before the event, read one chunk of the post-event mosaic at a time.

A reference answers, for one chunk's grid (:class:`ChunkGrid`), where there was water and where
that is known (:class:`ReferenceWater`). Two kinds:

- :class:`PreEventMosaic`: a mosaic of a pre-event scene predicted with the same model. It may
  have another grid, resolution or CRS: only the window of it that covers the chunk (plus a
  margin) is read and warped onto the chunk's grid with nearest resampling, so no scene is
  ever held or resampled whole. Outside its scene, or where its ``valid`` is 0, is unknown.
- :class:`PermanentWater`: a permanent-water polygon layer. Only the polygons that cross the
  chunk's bounds are read (a ``bbox`` filter in the layer's own CRS), then burnt into the chunk
  by pixel centre. It is known everywhere.

References are small frozen dataclasses of paths, so they travel to Ray tasks by pickling; each
opens its source itself, once per process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio.features
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import array_bounds

from geoseg.errors import InputRasterError
from geoseg.io.mosaic import MosaicInfo, open_mosaic

__all__ = ["ChunkGrid", "PermanentWater", "PreEventMosaic", "Reference", "ReferenceWater", "bounds_window"]

MARGIN = 2  # pixels of the pre-event grid read around the chunk's footprint: nearest picks stay inside
UNKNOWN = 255  # in the warped pre-event picture: no data there (also the warp's nodata)
DENSIFY = 21  # points per edge when a chunk's bounds go to another CRS: curved edges stay covered


@dataclass(frozen=True)
class ChunkGrid:
    """One chunk of the post-event mosaic as a grid of its own: CRS, the chunk's transform and shape."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @classmethod
    def of(cls, mosaic: MosaicInfo, row: int, col: int, height: int, width: int) -> ChunkGrid:
        return cls(mosaic.crs, mosaic.transform @ Affine.translation(col, row), height, width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return float(west), float(south), float(east), float(north)


class ReferenceWater(NamedTuple):
    """Where the reference had water, and where it knows (both bool, on one chunk's grid)."""

    water: np.ndarray
    known: np.ndarray


class Reference(Protocol):
    """A source of "water before", read chunk by chunk (see the module's docstring)."""

    def read(self, grid: ChunkGrid, water_class: int) -> ReferenceWater: ...

    def made_from(self) -> dict[str, Any]:
        """What the answers depend on (paths, sizes, times): a flood made from another one is redone."""
        ...


def _file_state(path: Path) -> list[Any]:
    """Path, size and modification time: enough to notice a replaced file without reading it."""
    if path.is_dir():  # a Zarr folder: its metadata changes whenever it is recreated
        stat = (path / ".zgroup") if (path / ".zgroup").exists() else (path / "zarr.json")
        path_stat = os.stat(stat)
    else:
        path_stat = os.stat(path)
    return [str(path.resolve()), path_stat.st_size, path_stat.st_mtime_ns]


@dataclass(frozen=True)
class PreEventMosaic:
    """A pre-event mosaic (``mosaic.zarr`` of the same model), on any grid and CRS."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @cached_property
    def mosaic(self) -> MosaicInfo:
        # Opened once per process (a metadata read per array, a request each on object storage).
        return open_mosaic(self.path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # the open group stays behind: each Ray worker opens its own

    def made_from(self) -> dict[str, Any]:
        done = hashlib.sha256(np.asarray(self.mosaic.array("done")[:]).tobytes()).hexdigest()
        return {"pre_event": _file_state(self.path), "fingerprint": self.mosaic.fingerprint, "done": done}

    def read(self, grid: ChunkGrid, water_class: int) -> ReferenceWater:
        pre = self.mosaic
        window = _covering_window(pre, grid)
        if window is None:  # the chunk lies outside the pre-event scene
            shape = (grid.height, grid.width)
            return ReferenceWater(np.zeros(shape, bool), np.zeros(shape, bool))
        row0, row1, col0, col1 = window
        labels = np.asarray(pre.labels[row0:row1, col0:col1])
        valid = np.asarray(pre.valid[row0:row1, col0:col1])
        # One band carries all three states (dry, water, unknown), so one warp moves them together.
        source = np.where(valid > 0, labels == water_class, UNKNOWN).astype(np.uint8)
        warped = np.full((grid.height, grid.width), UNKNOWN, np.uint8)  # never reached by the warp: unknown
        rasterio.warp.reproject(
            source,
            warped,
            src_transform=pre.transform @ Affine.translation(col0, row0),
            src_crs=pre.crs,
            src_nodata=UNKNOWN,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=UNKNOWN,
            resampling=Resampling.nearest,
        )
        return ReferenceWater(warped == 1, warped != UNKNOWN)


def _covering_window(pre: MosaicInfo, grid: ChunkGrid) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)`` of the pre-event pixels under the chunk, plus a margin; None if none."""
    bounds = rasterio.warp.transform_bounds(grid.crs, pre.crs, *grid.bounds, densify_pts=DENSIFY)
    return bounds_window(pre, bounds, MARGIN)


def bounds_window(
    mosaic: MosaicInfo, bounds: tuple[float, float, float, float], margin: int
) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)`` of the mosaic pixels under ``bounds`` (its CRS), plus ``margin``; None if none."""
    left, bottom, right, top = bounds
    inverse = ~mosaic.transform
    cols, rows = zip(*(inverse @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    row0 = max(0, int(np.floor(min(rows))) - margin)
    row1 = min(mosaic.height, int(np.ceil(max(rows))) + margin)
    col0 = max(0, int(np.floor(min(cols))) - margin)
    col1 = min(mosaic.width, int(np.ceil(max(cols))) + margin)
    return (row0, row1, col0, col1) if row0 < row1 and col0 < col1 else None


@dataclass(frozen=True)
class PermanentWater:
    """A permanent-water polygon layer (GeoPackage, GeoJSON, Shapefile…) in any CRS."""

    path: Path
    layer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @cached_property
    def crs(self) -> CRS:
        info = pyogrio.read_info(self.path, layer=self.layer)
        if not info["crs"]:
            raise InputRasterError(f"{self.path}: the permanent-water layer has no CRS; set one (ogr2ogr -a_srs)")
        return CRS.from_user_input(info["crs"])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "layer": self.layer}

    def made_from(self) -> dict[str, Any]:
        return {"permanent_water": _file_state(self.path), "layer": self.layer}

    def read(self, grid: ChunkGrid, water_class: int) -> ReferenceWater:
        shape = (grid.height, grid.width)
        bbox = rasterio.warp.transform_bounds(grid.crs, self.crs, *grid.bounds, densify_pts=DENSIFY)
        frame = gpd.read_file(self.path, layer=self.layer, bbox=bbox, engine="pyogrio")
        geometries = frame.geometry[~(frame.geometry.isna() | frame.geometry.is_empty)]
        water = np.zeros(shape, np.uint8)
        if len(geometries):
            # Burnt by pixel centre, like the whole layer on the whole grid: chunks agree at their seams.
            shapes = ((geometry, 1) for geometry in geometries.set_crs(self.crs, allow_override=True).to_crs(grid.crs))
            rasterio.features.rasterize(shapes, out=water, transform=grid.transform)
        return ReferenceWater(water.astype(bool), np.ones(shape, bool))
