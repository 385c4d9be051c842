"""Flood extent: water now that was not water before, as a ``flood`` array in the mosaic.

``mosaic.zarr/flood`` is uint8 (y, x), chunked like ``labels`` and georeferenced by the same
attributes (CF ``grid_mapping``, GDAL ``_CRS``)::

    0    dry: not water now (whatever it was before)
    1    permanent water: water now and before
    2    flood water: water now, not before
    255  unknown: the post-event mosaic or the reference has no data there (also the fill value)

It is computed band of chunk rows by band, each band one task of a :data:`RunTasks` (Ray tasks
in a runtime, one after another in :func:`in_process`); a band reads its own chunks of the mosaic
and of the reference (:mod:`geoseg.impact.reference`) and writes each of its chunks once.
``flood_done`` (one uint8 per chunk, chunked 1×1 like the mosaic's ``done``) is set to 1 only after
a chunk's pixels are written, so a killed run resumes at the chunks it had not finished. The
``flood`` array's ``geoseg_flood`` attribute keys what it was made from (mosaic, reference, water
class): a flood from anything else is started again, never mixed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import zarr
from affine import Affine
from rasterio.crs import CRS

from geoseg.evaluate.confusion import chunk_row_bands
from geoseg.impact.reference import ChunkGrid, Reference
from geoseg.io.mosaic import MosaicInfo, geoseg_attrs, member_array, open_mosaic
from geoseg.io.pixel_arrays import create_pixel_array
from geoseg.vectorize.classes import RunTasks, in_process

__all__ = [
    "FLOOD",
    "FLOOD_CLASSES",
    "FLOOD_DONE",
    "FloodBand",
    "FloodCounts",
    "FloodSummary",
    "flood_band",
    "flood_chunk",
    "pixel_area_m2",
    "write_flood",
]

FLOOD, FLOOD_DONE = "flood", "flood_done"
DRY, PERMANENT, FLOODED, UNKNOWN = 0, 1, 2, 255
MIN_BANDS = 8  # bands even for one worker: a killed run loses at most one band's work in flight
FLOOD_CLASSES = ("dry", "permanent_water", "flood_water")  # the names of codes 0, 1, 2
FLOOD_VERSION = 2  # bump when the meaning of the array's values changes


def flood_chunk(
    labels: np.ndarray, valid: np.ndarray, water_class: int, ref_water: np.ndarray, ref_known: np.ndarray
) -> np.ndarray:
    """The flood codes (0 dry, 1 permanent, 2 flood, 255 unknown) of one block, all inputs on its grid."""
    water = labels == water_class
    out = np.where(water, np.where(ref_water, PERMANENT, FLOODED), DRY).astype(np.uint8)
    out[(valid == 0) | ~ref_known] = UNKNOWN
    return out


@dataclass(frozen=True)
class FloodCounts:
    """Pixels of each flood code."""

    dry: int = 0
    permanent: int = 0
    flood: int = 0
    unknown: int = 0

    @classmethod
    def of(cls, codes: np.ndarray) -> FloodCounts:
        counts = np.bincount(codes.ravel(), minlength=256)
        return cls(int(counts[DRY]), int(counts[PERMANENT]), int(counts[FLOODED]), int(counts[UNKNOWN]))

    def __add__(self, other: FloodCounts) -> FloodCounts:
        return FloodCounts(
            self.dry + other.dry,
            self.permanent + other.permanent,
            self.flood + other.flood,
            self.unknown + other.unknown,
        )


@dataclass(frozen=True)
class FloodSummary:
    """What :func:`write_flood` counted over the whole mosaic.

    ``pixel_area_m2`` is the transform's pixel area in the CRS's metres (None for a geographic CRS,
    whose pixels have no one area); in a CRS whose scale is not true (Web Mercator) it is the
    projected area, not the ground area.
    """

    pixels: FloodCounts
    pixel_area_m2: float | None
    chunks: int
    chunks_computed: int  # the others were finished by an earlier, interrupted run

    def _m2(self, pixels: int) -> float | None:
        return None if self.pixel_area_m2 is None else pixels * self.pixel_area_m2

    @property
    def permanent_m2(self) -> float | None:
        return self._m2(self.pixels.permanent)

    @property
    def flood_m2(self) -> float | None:
        return self._m2(self.pixels.flood)

    @property
    def unknown_m2(self) -> float | None:
        return self._m2(self.pixels.unknown)


def pixel_area_m2(crs: CRS, transform: Affine) -> float | None:
    """One pixel's area in m² (the transform's determinant in the CRS's linear unit), None if geographic."""
    if not crs.is_projected:
        return None
    metres = crs.linear_units_factor[1]
    return abs(transform.determinant) * metres * metres


@dataclass(frozen=True)
class FloodBand:
    """One task: the chunks in pixel rows ``first_row:stop_row`` of a mosaic, against a reference."""

    mosaic: str
    reference: Reference
    water_class: int
    first_row: int
    stop_row: int


@dataclass(frozen=True)
class BandResult:
    first_row: int
    stop_row: int
    computed: int  # chunks computed by this task (the rest were done before)
    counts: FloodCounts  # every chunk of the band, computed now or before


