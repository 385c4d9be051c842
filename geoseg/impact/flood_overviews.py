"""Overview levels of the ``flood`` array, beside the labels' own (``overviews/<f>/flood``).

The labels' pyramid (:mod:`geoseg.io.overviews`) is built when prediction ends; the flood comes
later, so its levels are added to the same level groups (same factors, grids, coordinates and
CRS) once the flood is complete. Each level is the 2×2 mode of the level below, unknown pixels
(255) left out of the vote and ties going to the higher code, so flood water, the thing looked
for, stays visible where it is half the block. A mode of modes is what viewing needs (it is the
``cascade`` method of the labels' pyramid, unweighted); each level chunk is read and written once,
so memory is one chunk's 2×2 block whatever the survey's size. The root's ``multiscales``
attribute gains a ``flood`` entry when every level is written; levels made from another flood
(another ``geoseg_flood`` key) are written again.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import numpy as np
import zarr

from geoseg.impact.flood import FLOOD, FLOOD_CLASSES, UNKNOWN
from geoseg.io.mosaic import MosaicInfo, member_array, open_mosaic
from geoseg.io.multiscales import OVERVIEWS_GROUP, level_shape
from geoseg.io.overviews import list_overviews

__all__ = ["flood_mode_2x2", "write_flood_overviews"]

CODES = len(FLOOD_CLASSES)  # 0 dry, 1 permanent, 2 flood


def flood_mode_2x2(codes: np.ndarray) -> np.ndarray:
    """The 2×2 mode of flood codes (H, W; odd edges count the pixels they have): unknown left out, ties → higher."""
    h, w = codes.shape
    padded = np.full((h + h % 2, w + w % 2), UNKNOWN, np.uint8)
    padded[:h, :w] = codes
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    votes = np.stack([(blocks == code).sum(axis=(1, 3)) for code in range(CODES)])
    best = (CODES - 1 - votes[::-1].argmax(axis=0)).astype(np.uint8)  # reversed: the higher code wins a tie
    return np.where(votes.sum(axis=0) > 0, best, UNKNOWN).astype(np.uint8)


def _level_array(mosaic: MosaicInfo, group: zarr.Group, key: str) -> zarr.Array:
    """(Re)create a level's empty ``flood`` array, attributed like the base flood and chunked like the level."""
    labels = member_array(group, "labels")
    if FLOOD in group:
        del group[FLOOD]
    array = group.create_array(
        FLOOD,
        shape=labels.shape,
        chunks=labels.chunks,
        dtype="uint8",
        fill_value=UNKNOWN,
        dimension_names=["y", "x"] if labels.metadata.zarr_format == 3 else None,
    )
    level = cast(dict[str, Any], labels.attrs.get("geoseg", {}))
    attrs = dict(mosaic.array(FLOOD).attrs) | {"geoseg": dict(level) | {"resampling": "mode"}}
    attrs["geoseg_flood"] = {"key": key, "complete": False}
    array.attrs.update(attrs)
    return array


def _fill(source: zarr.Array, target: zarr.Array, chunk: int) -> None:
    """Each chunk of ``target`` from the 2×2 mode of its block of ``source`` (one read and one write each)."""
    height, width = target.shape
    for row in range(0, height, chunk):
        for col in range(0, width, chunk):
            block = np.asarray(source[2 * row : 2 * (row + chunk), 2 * col : 2 * (col + chunk)])
            target[row : row + chunk, col : col + chunk] = flood_mode_2x2(block)[: height - row, : width - col]


def _advertise(mosaic: MosaicInfo) -> None:
    """Add (or replace) the ``flood`` entry of the root's ``multiscales``: the labels' entry with flood's paths."""
    entries = list(cast(list[dict[str, Any]], mosaic.group.attrs.get("multiscales") or []))
    labels = next((e for e in entries if e.get("name") == "labels"), None)
    if labels is None:
        return
    flood = copy.deepcopy(labels)
    flood["name"] = FLOOD
    flood["type"] = "mode"
    for dataset in flood["datasets"]:
        dataset["path"] = dataset["path"].rsplit("labels", 1)[0] + FLOOD
    mosaic.group.attrs["multiscales"] = [e for e in entries if e.get("name") != FLOOD] + [flood]


def write_flood_overviews(mosaic_path: str) -> list[int]:
    """Write the flood's levels for every level of the labels' pyramid (none written again if current)."""
    mosaic = open_mosaic(mosaic_path, mode="r+")
    factors = list_overviews(mosaic_path)
    made = cast(dict[str, Any], mosaic.array(FLOOD).attrs["geoseg_flood"])
    key = str(made["key"])
    groups = [cast(zarr.Group, mosaic.group[f"{OVERVIEWS_GROUP}/{f}"]) for f in factors]
    current = [
        FLOOD in g and member_array(g, FLOOD).attrs.get("geoseg_flood") == {"key": key, "complete": True}
        for g in groups
    ]
    if all(current):
        return factors
    source = mosaic.array(FLOOD)
    for level, (factor, group) in enumerate(zip(factors, groups, strict=True), start=1):
        target = _level_array(mosaic, group, key)
        assert target.shape == level_shape(mosaic.height, mosaic.width, level), factor
        _fill(source, target, mosaic.chunk)
        target.attrs["geoseg_flood"] = {"key": key, "complete": True}  # last: a half-written level is redone
        source = target
    _advertise(mosaic)
    return factors
