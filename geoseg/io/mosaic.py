"""The georeferenced Zarr mosaic that prediction writes and later stages read.

Layout (Zarr format 2 by default, so GDAL >= 3.4 and xarray both read it)::

    mosaic.zarr/
      labels       uint8  (y, x)  class index per pixel; 0 where invalid
      valid        uint8  (y, x)  1 where the input had data, 0 for nodata/alpha
      scores       uint8  (class, y, x)  optional: softmax probability × 255, rounded
      x, y         float64        pixel-centre coordinates in the scene CRS
      spatial_ref  int32 scalar   CF grid mapping: crs_wkt, spatial_ref, GeoTransform
      done         uint8  (chunk rows, chunk cols)  1 once that chunk is written (2: written invalid, unread)

``done`` has one element per Zarr chunk of ``labels`` and is itself chunked
1×1, so marking a chunk done is a write to a file of its own: still one writer
per chunk, no read-modify-write. A chunk is marked only after its pixels are
written, so a killed run never counts a chunk it did not finish. A chunk whose tile could not
be read (``predict.on_read_error: skip``) is written all 0, as outside the data, and marked
:data:`UNREAD`: the next run that predicts retries it. ``geoseg.unread_tiles`` says why.

Georeferencing is written three ways (DESIGN.md §4): CF (``grid_mapping`` on every
data array pointing at ``spatial_ref``), GDAL's ``_CRS`` attribute, and the 1-D
``x``/``y`` coordinate arrays from which GDAL derives the geotransform.
Chunks are square, ``chunk`` pixels a side, and equal to the prediction tile's
core, so each chunk is written exactly once by one task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import InputRasterError

__all__ = [
    "DATA_ARRAYS",
    "DONE",
    "UNREAD",
    "MosaicInfo",
    "UnreadTile",
    "create_mosaic",
    "done_chunks",
    "geoseg_attrs",
    "leave_invalid",
    "mark_done",
    "member_array",
    "open_mosaic",
    "write_block",
]

DATA_ARRAYS = ("labels", "valid")
DONE, UNREAD = 1, 2  # values of ``done``: predicted; left invalid because its tile could not be read


@dataclass(frozen=True)
class UnreadTile:
    """A tile whose pixels could not be read: its core (``row``, ``col``, ``height``, ``width``) is left invalid."""

    file: str
    tile: int  # the tile's index in the tile plan
    row: int
    col: int
    height: int
    width: int
    reason: str  # GDAL's words, e.g. ``TIFFReadEncodedTile() failed.``


def member_array(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]``, typed as the array it is (zarr types every member as ``Array | Group``)."""
    return cast(zarr.Array, group[name])


