"""``geoseg bench merge``: geoseg's cross-tile merge against a SAHI-style merge, on the same raw detections.

The predict stage of an instance job keeps every tile's raw detections
(``detections/tile_*.npz``). This benchmark merges them three ways and
scores each result against the job's reference polygons:

- ``none``: every raw detection as it is (what tiling without a merge gives);
- ``sahi``: SAHI's default postprocess for sliced prediction (greedy NMM on
  boxes, intersection over smaller 0.5, class-aware; :mod:`geoseg.bench.sahi_merge`);
- ``geoseg``: the mask-overlap merge (:func:`~geoseg.infer.merge.merge_detections`),
  before and after the per-pixel overlap resolution the mosaic gets.

Counts: ``splits`` (reference objects matched by more than one prediction at
IoU >= 0.1; ``splits_by_the_model``: those that one tile's own detections
already split, such as an L-shaped building found as body and wing, which no
merge of tiles can repair; the rest are the tiling's), ``duplicates`` (prediction pairs with mask IoU >= 0.5),
``merged`` (predictions covering half or more of two or more reference
objects), plus F1 at IoU 0.5 and COCO mask AP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rasterio
from rasterio.windows import Window

from geoseg.bench.sahi_merge import sahi_greedy_nmm
from geoseg.config.paths import JobPaths
from geoseg.errors import InputRasterError
from geoseg.evaluate.instances import instance_report, truth_instances
from geoseg.infer.merge import merge_detections, resolve_overlaps, tile_windows
from geoseg.io.labels import label_options, load_labels
from geoseg.io.masks import bbox_pairs, load_masks, mask_iou
from geoseg.io.raster import read_valid
from geoseg.job import load_job
from geoseg.stages.scene import predicted_scene
from geoseg.stages.sections import evaluate_spec, resolved_halo
from geoseg.tiling import plan_tiles

__all__ = ["bench_merge"]


def bench_merge(job_path: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the merges of one instance job's raw detections (run its predict stage first)."""
    job = load_job(job_path)
    paths = JobPaths.of(job)
    files = sorted(paths.tile_detections.glob("tile_*.npz"))
    if not files:
        raise InputRasterError(
            f"{paths.tile_detections}: no raw tile detections; run `geoseg predict {job_path}` "
            "with an instance model first"
        )
    detections = [d for f in files for d in load_masks(f)]
    scene = predicted_scene(job, job.bands)
    labels = load_labels(
        evaluate_spec(job).labels,
        scene=scene,
        classes=job.classes,
        source="evaluate.labels",
        **label_options(job.train),
    )
    with rasterio.open(scene.path) as src:
        truth = truth_instances(
            labels,
            scene.transform,
            scene.height,
            scene.width,
            class_ids=range(1, len(job.classes)),
            valid=lambda w: read_valid(src, Window(w[1], w[0], w[3] - w[1], w[2] - w[0])),
        )
    log(f"bench merge: {len(detections)} raw detections from {len(files)} tiles; {len(truth)} reference objects")
    settings = job.instances
    halo = resolved_halo(job)
    results: dict[str, Any] = {
        "job": job.name,
        "raw_detections": len(detections),
        "reference": len(truth),
        "tile_size": job.tiling.size,
        "overlap_px": 2 * halo,
    }
    tiles = plan_tiles(scene.height, scene.width, tile_size=job.tiling.size, halo=halo)
    merge: dict[str, Any] = {
        "iou": settings.merge_iou,
        "ios": settings.merge_ios,
        "windows": tile_windows(tiles, scene.height, scene.width),
        "scene_shape": (scene.height, scene.width),
    }
    runs = {
        "none": lambda: detections,
        "sahi": lambda: sahi_greedy_nmm(detections, match_threshold=0.5),
        "geoseg_merge": lambda: merge_detections(detections, **merge),
        "geoseg": lambda: resolve_overlaps(merge_detections(detections, **merge), min_area=settings.min_area_px),
    }
    model_splits = _split_by_the_model(detections, truth)
    for name, run in runs.items():
        started = time.perf_counter()
        merged = run()
        seconds = time.perf_counter() - started
        report = instance_report(merged, truth, scene.height, scene.width)
        results[name] = {
            "instances": len(merged),
            "splits": report["splits"],
            "splits_by_the_model": len(_split_objects(merged, truth) & model_splits),
            "duplicates": report["duplicates"],
            "merged": report["merged"],
            "f1": report["f1"],
            "precision": report["precision"],
            "recall": report["recall"],
            "ap": report["ap"],
            "ap50": report["ap50"],
            "seconds": round(seconds, 2),
        }
        log(f"bench merge: {name}: {results[name]}")
    return results


def _split_by_the_model(detections: list, truth: list, iou: float = 0.1) -> set[int]:
    """Reference objects that some tile's own detections already split.

    Two or more of one tile's detections match the object at IoU >= ``iou`` (an
    L-shaped building as body and wing). No merge of tiles can make those one;
    the other splits are the tiling's.
    """
    per_tile: dict[tuple[int, int], int] = {}
    for i, j in bbox_pairs(truth, detections).tolist():
        if mask_iou(truth[i], detections[j]) >= iou:
            key = (i, detections[j].tile)
            per_tile[key] = per_tile.get(key, 0) + 1
    return {i for (i, _), count in per_tile.items() if count > 1}


def _split_objects(pred: list, truth: list, iou: float = 0.1) -> set[int]:
    hits: dict[int, int] = {}
    for i, j in bbox_pairs(truth, pred).tolist():
        if mask_iou(truth[i], pred[j]) >= iou:
            hits[i] = hits.get(i, 0) + 1
    return {i for i, count in hits.items() if count > 1}
