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
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr
from affine import Affine

from geoseg.errors import InputRasterError, JobConfigError
from geoseg.io.mosaic import DATA_ARRAYS, MosaicInfo, geoseg_attrs, member_array, open_mosaic
from geoseg.io.multiscales import OVERVIEWS_GROUP, level_shape, multiscales, write_coords

__all__ = ["OVERVIEWS_GROUP", "build_overviews", "list_overviews", "overview_factors", "read_overview"]

_PARTIAL = "_overviews_partial"  # built here, renamed to OVERVIEWS_GROUP when complete
_DEFAULT_MAX_MEMORY = 512 * 2**20


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


def _count_dtype(level: int) -> np.dtype:
    # A per-class count at level k is at most 4**k: the narrowest type keeps the
    # accumulators small (uint8 up to factor 8, uint16 up to factor 128).
    top = 4**level
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _block_add(dest: np.ndarray, child: np.ndarray, row0: int, col0: int) -> None:
    """Add the 2×2 block sums of ``child`` (…, h, w) into ``dest`` (…, H, W).

    ``row0``/``col0`` are the child's origin in the parent's grid at *child*
    resolution. When it is odd (odd chunk sides), a parent pixel straddles two
    children: pad one zero row/column in front so the blocks line up with the
    parent's, and let the neighbour child add its half.
    """
    pr, pc = row0 % 2, col0 % 2
    h, w = child.shape[-2:]
    hh, ww = -(-(h + pr) // 2), -(-(w + pc) // 2)
    if pr or pc or h % 2 or w % 2:
        padded = np.zeros((*child.shape[:-2], 2 * hh, 2 * ww), dtype=child.dtype)
        padded[..., pr : pr + h, pc : pc + w] = child
    else:
        padded = child
    # Four strided adds: several times faster than reshape(…, 2, …, 2).sum(axes).
    sums = padded[..., 0::2, 0::2].astype(dest.dtype)
    sums += padded[..., 1::2, 0::2]
    sums += padded[..., 0::2, 1::2]
    sums += padded[..., 1::2, 1::2]
    r, c = row0 // 2, col0 // 2
    dest[..., r : r + hh, c : c + ww] += sums[..., : dest.shape[-2] - r, : dest.shape[-1] - c]


def _place(dest: np.ndarray, child: np.ndarray, row0: int, col0: int) -> None:
    h, w = child.shape[-2:]
    dest[..., row0 : row0 + h, col0 : col0 + w] = child


def _weighted_mode(labels: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 mode of ``labels`` (2H, 2W), each vote weighted by ``weight``; ties → lowest label."""
    h2, w2 = labels.shape
    cand = labels.reshape(h2 // 2, 2, w2 // 2, 2).transpose(1, 3, 0, 2).reshape(4, h2 // 2, w2 // 2)
    wts = weight.reshape(h2 // 2, 2, w2 // 2, 2).transpose(1, 3, 0, 2).reshape(4, h2 // 2, w2 // 2).astype(np.int64)
    score = np.zeros(cand.shape, dtype=np.int64)
    for i in range(4):
        for j in range(4):
            score[i] += np.where(cand[i] == cand[j], wts[j], 0)
    # Candidates with no valid pixel get no score; composite key = score, then the lower label.
    key = np.where(wts > 0, score * 256 + (255 - cand.astype(np.int64)), -1)
    best = np.take_along_axis(cand, key.argmax(axis=0)[None], axis=0)[0]
    total = wts.sum(axis=0)
    return np.where(total > 0, best, 0).astype(np.uint8), total


class _Builder:
    """Depth-first walk of the chunk quadtree, writing each level's chunks as they complete."""

    def __init__(self, mosaic: MosaicInfo, levels: dict[int, tuple[zarr.Array, zarr.Array]], exact: bool):
        self.mosaic = mosaic
        self.levels = levels  # level k → (labels, valid) arrays
        self.exact = exact
        self.classes = max(len(mosaic.class_names), 1)
        self.chunk = mosaic.chunk

    def node(self, level: int, row: int, col: int):
        """Counts (exact) or (labels, weight) (cascade) of chunk (row, col) of ``level``."""
        c = self.chunk
        height, width = level_shape(self.mosaic.height, self.mosaic.width, level)
        h, w = min(c, height - row * c), min(c, width - col * c)
        if level == 0:
            return self._base(row * c, col * c, h, w)
        if self.exact:
            acc = np.zeros((self.classes, h, w), dtype=_count_dtype(level))
        else:
            # Children are placed at their own resolution, then reduced 2×2 at once,
            # so odd chunk sides need no special case.
            lab = np.zeros((2 * h, 2 * w), dtype=np.uint8)
            wts = np.zeros((2 * h, 2 * w), dtype=_count_dtype(level))
        child_h, child_w = level_shape(self.mosaic.height, self.mosaic.width, level - 1)
        for i in (0, 1):
            for j in (0, 1):
                crow, ccol = 2 * row + i, 2 * col + j
                if crow * c >= child_h or ccol * c >= child_w:
                    continue
                child = self.node(level - 1, crow, ccol)
                if self.exact:
                    _block_add(acc, child, i * c, j * c)
                else:
                    _place(lab, child[0], i * c, j * c)
                    _place(wts, child[1], i * c, j * c)
        result: np.ndarray | tuple[np.ndarray, np.ndarray]
        if self.exact:
            valid = acc.any(axis=0)
            # argmax returns the first maximum: ties go to the lowest class index.
            labels = np.where(valid, acc.argmax(axis=0), 0).astype(np.uint8)
            result = acc
        else:
            labels, weight = _weighted_mode(lab, wts)
            valid = weight > 0
            result = (labels, weight.astype(_count_dtype(level)))
        out_labels, out_valid = self.levels[level]
        out_labels[row * c : row * c + h, col * c : col * c + w] = labels
        out_valid[row * c : row * c + h, col * c : col * c + w] = valid.astype(np.uint8)
        return result

    def _base(self, row_off: int, col_off: int, h: int, w: int):
        labels = np.asarray(self.mosaic.labels[row_off : row_off + h, col_off : col_off + w])
        valid = np.asarray(self.mosaic.valid[row_off : row_off + h, col_off : col_off + w]) != 0
        if valid.any():
            top = int(labels[valid].max())
            if top >= self.classes:
                raise InputRasterError(
                    f"{self.mosaic.path}: labels hold class {top} at chunk ({row_off}, {col_off}) but the mosaic "
                    f"names only {self.classes} classes {list(self.mosaic.class_names)!r}; run `geoseg predict` again"
                )
        if self.exact:
            counts = np.zeros((self.classes, h, w), dtype=np.uint8)
            for k in range(self.classes):
                counts[k] = (labels == k) & valid
            return counts
        return np.where(valid, labels, 0).astype(np.uint8), valid.astype(np.uint8)


def build_overviews(
    mosaic_path: str | Path,
    *,
    min_side: int = 256,
    method: Literal["auto", "exact", "cascade"] = "auto",
    max_memory: int = _DEFAULT_MAX_MEMORY,
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
    _fill_levels(mosaic, levels, exact)
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
    exact_bytes = sum(classes * mosaic.chunk**2 * _count_dtype(k).itemsize for k in range(levels + 1))
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


def _fill_levels(mosaic: MosaicInfo, levels: dict[int, tuple[zarr.Array, zarr.Array]], exact: bool) -> None:
    """Compute and write every chunk of every level: one depth-first walk down from each top-level chunk."""
    builder = _Builder(mosaic, levels, exact)
    top = len(levels)
    top_h, top_w = level_shape(mosaic.height, mosaic.width, top)
    for row in range(-(-top_h // mosaic.chunk)):
        for col in range(-(-top_w // mosaic.chunk)):
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
