"""Overview (pyramid) levels of a finished mosaic, for fast viewing.

Layout added to the mosaic (next to ``labels``/``valid``)::

    mosaic.zarr/
      overviews/<f>/labels       uint8 (y, x)  mode of the valid classes over f×f base pixels; 0 where none valid
      overviews/<f>/valid        uint8 (y, x)  1 if any base pixel of the f×f block is valid
      overviews/<f>/x, y         float64       pixel-centre coordinates of that level
      overviews/<f>/spatial_ref  int32 scalar  CF grid mapping with that level's GeoTransform

for f = 2, 4, 8, … until the longer side is at most ``min_side``. Each level is
``ceil(H/f) × ceil(W/f)`` pixels (a block at the right/bottom edge covers the
pixels that exist), chunked like the base, with the base arrays' CF/GDAL
attributes and its own ``transform * Affine.scale(f)``. Each level group is a
self-contained georeferenced dataset: ``xr.open_zarr(path, group="overviews/4")``
and ``gdalinfo 'ZARR:"path":/overviews/4/labels'`` both find its CRS and grid.
The root group's ``multiscales`` attribute (OME-NGFF 0.4 style, one entry per
array) lists the levels; it is written last, so a viewer never sees a partial
pyramid.

How a level is built: a single pass over the base, visiting the chunk quadtree
depth first. A level-k chunk covers exactly 2×2 chunks of level k-1 (chunks have
the same side at every level), so each chunk of every level is computed once,
from its four children, and written once. What travels up the tree is chosen so
the result is right, not approximately right:

* ``exact`` (default when it fits ``max_memory``): per-class pixel counts. Counts
  add, so the 2×2 sum of the children's counts *is* the count over the whole f×f
  block, and the mode of a level is the true mode over f×f base pixels, not a
  mode of modes (which, e.g., turns a 4×4 block of 7 water + 9 land into water
  when the water sits in the majority of its 2×2 sub-blocks). Memory is one
  ``(classes, chunk, chunk)`` accumulator per level, narrowest integer type that
  holds 4**k.
* ``cascade`` (fallback for many classes × big chunks): the 2×2 mode of the
  previous level's labels, each vote weighted by the number of valid base pixels
  under it. Exact at factor 2, close above; memory ~5 bytes × (2·chunk)² per level.

Either way memory is O(levels × chunk²), independent of the scene size.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr
from affine import Affine

from geoseg.errors import InputRasterError, JobConfigError
from geoseg.io.mosaic import DATA_ARRAYS, MosaicInfo, geoseg_attrs, member_array, open_mosaic
from geoseg.io.multiscales import OVERVIEWS_GROUP, level_shape, multiscales, write_coords
from geoseg.io.overview_tree import Builder, build_subtree, count_dtype, level_nodes, split_level

__all__ = [
    "OVERVIEWS_GROUP",
    "RunParallel",
    "build_overviews",
    "build_subtree",
    "list_overviews",
    "overview_factors",
    "read_overview",
]

_PARTIAL = "_overviews_partial"  # built here, renamed to OVERVIEWS_GROUP when complete
_DEFAULT_MAX_MEMORY = 512 * 2**20
# Runs function(*args) for every args in parallel; the results in order (the stage hands in Ray tasks).
RunParallel = Callable[[Callable[..., Any], list[tuple]], list[Any]]


def overview_factors(height: int, width: int, min_side: int = 256) -> list[int]:
    """Factors 2, 4, 8, … until the longer side of ``ceil(side / f)`` is at most ``min_side``.

    Empty when the base itself is already at most ``min_side`` a side.
    """
    if min_side < 1:
        raise JobConfigError(f"overviews: min_side {min_side!r} must be at least 1; use 256")
    factors: list[int] = []
    factor = 1
    while max(-(-height // factor), -(-width // factor)) > min_side:
        factor *= 2
        factors.append(factor)
    return factors


def build_overviews(
    mosaic_path: str | Path,
    *,
    min_side: int = 256,
    method: Literal["auto", "exact", "cascade"] = "auto",
    max_memory: int = _DEFAULT_MAX_MEMORY,
    run_parallel: RunParallel | None = None,
    workers: int = 1,
) -> list[int]:
    """Add overview levels 2, 4, 8, … to a finished mosaic; return their factors.

    Replaces any overviews already there. Levels are written under a temporary
    group and renamed into place when complete; the root ``multiscales``
    attribute that advertises them is written last.

    Args:
        mosaic_path: a mosaic written by :func:`geoseg.io.mosaic.create_mosaic`.
        min_side: stop at the first level whose longer side is at most this.
        method: ``exact`` (true mode over f×f blocks via per-class counts),
            ``cascade`` (validity-weighted 2×2 mode of the previous level), or
            ``auto``: exact unless its accumulators would exceed ``max_memory`` bytes.
        max_memory: budget for ``auto``.
        run_parallel: runs ``function(*args)`` for a list of ``args`` in parallel, the results in
            order (:data:`RunParallel`; the predict stage hands in Ray tasks).
        workers: above 1, the subtrees of one level (:func:`geoseg.io.overview_tree.build_subtree`,
            at least two per worker) are built through ``run_parallel``, the levels above them here.

    Returns:
        The factors built, e.g. ``[2, 4]``; empty when the mosaic is already small.

    Raises:
        InputRasterError: the mosaic is missing or not a geoseg mosaic.
    """
    mosaic = open_mosaic(mosaic_path, mode="r+")
    root = Path(mosaic.path)
    factors = overview_factors(mosaic.height, mosaic.width, min_side)
    exact = _use_exact(mosaic, len(factors), method, max_memory)
    # Forget the old pyramid first: from here until the end the mosaic advertises none.
    _forget_overviews(mosaic, root)
    if not factors:
        return []
    levels = _create_levels(mosaic, root / _PARTIAL, factors, exact)
    _fill_levels(mosaic, levels, exact, run_parallel if workers > 1 else None, workers, root / _PARTIAL)
    os.replace(root / _PARTIAL, root / OVERVIEWS_GROUP)
    mosaic.group.attrs["multiscales"] = multiscales(mosaic, factors, _method_name(exact))
    return factors


def _method_name(exact: bool) -> str:
    return "exact" if exact else "cascade"


def _use_exact(mosaic: MosaicInfo, levels: int, method: str, max_memory: int) -> bool:
    """Whether to build from per-class counts: asked for, or ``auto`` and the accumulators fit ``max_memory``.

    Raises:
        JobConfigError: ``method`` is not ``auto``, ``exact`` or ``cascade``.
    """
    if method not in ("auto", "exact", "cascade"):
        raise JobConfigError(f"overviews: method {method!r} is not one of 'auto', 'exact', 'cascade'; use 'auto'")
    classes = max(len(mosaic.class_names), 1)
    # One (classes, chunk, chunk) accumulator per level, the base's included.
    exact_bytes = sum(classes * mosaic.chunk**2 * count_dtype(k).itemsize for k in range(levels + 1))
    return method == "exact" or (method == "auto" and exact_bytes <= max_memory)


def _forget_overviews(mosaic: MosaicInfo, root: Path) -> None:
    """Stop advertising the old pyramid, then delete it and any partial one a crashed build left."""
    attrs = dict(mosaic.group.attrs)
    if "multiscales" in attrs:
        del mosaic.group.attrs["multiscales"]
    for stale in (root / OVERVIEWS_GROUP, root / _PARTIAL):
        if stale.exists():
            shutil.rmtree(stale)


def _create_levels(
    mosaic: MosaicInfo, path: Path, factors: list[int], exact: bool
) -> dict[int, tuple[zarr.Array, zarr.Array]]:
    """Create every level's empty group at ``path``, georeferenced; return level k → (labels, valid)."""
    zarr_format = mosaic.labels.metadata.zarr_format
    ref_attrs = {k: v for k, v in mosaic.group["spatial_ref"].attrs.asdict().items() if k != "GeoTransform"}
    unit = cast(str, mosaic.group["x"].attrs.get("units", "m"))
    partial = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    levels: dict[int, tuple[zarr.Array, zarr.Array]] = {}
    for level, f in enumerate(factors, start=1):
        height, width = level_shape(mosaic.height, mosaic.width, level)
        transform = mosaic.transform @ Affine.scale(f)
        group = partial.create_group(str(f))
        group.attrs.update(
            {
                "geoseg": {
                    "factor": f,
                    "transform": list(transform.to_gdal()),
                    "height": height,
                    "width": width,
                    "method": _method_name(exact),
                }
            }
        )
        levels[level] = _level_arrays(mosaic, group, f, transform, (height, width))
        write_coords(group, transform, height, width, unit, zarr_format, ref_attrs)
    return levels