def flood_band(band: FloodBand) -> BandResult:
    """Compute and write the band's chunks not yet done; count the codes of all of them."""
    mosaic = open_mosaic(band.mosaic, mode="r+")
    flood, done = mosaic.array(FLOOD), mosaic.array(FLOOD_DONE)
    finished = np.asarray(done[band.first_row // mosaic.chunk : -(-band.stop_row // mosaic.chunk), :])
    counts, computed = FloodCounts(), 0
    for row, col, h, w in mosaic.chunk_windows():
        if not band.first_row <= row < band.stop_row:
            continue
        if finished[(row - band.first_row) // mosaic.chunk, col // mosaic.chunk]:
            codes = np.asarray(flood[row : row + h, col : col + w])  # counted again, not recomputed
        else:
            labels = np.asarray(mosaic.labels[row : row + h, col : col + w])
            valid = np.asarray(mosaic.valid[row : row + h, col : col + w])
            before = band.reference.read(ChunkGrid.of(mosaic, row, col, h, w), band.water_class)
            codes = flood_chunk(labels, valid, band.water_class, before.water, before.known)
            flood[row : row + h, col : col + w] = codes
            done[row // mosaic.chunk, col // mosaic.chunk] = 1  # only once the pixels are written
            computed += 1
        counts += FloodCounts.of(codes)
    return BandResult(band.first_row, band.stop_row, computed, counts)


def _flood_key(mosaic: MosaicInfo, reference: Reference, water_class: int) -> str:
    """What the flood is made from: the post-event mosaic's state, the reference's, the water class."""
    made_from = {
        "version": FLOOD_VERSION,
        "fingerprint": mosaic.fingerprint,
        "done": hashlib.sha256(np.asarray(mosaic.array("done")[:]).tobytes()).hexdigest(),
        "shape": [mosaic.height, mosaic.width, mosaic.chunk],
        "water_class": water_class,
        "reference": reference.made_from(),
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()


def _kept_key(group: zarr.Group) -> str | None:
    """The key of a flood a run began, if both its arrays are there."""
    if FLOOD not in group or FLOOD_DONE not in group:
        return None
    made = member_array(group, FLOOD).attrs.get("geoseg_flood")
    return str(made["key"]) if isinstance(made, dict) and "key" in made else None


def _create_flood_arrays(mosaic: MosaicInfo, key: str) -> None:
    """(Re)create empty ``flood`` and ``flood_done`` beside ``labels``, with its georeferencing attributes."""
    zarr_format = int(geoseg_attrs(mosaic.group).get("zarr_format", 2))
    if FLOOD_DONE in mosaic.group:  # done first: a half-made pair is never taken for a resumable one
        del mosaic.group[FLOOD_DONE]
    meaning = {
        "long_name": "flood extent: water now that was not water before",
        "flag_values": [DRY, PERMANENT, FLOODED, UNKNOWN],
        "flag_meanings": "dry permanent_water flood_water unknown",
        "class_names": list(FLOOD_CLASSES),  # read as labels by the vectorizer (flood_extent polygons)
    }
    # A chunk never computed reads as unknown, not as dry.
    flood = create_pixel_array(mosaic, FLOOD, dtype="uint8", fill_value=UNKNOWN, meaning=meaning)
    rows, cols = mosaic.grid
    done = mosaic.group.create_array(
        FLOOD_DONE,
        shape=(rows, cols),
        chunks=(1, 1),  # one file per chunk's mark: one writer each, no read-modify-write
        dtype="uint8",
        fill_value=0,
        dimension_names=["chunk_row", "chunk_col"] if zarr_format == 3 else None,
    )
    if zarr_format == 2:
        done.attrs["_ARRAY_DIMENSIONS"] = ["chunk_row", "chunk_col"]
    done.attrs["long_name"] = "1 once the flood chunk at this chunk row/column is written"
    flood.attrs["geoseg_flood"] = {"key": key}  # last: the pair is whole


def write_flood(
    mosaic_path: str | Path,
    reference: Reference,
    water_class: int,
    run_tasks: RunTasks = in_process,
    bands: int = MIN_BANDS,
) -> FloodSummary:
    """Write (or finish) the mosaic's ``flood`` array against ``reference`` and count its codes.

    Args:
        mosaic_path: the post-event ``mosaic.zarr``.
        reference: what was water before (:class:`~geoseg.impact.reference.PreEventMosaic` or
            :class:`~geoseg.impact.reference.PermanentWater`).
        water_class: the class index of water in the model's classes.
        run_tasks: runs the band tasks (Ray tasks in a runtime).
        bands: about how many bands of chunk rows to split the mosaic into.

    Raises:
        ValueError: ``water_class`` is not one of the mosaic's classes.
    """
    mosaic = open_mosaic(mosaic_path, mode="r+")
    if not 0 <= water_class < len(mosaic.class_names):
        raise ValueError(
            f"{mosaic_path}: water class {water_class} is not one of the mosaic's classes {mosaic.class_names!r}"
        )
    key = _flood_key(mosaic, reference, water_class)
    if _kept_key(mosaic.group) != key:
        _create_flood_arrays(mosaic, key)
    requests = [
        (FloodBand(str(mosaic_path), reference, water_class, first, stop),)
        for first, stop in chunk_row_bands(mosaic.height, mosaic.chunk, bands)
    ]
    counts, computed = FloodCounts(), 0
    for result in cast(Iterable[BandResult], run_tasks(flood_band, requests)):
        counts += result.counts
        computed += result.computed
    rows, cols = mosaic.grid
    return FloodSummary(counts, pixel_area_m2(mosaic.crs, mosaic.transform), rows * cols, computed)