def geoseg_attrs(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    """The ``geoseg`` attribute of a mosaic group or level (zarr types attribute values as any JSON)."""
    return cast(dict[str, Any], node.attrs["geoseg"])


_KEPT_OPEN = frozenset({"labels", "valid", "done", "scores"})  # made with the mosaic, never removed from it


@dataclass(frozen=True)
class MosaicInfo:
    """What a reader needs to know about a mosaic, plus the open group."""

    path: Path
    group: zarr.Group
    height: int
    width: int
    chunk: int
    crs: CRS
    transform: Affine
    class_names: tuple[str, ...]
    fingerprint: dict
    labels_name: str = "labels"  # another class-coded array read as labels (pixel_arrays.labels_view)
    # The arrays every chunk's write touches, opened once: opening one reads its metadata from
    # storage (0.6 ms locally, a request on object storage), three times per tile otherwise.
    _kept: dict[str, zarr.Array] = field(default_factory=dict, compare=False, repr=False)

    @property
    def labels(self) -> zarr.Array:
        return self.array(self.labels_name)

    @property
    def valid(self) -> zarr.Array:
        return self.array("valid")

    def array(self, name: str) -> zarr.Array:
        """The group's array ``name`` (``scores``, ``done``, ``instances``, …)."""
        if name not in _KEPT_OPEN:  # others come and go (blend scratch, overview levels): looked up each time
            return member_array(self.group, name)
        if name not in self._kept:
            self._kept[name] = member_array(self.group, name)
        return self._kept[name]

    @property
    def has_scores(self) -> bool:
        return "scores" in self.group

    @property
    def grid(self) -> tuple[int, int]:
        """Chunks down and across."""
        return -(-self.height // self.chunk), -(-self.width // self.chunk)

    def chunk_windows(self):
        """Yield ``(row_off, col_off, height, width)`` for every chunk, row-major."""
        for row in range(0, self.height, self.chunk):
            for col in range(0, self.width, self.chunk):
                yield row, col, min(self.chunk, self.height - row), min(self.chunk, self.width - col)


def _pixel_centres(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    # Coordinates name pixel *centres* (CF and xarray convention), hence the +0.5.
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    return x, y


def _layout(chunk: int, zarr_format: int, leading: int | None = None) -> dict:
    """Chunking for one tile core per writer.

    Format 2: the core is the chunk. Format 3: the core is a *shard* (the unit a
    writer owns: zarr-python loses data when two writers touch one shard) made of
    smaller inner chunks, so readers can fetch less than a whole core.
    """
    lead = (leading,) if leading else ()
    if zarr_format == 2:
        return {"chunks": (*lead, chunk, chunk)}
    inner = chunk // 2 if chunk % 2 == 0 and chunk >= 256 else chunk
    return {"shards": (*lead, chunk, chunk), "chunks": (*lead, inner, inner)}


def _dims(zarr_format: int, names: list[str]) -> dict:
    """Dimension names, each format its way.

    Format 3 stores them natively (``dimension_names``); format 2 has no such field, so xarray's
    ``_ARRAY_DIMENSIONS`` attribute carries them instead. Returns the keyword for ``create_array``.
    """
    return {"dimension_names": names if zarr_format == 3 else None}


def _set_v2_dims(arr: zarr.Array, zarr_format: int, names: list[str]) -> None:
    """Record ``names`` as xarray's ``_ARRAY_DIMENSIONS`` on a format-2 array (see :func:`_dims`)."""
    if zarr_format == 2:
        arr.attrs["_ARRAY_DIMENSIONS"] = names


def _check_north_up(path: str | Path, transform: Affine) -> None:
    """Refuse rotated or sheared grids: chunks and ``x``/``y`` coordinates assume north-up pixels."""
    if transform.b != 0 or transform.d != 0:
        raise InputRasterError(
            f"{path}: rotated or sheared geotransforms are not supported (got {tuple(transform)[:6]!r}); "
            "warp the scene to a north-up grid first (gdalwarp)"
        )


def _create_data_arrays(
    group: zarr.Group,
    *,
    height: int,
    width: int,
    chunk: int,
    wkt: str,
    class_names: list[str] | tuple[str, ...],
    zarr_format: int,
) -> None:
    """``labels`` and ``valid``: uint8 ``(y, x)``, 0 until written, georeferenced by CF and ``_CRS``."""
    dims = ["y", "x"]
    for name in DATA_ARRAYS:
        arr = group.create_array(
            name,
            shape=(height, width),
            dtype="uint8",
            fill_value=0,
            **_dims(zarr_format, dims),
            **_layout(chunk, zarr_format),
        )
        attrs: dict[str, Any] = {"grid_mapping": "spatial_ref", "_CRS": {"wkt": wkt}, "coordinates": "y x"}
        if zarr_format == 2:
            attrs["_ARRAY_DIMENSIONS"] = dims
        arr.attrs.update(attrs)
    member_array(group, "labels").attrs.update(
        {
            "long_name": "class index",
            "flag_values": list(range(len(class_names))),
            "flag_meanings": " ".join(class_names),
            "class_names": list(class_names),
        }
    )
    member_array(group, "valid").attrs.update({"long_name": "1 where the input scene has data, 0 for nodata or alpha"})


def _create_scores(
    group: zarr.Group,
    *,
    height: int,
    width: int,
    chunk: int,
    wkt: str,
    class_names: list[str] | tuple[str, ...],
    zarr_format: int,
) -> None:
    """``scores``: uint8 ``(class, y, x)`` probabilities × 255, CF-scaled back by 1/255."""
    # One chunk holds every class of one core, so the one-writer-per-chunk rule still holds.
    arr = group.create_array(
        "scores",
        shape=(len(class_names), height, width),
        dtype="uint8",
        fill_value=0,
        **_dims(zarr_format, ["class", "y", "x"]),
        **_layout(chunk, zarr_format, leading=len(class_names)),
    )
    arr.attrs.update(
        {
            "grid_mapping": "spatial_ref",
            "_CRS": {"wkt": wkt},
            "coordinates": "y x",
            "long_name": "class probability",
            "scale_factor": 1 / 255,
            "add_offset": 0.0,
            "class_names": list(class_names),
        }
    )
    _set_v2_dims(arr, zarr_format, ["class", "y", "x"])


def _create_coordinates(
    group: zarr.Group, *, height: int, width: int, crs: CRS, transform: Affine, zarr_format: int
) -> None:
    """The 1-D ``x`` and ``y`` pixel-centre coordinates, from which GDAL derives the geotransform."""
    x, y = _pixel_centres(transform, height, width)
    for name, values, dim in (("x", x, "x"), ("y", y, "y")):
        coord = group.create_array(
            name, shape=values.shape, chunks=values.shape, dtype="float64", **_dims(zarr_format, [dim])
        )
        coord[:] = values
        coord.attrs.update(
            {
                "units": "m" if crs.is_projected else "degrees",
                "standard_name": "projection_x_coordinate" if dim == "x" else "projection_y_coordinate",
            }
        )
        _set_v2_dims(coord, zarr_format, [dim])


def _create_spatial_ref(group: zarr.Group, *, wkt: str, gdal_transform: tuple, zarr_format: int) -> None:
    """The CF grid-mapping variable: a scalar whose attributes hold the CRS and the geotransform."""
    ref = group.create_array("spatial_ref", shape=(), dtype="int32", **_dims(zarr_format, []))
    ref[...] = 0
    ref.attrs.update(
        {
            "crs_wkt": wkt,
            "spatial_ref": wkt,  # GDAL and older rioxarray read this key
            "GeoTransform": " ".join(repr(float(v)) for v in gdal_transform),
        }
    )
    _set_v2_dims(ref, zarr_format, [])


def _create_done(group: zarr.Group, *, height: int, width: int, chunk: int, zarr_format: int) -> None:
    """``done``: one uint8 per chunk, chunked 1×1 so marking a chunk writes a file of its own."""
    rows, cols = -(-height // chunk), -(-width // chunk)
    done = group.create_array(
        "done",
        shape=(rows, cols),
        chunks=(1, 1),
        dtype="uint8",
        fill_value=0,
        **_dims(zarr_format, ["chunk_row", "chunk_col"]),
    )
    _set_v2_dims(done, zarr_format, ["chunk_row", "chunk_col"])
    done.attrs["long_name"] = "1 once the chunk at this chunk row/column is written; 2: written invalid (unreadable)"


def create_mosaic(
    path: str | Path,
    *,
    height: int,
    width: int,
    chunk: int,
    crs: CRS,
    transform: Affine,
    class_names: list[str] | tuple[str, ...],
    zarr_format: Literal[2, 3] = 2,
    fingerprint: dict | None = None,
    scores: bool = False,
) -> MosaicInfo:
    """Create an empty mosaic (overwriting ``path``) and return it opened ``r+``, for writing.

    Args:
        path: the ``.zarr`` folder to (re)create.
        height: the scene's height in pixels.
        width: the scene's width in pixels.
        chunk: pixels a side of a chunk (format 2) or shard (format 3): the tile core.
        crs: the scene's CRS.
        transform: the scene's geotransform; it must be north-up.
        class_names: the model's classes, in class-index order.
        zarr_format: 2 (readable by GDAL >= 3.4) or 3 (sharded).
        fingerprint: what the mosaic was made from (e.g. the checkpoint's hash), kept in the ``geoseg`` attributes.
        scores: also create the per-class ``scores`` array.

    Raises:
        InputRasterError: the geotransform is rotated or sheared.
    """
    _check_north_up(path, transform)
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    wkt = crs.to_wkt()
    gdal_transform = transform.to_gdal()
    grid = {"height": height, "width": width, "chunk": chunk, "zarr_format": zarr_format}
    _create_data_arrays(group, wkt=wkt, class_names=class_names, **grid)
    if scores:
        _create_scores(group, wkt=wkt, class_names=class_names, **grid)
    _create_coordinates(group, height=height, width=width, crs=crs, transform=transform, zarr_format=zarr_format)
    _create_spatial_ref(group, wkt=wkt, gdal_transform=gdal_transform, zarr_format=zarr_format)
    _create_done(group, **grid)
    group.attrs.update(
        {
            "geoseg": {
                "fingerprint": fingerprint or {},
                "zarr_format": zarr_format,
                "crs_wkt": wkt,
                "transform": list(gdal_transform),
                "chunk": chunk,
                "class_names": list(class_names),
                "height": height,
                "width": width,
            }
        }
    )
    return open_mosaic(path, mode="r+")


def open_mosaic(path: str | Path, mode: Literal["r", "r+"] = "r") -> MosaicInfo:
    """Open a mosaic written by :func:`create_mosaic` and read its georeferencing."""
    path = Path(path)
    if not path.exists():
        raise InputRasterError(f"{path}: mosaic not found; run `geoseg predict` first")
    try:
        group = zarr.open_group(str(path), mode=mode)
        meta = dict(geoseg_attrs(group))
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise InputRasterError(f"{path}: not a geoseg mosaic ({exc}); run `geoseg predict` again") from None
    return MosaicInfo(
        path=path,
        group=group,
        height=int(meta["height"]),
        width=int(meta["width"]),
        chunk=int(meta["chunk"]),
        crs=CRS.from_wkt(meta["crs_wkt"]),
        transform=Affine.from_gdal(*meta["transform"]),
        class_names=tuple(meta["class_names"]),
        fingerprint=dict(meta.get("fingerprint", {})),
    )


def write_block(
    mosaic: MosaicInfo,
    row_off: int,
    col_off: int,
    labels: np.ndarray,
    valid: np.ndarray,
    scores: np.ndarray | None = None,
) -> None:
    """Write one chunk-aligned block. Callers guarantee one writer per chunk."""
    if row_off % mosaic.chunk or col_off % mosaic.chunk:
        raise ValueError(f"block at ({row_off}, {col_off}) is not aligned to {mosaic.chunk}-pixel chunks")
    h, w = labels.shape
    mosaic.labels[row_off : row_off + h, col_off : col_off + w] = labels
    mosaic.valid[row_off : row_off + h, col_off : col_off + w] = valid
    if scores is not None:
        mosaic.array("scores")[:, row_off : row_off + h, col_off : col_off + w] = scores


def mark_done(mosaic: MosaicInfo, row_off: int, col_off: int, state: int = DONE) -> None:
    """Record that the chunk at pixel (row_off, col_off) is completely written (``state``: DONE or UNREAD)."""
    mosaic.array("done")[row_off // mosaic.chunk, col_off // mosaic.chunk] = state


def leave_invalid(mosaic: MosaicInfo, row_off: int, col_off: int, height: int, width: int) -> None:
    """Write a chunk whose tile could not be read as a tile outside the data is written, and mark it UNREAD."""
    zeros = np.zeros((height, width), np.uint8)
    scores = np.zeros((len(mosaic.class_names), height, width), np.uint8) if mosaic.has_scores else None
    write_block(mosaic, row_off, col_off, zeros, zeros, scores)
    mark_done(mosaic, row_off, col_off, UNREAD)


def done_chunks(mosaic: MosaicInfo, state: int | None = None) -> set[tuple[int, int]]:
    """(chunk row, chunk col) of every chunk marked done (predicted, or left invalid because unread), or ``state``."""
    done = np.asarray(mosaic.array("done")[:])
    rows, cols = np.nonzero(done > 0 if state is None else done == state)
    return set(zip(rows.tolist(), cols.tolist(), strict=True))
