"""Panoptic arrays: per pixel one class and one instance id, things from an instance mosaic over stuff.

Kirillov, He, Girshick, Rother & Dollár, "Panoptic Segmentation", CVPR 2019 (arXiv:1801.00868): every
pixel gets a class and, for a *thing* class, the id of the object it belongs to; *stuff* (water,
roads, vegetation) has no instances. Two models make it here, as in Panoptic FPN's heuristic merge
(Kirillov, Girshick, He & Dollár, CVPR 2019, arXiv:1901.02446): an instance mosaic (Mask R-CNN,
merged across tiles, ids 1..N) for the things and a semantic mosaic for the stuff, on one grid:

- a pixel of an instance whose detection score is at least ``min_score`` takes the instance's class
  and id (the cross-tile merge already gave each pixel at most one instance: the higher score won);
- any other pixel takes the semantic class with id 0, except where the semantic model says a thing
  class that no kept instance covers: that is void (:data:`VOID`), as Panoptic FPN leaves it;
- pixels without data (``valid`` 0 in the semantic mosaic) are void.

``panoptic_class`` (uint8, the job's class index, 255 void) and ``panoptic_id`` (uint32, 0 for stuff and
void) are written beside ``labels`` in the semantic mosaic, chunk by chunk, a band of chunk rows at a
time; a band reads only the instance-table rows whose box meets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from geoseg.io.instances import INSTANCES
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.io.pixel_arrays import create_pixel_array

__all__ = [
    "PANOPTIC_CLASS",
    "PANOPTIC_ID",
    "VOID",
    "PanopticRequest",
    "compose_band",
    "create_panoptic_arrays",
]

PANOPTIC_CLASS = "panoptic_class"
PANOPTIC_ID = "panoptic_id"
VOID = 255


@dataclass(frozen=True)
class PanopticRequest:
    """One band of chunk rows to compose (picklable: a Ray task's argument).

    ``thing_classes[k]``: the job's class index of the instance mosaic's class k (VOID where the job has none).
    """

    mosaic: str
    things: str
    table: str
    thing_classes: tuple[int, ...]
    min_score: float
    first_row: int
    stop_row: int


def create_panoptic_arrays(mosaic: MosaicInfo, class_names: Sequence[str]) -> None:
    """Add (or replace) the two empty arrays beside ``labels``."""
    names = {"class_names": list(class_names), "flag_values": [*range(len(class_names)), VOID]}
    meaning = {"long_name": "panoptic class (255: void)", **names}
    create_pixel_array(mosaic, PANOPTIC_CLASS, dtype="uint8", fill_value=VOID, meaning=meaning)
    meaning = {"long_name": "panoptic instance id (0: stuff or void); see the instance mosaic's instances.parquet"}
    create_pixel_array(mosaic, PANOPTIC_ID, dtype="uint32", fill_value=0, meaning=meaning)


def _kept_instances(request: PanopticRequest) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids of the band's instances scored at least ``min_score``, and their job class indexes."""
    filters = [("row_min", "<", request.stop_row), ("row_max", ">", request.first_row)]
    table = pq.read_table(request.table, columns=["id", "class_id", "score"], filters=filters)
    ids = table["id"].to_numpy().astype(np.uint32)
    class_ids = table["class_id"].to_numpy().astype(np.int64)
    scores = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    lookup = np.asarray(request.thing_classes, np.int64)
    # A connected-component table has no scores (NaN): its instances are kept.
    kept = (np.isnan(scores) | (scores >= request.min_score)) & (lookup[class_ids] != VOID)
    order = np.argsort(ids[kept], kind="stable")
    return ids[kept][order], lookup[class_ids[kept]][order].astype(np.uint8)


def compose_band(request: PanopticRequest) -> dict[str, int]:
    """Write the band's chunks of ``panoptic_class`` and ``panoptic_id``; return its pixel counts."""
    mosaic, things = open_mosaic(request.mosaic, mode="r+"), open_mosaic(request.things)
    rows = slice(request.first_row, request.stop_row)
    semantic = np.asarray(mosaic.labels[rows, :])
    valid = np.asarray(mosaic.valid[rows, :]) > 0
    ids = np.asarray(things.array(INSTANCES)[rows, :])
    kept_ids, kept_classes = _kept_instances(request)
    at = np.clip(np.searchsorted(kept_ids, ids), 0, max(len(kept_ids) - 1, 0))
    thing = (ids > 0) & (kept_ids[at] == ids) if len(kept_ids) else np.zeros(ids.shape, bool)
    classes = semantic.copy()
    classes[thing] = kept_classes[at[thing]]
    thing_class_ids = [c for c in set(request.thing_classes) if c != VOID]
    classes[~thing & np.isin(semantic, thing_class_ids)] = VOID  # a thing the instance model did not find
    classes[~valid] = VOID
    instance_ids = np.where(thing & valid, ids, 0).astype(np.uint32)
    mosaic.array(PANOPTIC_CLASS)[rows, :] = classes
    mosaic.array(PANOPTIC_ID)[rows, :] = instance_ids
    return {
        "thing_pixels": int(np.count_nonzero(instance_ids)),
        "void_pixels": int(np.count_nonzero(classes == VOID)),
        "pixels": int(classes.size),
    }


def same_grid_problem(mosaic: MosaicInfo, things_path: Path) -> str | None:
    """Why the instance mosaic cannot be composed with ``mosaic`` (one line), or None."""
    things = open_mosaic(things_path)
    if INSTANCES not in things.group:
        return f"{things_path}: has no {INSTANCES!r} array; predict it with an instance model (maskrcnn_*) first"
    if (things.height, things.width) != (mosaic.height, mosaic.width) or things.crs != mosaic.crs:
        return (
            f"{things_path}: {things.width}x{things.height} px in {things.crs} is not the grid of {mosaic.path} "
            f"({mosaic.width}x{mosaic.height} px in {mosaic.crs}); predict both from the same scene"
        )
    if not np.allclose(tuple(things.transform)[:6], tuple(mosaic.transform)[:6], rtol=0, atol=1e-9):
        return f"{things_path}: its transform differs from {mosaic.path}'s; predict both from the same scene"
    return None
