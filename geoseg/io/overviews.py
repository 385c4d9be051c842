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

Resuming: the levels are built under ``_overviews_partial`` as subtrees (a chunk of the split level
and all below it; see :mod:`geoseg.io.overview_tree`), by parallel tasks or one after another in
process, the same units either way. Each finished subtree leaves a record in
``_overviews_partial/_subtrees`` and the partial is stamped with a key of what it is made from: the
mosaic (its fingerprint, and the size and modification time of every stored ``labels``/``valid``
file, so a mosaic rewritten in place is another mosaic), the method, the factors and the split. A
build killed part way keeps its partial; the next one with the same key builds only the subtrees
without a record, and a partial under another key is discarded. Counts add alike in any order, so
the bytes are those of an uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
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
from geoseg.io.overview_tree import (
    RECORDS,
    Builder,
    SubtreeRecords,
    build_subtree,
    count_dtype,
    level_nodes,
    open_levels,
    subtree_level,
)

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
_RESUME_VERSION = 1  # bump when a subtree record or a level's bytes change meaning: older partials are discarded
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
    attribute that advertises them is written last. A partial pyramid that a
    killed build left for the same mosaic and settings is resumed: its finished
    subtrees are not built again, and the bytes are those of an uninterrupted build.

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
            at least two per worker) are built through ``run_parallel``, the levels above them here;
            at 1 (or without ``run_parallel``) the same subtrees are built here one after another.

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
    partial = root / _PARTIAL
    if not factors:
        shutil.rmtree(partial, ignore_errors=True)
        return []
    parallel = run_parallel if workers > 1 else None
    split = subtree_level(mosaic, len(factors), workers if parallel is not None else 1)
    records = SubtreeRecords(partial, _partial_key(mosaic, factors, exact, split))
    levels = _resume_or_create_levels(mosaic, records, factors, exact)
    _fill_levels(mosaic, levels, exact, records, split, parallel)
    # The records served only to resume: the renamed group holds the levels alone.
    shutil.rmtree(partial / RECORDS)
    os.replace(partial, root / OVERVIEWS_GROUP)
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
    """Stop advertising the old pyramid, then delete it (a partial one a killed build left is judged later)."""
    attrs = dict(mosaic.group.attrs)
    if "multiscales" in attrs:
        del mosaic.group.attrs["multiscales"]
    if (root / OVERVIEWS_GROUP).exists():
        shutil.rmtree(root / OVERVIEWS_GROUP)


def _partial_key(mosaic: MosaicInfo, factors: list[int], exact: bool, split: int) -> str:
    """What a partial pyramid is made from: one with another key (mosaic, method, factors, split) is discarded."""
    made_from = {
        "version": _RESUME_VERSION,
        "fingerprint": mosaic.fingerprint,
        "stored": _stored_identity(mosaic),
        "shape": [mosaic.height, mosaic.width, mosaic.chunk],
        "classes": list(mosaic.class_names),
        "transform": list(mosaic.transform.to_gdal()),
        "zarr_format": mosaic.labels.metadata.zarr_format,
        "method": _method_name(exact),
        "factors": factors,
        "split": split,
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()


def _stored_identity(mosaic: MosaicInfo) -> str:
    """A hash of the path, size and modification time of every stored ``labels``/``valid`` file.

    The fingerprint says what a mosaic was predicted from, but a mosaic written without one (or
    rewritten in place) would look the same: any chunk written since the partial was started changes
    this. One ``stat`` per chunk file, never a read of the pixels, which would cost a pass over the scene.
    """
    digest = hashlib.sha256()
    root = Path(mosaic.path)
    for name in DATA_ARRAYS:
        for folder, subfolders, files in os.walk(root / name):
            subfolders.sort()  # os.walk visits in directory order: sorted, the hash is the same everywhere
            for file in sorted(files):
                path = Path(folder, file)
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resume_or_create_levels(
    mosaic: MosaicInfo, records: SubtreeRecords, factors: list[int], exact: bool
) -> dict[int, tuple[zarr.Array, zarr.Array]]:
    """Reopen the partial pyramid a killed build with this key left, or discard any other and create the levels."""
    partial = records.folder.parent
    if partial.exists():
        if records.started():
            return open_levels(partial, len(factors))
        shutil.rmtree(partial)  # another mosaic's, other settings', or one killed before its stamp
    levels = _create_levels(mosaic, partial, factors, exact)
    records.begin()  # last: a stamped partial has every level, georeferenced
    return levels


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
    records: SubtreeRecords,
    split: int,
    run_parallel: RunParallel | None = None,
) -> None:
    """Compute and write every chunk of every level: the subtrees not yet recorded, then the levels above them.

    Every chunk of level ``split`` is the root of one subtree (its chunks and all below, written by
    one task or in turn here: no two share a chunk), recorded when done; the walk from the top then
    reads those roots' records instead of descending. Counts add the same way in any order, so the
    bytes are those of a walk of the whole tree.
    """
    partial = str(records.folder.parent)
    todo = [(row, col) for row, col in level_nodes(mosaic, split) if not records.has(split, row, col)]
    arguments = [(str(mosaic.path), partial, exact, split, row, col, records.key) for row, col in todo]
    if run_parallel is not None and arguments:
        run_parallel(build_subtree, arguments)
    else:
        for args in arguments:
            build_subtree(*args)
    builder = Builder(mosaic, levels, exact, records, split)
    for row, col in level_nodes(mosaic, len(levels)):
        builder.node(len(levels), row, col)


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