def _level_arrays(
    mosaic: MosaicInfo, group: zarr.Group, factor: int, transform: Affine, shape: tuple[int, int]
) -> tuple[zarr.Array, zarr.Array]:
    """Create one level's empty ``labels`` and ``valid`` arrays, chunked and attributed like the base's."""
    zarr_format = mosaic.labels.metadata.zarr_format
    pair = []
    for name in DATA_ARRAYS:
        arr = group.create_array(
            name,
            shape=shape,
            chunks=(mosaic.chunk, mosaic.chunk),
            dtype="uint8",
            fill_value=0,
            dimension_names=["y", "x"] if zarr_format == 3 else None,
        )
        arr_attrs = mosaic.group[name].attrs.asdict()  # _ARRAY_DIMENSIONS, grid_mapping, _CRS, class names…
        arr_attrs["geoseg"] = {
            "factor": factor,
            "transform": list(transform.to_gdal()),
            "resampling": "mode" if name == "labels" else "max",
        }
        arr.attrs.update(arr_attrs)
        pair.append(arr)
    return pair[0], pair[1]


def _fill_levels(
    mosaic: MosaicInfo,
    levels: dict[int, tuple[zarr.Array, zarr.Array]],
    exact: bool,
    run_parallel: RunParallel | None = None,
    workers: int = 1,
    partial: Path | None = None,
) -> None:
    """Compute and write every chunk of every level: one depth-first walk down from each top-level chunk.

    In parallel, every chunk of the highest level with at least two per worker is the root of one
    task's subtree (its chunks and all below, written by that task: no two tasks share a chunk); the
    walk from the top then takes those roots' results instead of descending. Counts add the same
    way in any order, so the bytes are those of the serial walk.
    """
    builder = Builder(mosaic, levels, exact)
    top = len(levels)
    split = split_level(mosaic, top, 2 * workers) if run_parallel is not None else None
    if run_parallel is not None and split is not None and partial is not None:
        nodes = level_nodes(mosaic, split)
        arguments = [(str(mosaic.path), str(partial), exact, split, row, col) for row, col in nodes]
        builder.done = dict(zip(((split, r, c) for r, c in nodes), run_parallel(build_subtree, arguments), strict=True))
    for row, col in level_nodes(mosaic, top):
        builder.node(top, row, col)


