"""The panoptic stage: things from an instance job's mosaic over this job's stuff, and its Panoptic Quality.

``panoptic.things`` names the ``mosaic.zarr`` of an instance job (Mask R-CNN) predicted from the same
scene; its ``instances`` ids are already one per object across tiles and chunks (the cross-tile merge
and the whole-mosaic numbering), so a thing is never split at a seam here either. The stage writes
``panoptic_class`` and ``panoptic_id`` into this job's mosaic, a band of chunk rows per task
(:mod:`geoseg.io.panoptic`); the evaluate stage then scores them (:func:`panoptic_metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.errors import InputRasterError, JobConfigError
from geoseg.evaluate.confusion import chunk_row_bands
from geoseg.evaluate.instances import count_duplicates, count_splits, mosaic_instances, truth_instances
from geoseg.evaluate.panoptic import SegmentCounts, band_segments, panoptic_quality, read_band, reference_ids
from geoseg.io.instances import read_instance_table
from geoseg.io.labels import label_options, load_labels
from geoseg.io.masks import InstanceMask
from geoseg.io.mosaic import open_mosaic
from geoseg.io.panoptic import (
    PANOPTIC_CLASS,
    PANOPTIC_ID,
    VOID,
    PanopticRequest,
    compose_band,
    create_panoptic_arrays,
    same_grid_problem,
)
from geoseg.io.raster import SceneInfo
from geoseg.stages.sections import evaluate_spec
from geoseg.vectorize.classes import RunTasks, in_process

__all__ = ["panoptic_metrics", "run_panoptic"]

BANDS = 8  # bands of chunk rows (tasks), whatever the worker count: the same arrays from any


def _things_table(things: Path) -> Path:
    """The instance table beside an instance job's mosaic (its output folder's ``instances.parquet``)."""
    return things.parent / "instances.parquet"


def _thing_classes(job: Job, things: Path) -> tuple[int, ...]:
    """The job's class index of each class of the instance mosaic (its background, index 0, is none)."""
    names = open_mosaic(things).class_names
    missing = [name for name in names[1:] if name not in job.classes]
    if missing:
        raise JobConfigError(
            f"panoptic.things: {things} detects {', '.join(missing)}, not in classes {list(job.classes)}; "
            "add them to classes"
        )
    return (VOID, *(job.classes.index(name) for name in names[1:]))


def _run_tasks(job: Job, address: str | None) -> tuple[RunTasks, Any]:
    runtime = job.runtime
    if runtime.workers <= 1:
        return in_process, nullcontext()
    from geoseg.runtime import iter_tasks, ray_session

    session = ray_session(address or runtime.address, dashboard=runtime.dashboard)
    return (lambda function, arguments: iter_tasks(function, arguments, cpus=runtime.cpus_per_worker)), session


def run_panoptic(
    job: Job, *, address: str | None = None, log: Callable[[str], None] = print, force: bool = False
) -> dict:
    """Write ``panoptic_class`` and ``panoptic_id`` into the job's mosaic."""
    assert job.panoptic is not None  # the stage needs its section (geoseg.config.stages)
    spec, paths = job.panoptic, JobPaths.of(job)
    started = time.perf_counter()
    mosaic = open_mosaic(paths.mosaic, mode="r+")
    problem = same_grid_problem(mosaic, spec.things)
    if problem:
        raise InputRasterError(f"panoptic.things: {problem}")
    thing_classes = _thing_classes(job, spec.things)
    create_panoptic_arrays(mosaic, job.classes)
    requests = [
        PanopticRequest(
            str(paths.mosaic), str(spec.things), str(_things_table(spec.things)), thing_classes, spec.min_score, a, b
        )
        for a, b in chunk_row_bands(mosaic.height, mosaic.chunk, BANDS)
    ]
    run_tasks, session = _run_tasks(job, address)
    with session:
        totals = [cast(dict, r) for r in run_tasks(compose_band, [(r,) for r in requests])]
    pixels = sum(t["pixels"] for t in totals)
    things_share = sum(t["thing_pixels"] for t in totals) / pixels
    void_share = sum(t["void_pixels"] for t in totals) / pixels
    log(
        f"panoptic: things from {spec.things} (score >= {spec.min_score:g}) over {paths.mosaic.name}'s stuff: "
        f"{things_share:.1%} of pixels things, {void_share:.1%} void, in {time.perf_counter() - started:.0f} s"
    )
    files = [str(paths.mosaic / PANOPTIC_CLASS), str(paths.mosaic / PANOPTIC_ID)]
    return {"things_share": round(things_share, 6), "void_share": round(void_share, 6), "files": files}