def list_overviews(mosaic_path: str | Path) -> list[int]:
    """Factors of the complete overview levels a mosaic advertises (empty if none)."""
    mosaic = open_mosaic(mosaic_path)
    return _advertised(mosaic)


def _advertised(mosaic: MosaicInfo) -> list[int]:
    entries = cast(list[dict[str, Any]], mosaic.group.attrs.get("multiscales") or [])
    for entry in entries:
        if entry.get("name") == "labels":
            return [int(d["factor"]) for d in entry["datasets"] if int(d["factor"]) > 1]
    return []


def read_overview(mosaic_path: str | Path, factor: int) -> tuple[np.ndarray, np.ndarray, Affine]:
    """Read one overview level whole: ``(labels, valid, transform)``.

    ``factor=1`` reads the base arrays (beware: the whole scene).

    Raises:
        InputRasterError: the mosaic is missing, or has no level ``factor``.
    """
    mosaic = open_mosaic(mosaic_path)
    if factor == 1:
        return np.asarray(mosaic.labels[:]), np.asarray(mosaic.valid[:]), mosaic.transform
    available = _advertised(mosaic)
    if factor not in available:
        raise InputRasterError(
            f"{mosaic.path}: no overview with factor {factor!r} (has {available or 'none'}); "
            "build them with geoseg.io.overviews.build_overviews or pick one of those"
        )
    group = cast(zarr.Group, mosaic.group[f"{OVERVIEWS_GROUP}/{factor}"])
    transform = Affine.from_gdal(*geoseg_attrs(group)["transform"])
    return np.asarray(member_array(group, "labels")[:]), np.asarray(member_array(group, "valid")[:]), transform