def _band_counts(
    mosaic_path: str, truth_path: str, truth: list[tuple[int, InstanceMask]], first: int, stop: int, things: set[int]
) -> SegmentCounts:
    mosaic = open_mosaic(mosaic_path)
    truth_classes, classes, ids = read_band(mosaic, truth_path, first, stop)
    numbers = reference_ids(truth, first, stop, mosaic.width)
    return band_segments(truth_classes, numbers, classes, ids, things)


def panoptic_metrics(
    job: Job, scene: SceneInfo, truth_path: Path, address: str | None, log: Callable[[str], None]
) -> dict | None:
    """PQ/SQ/RQ of the panoptic arrays against ``evaluate.labels``; splits and duplicates of the things.

    None when the job has no panoptic arrays. The reference's things are its polygons of the thing classes.
    """
    paths = JobPaths.of(job)
    mosaic = open_mosaic(paths.mosaic)
    if job.panoptic is None or PANOPTIC_CLASS not in mosaic.group:
        return None
    labels = evaluate_spec(job).labels
    if labels.suffix.lower() in (".tif", ".tiff"):
        log("evaluate: panoptic quality needs reference polygons (one per object), not a label raster; skipped")
        return {"skipped": "evaluate.labels is a raster"}
    frame = load_labels(labels, scene=scene, classes=job.classes, source="evaluate.labels", **label_options(job.train))
    things = {c for c in _thing_classes(job, job.panoptic.things) if c != VOID}
    valid = lambda w: np.asarray(mosaic.valid[w[0] : w[2], w[1] : w[3]]) > 0
    truth = truth_instances(frame, mosaic.transform, mosaic.height, mosaic.width, class_ids=sorted(things), valid=valid)
    bands = chunk_row_bands(mosaic.height, mosaic.chunk, BANDS)
    numbered = list(enumerate(truth, start=1))  # scene-wide numbers: every band names a thing alike
    arguments = [
        (
            str(paths.mosaic),
            str(truth_path),
            [(n, t) for n, t in numbered if t.row < b and t.row + t.mask.shape[0] > a],  # the things reaching in
            a,
            b,
            things,
        )
        for a, b in bands
    ]
    counts = SegmentCounts.empty()
    run_tasks, session = _run_tasks(job, address)
    with session:
        for part in run_tasks(_band_counts, arguments):
            counts.add(cast(SegmentCounts, part))
    result = panoptic_quality(counts, job.classes, things)
    table = read_instance_table(_things_table(job.panoptic.things))
    kept = table[table["score"].isna() | (table["score"] >= job.panoptic.min_score)]
    pred = mosaic_instances(job.panoptic.things, kept)
    result |= {"splits": count_splits(pred, truth), "duplicates": count_duplicates(pred)}
    log(
        f"evaluate: panoptic quality {result['pq'] or 0:.3f} (SQ {result['sq'] or 0:.3f}, RQ {result['rq'] or 0:.3f}; "
        f"things {result['pq_things'] or 0:.3f}, stuff {result['pq_stuff'] or 0:.3f}); things split "
        f"{result['splits']}, duplicated {result['duplicates']}"
    )
    return result
