"""Evaluate stage: mosaic vs reference labels → metrics.json + quicklook PNG."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.evaluate.confusion import band_confusion, chunk_row_bands, counts_key, save_counts, saved_counts
from geoseg.evaluate.instances import instance_report, mosaic_instances, truth_instances
from geoseg.evaluate.metrics import scores_from_confusion
from geoseg.evaluate.quicklook import write_quicklook
from geoseg.io.instances import INSTANCES, read_instance_table
from geoseg.io.labels import label_options, load_labels, rasterize_labels
from geoseg.io.mosaic import MosaicInfo, open_mosaic
from geoseg.io.raster import SceneInfo
from geoseg.stages.impact import impact_metrics
from geoseg.stages.panoptic import panoptic_metrics
from geoseg.stages.scene import predicted_scene, training_image
from geoseg.stages.sections import evaluate_spec, predict_spec, train_spec

__all__ = ["mosaic_confusion", "run_evaluate"]


def _local_file(labels) -> Path | None:
    """The labels file, where it is one on this machine (an s3:// reference keys on its raster instead)."""
    return labels if isinstance(labels, Path) and labels.is_file() else None


def _truth_raster(job: Job, paths: JobPaths, scene: SceneInfo) -> Path:
    """The reference as a label raster on the scene grid (polygons are rasterized first)."""
    labels = evaluate_spec(job).labels  # a Path, or a RemotePath for an s3:// URI
    if labels.suffix.lower() in (".tif", ".tiff"):
        return labels
    frame = load_labels(labels, scene=scene, classes=job.classes, source="evaluate.labels", **label_options(job.train))
    return rasterize_labels(frame, scene, paths.truth)


MIN_BANDS = 8  # bands counted (and kept for a resume) even by one worker


def mosaic_confusion(
    mosaic_path: Path,
    truth_path: Path,
    *,
    workers: int = 1,
    cpus: int = 1,
    address: str | None = None,
    parts_dir: Path | None = None,
    reference: Path | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Confusion matrix of a mosaic against a label raster, band of chunk rows by band.

    With ``workers`` > 1 the bands are counted by parallel Ray tasks (``cpus`` each) and summed:
    the same integers as one process counting them in order. With ``parts_dir``, each band's
    counts are kept there as they come and reused by a rerun of the same mosaic and reference
    (a killed evaluation resumes); the folder is removed once the matrix is whole. ``reference``:
    the file the truth raster was made from, if not itself (see :func:`counts_key`).
    """
    mosaic = open_mosaic(mosaic_path)
    bands = chunk_row_bands(mosaic.height, mosaic.chunk, max(MIN_BANDS, 2 * workers))
    key = counts_key(mosaic, reference or truth_path) if parts_dir is not None else ""
    counts: dict[tuple[int, int], np.ndarray | None] = {
        band: saved_counts(parts_dir, key, *band) if parts_dir is not None else None for band in bands
    }
    todo = [band for band in bands if counts[band] is None]
    arguments = [(str(mosaic_path), str(truth_path), first, stop) for first, stop in todo]
    parallel = workers > 1 and len(todo) > 1
    if parallel:
        from geoseg.runtime import iter_tasks, ray_session
    with ray_session(address) if parallel else nullcontext():
        results: Iterable[np.ndarray] = (
            iter_tasks(band_confusion, arguments, cpus=cpus) if parallel else (band_confusion(*a) for a in arguments)
        )
        for band, band_counts in zip(todo, results, strict=True):
            if parts_dir is not None:
                save_counts(parts_dir, key, *band, band_counts)
            counts[band] = band_counts
    if parts_dir is not None:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return np.sum([c for c in counts.values() if c is not None], axis=0), mosaic.class_names


def _colour_baseline(
    job: Job, paths: JobPaths, scene: SceneInfo, truth: Path, log: Callable[[str], None]
) -> dict | None:
    from geoseg.evaluate.colour_baseline import colour_baseline

    train = train_spec(job)
    pair = train.scenes[0]
    train_labels = paths.train_labels(0)
    image = training_image(job, 0, job.bands)
    if not train_labels.exists():
        frame = load_labels(
            pair.labels, scene=image, classes=job.classes, source="train.scenes[0].labels", **label_options(train, 0)
        )
        rasterize_labels(frame, image, train_labels)
    log("evaluate: fitting the per-pixel colour baseline (logistic regression on band values)")
    return colour_baseline(image.path, train_labels, scene.path, truth, job.classes, bands=image.bands)


def _instance_metrics(
    job: Job, paths: JobPaths, scene: SceneInfo, mosaic: MosaicInfo, log: Callable[[str], None]
) -> dict:
    """Instances against the reference polygons (one per polygon): F1 at IoU 0.5, splits, duplicates, mask AP."""
    labels = evaluate_spec(job).labels  # a Path, or a RemotePath for an s3:// URI
    if labels.suffix.lower() in (".tif", ".tiff"):
        log("evaluate: instance metrics need reference polygons (one per object), not a label raster; skipped")
        return {"skipped": "evaluate.labels is a raster"}
    frame = load_labels(labels, scene=scene, classes=job.classes, source="evaluate.labels", **label_options(job.train))
    table = read_instance_table(paths.instance_table)
    classes = sorted(set(table["class_id"].astype(int))) or list(range(1, len(job.classes)))
    # Reference pixels where the scene has no data are not expected to be found (as in the label raster).
    truth = truth_instances(
        frame,
        mosaic.transform,
        mosaic.height,
        mosaic.width,
        class_ids=classes,
        valid=lambda w: np.asarray(mosaic.valid[w[0] : w[2], w[1] : w[3]]) > 0,
    )
    pred = mosaic_instances(paths.mosaic, table)
    result = instance_report(pred, truth, mosaic.height, mosaic.width)
    log(
        f"evaluate: instances: {result['count_pred']} predicted, {result['count_truth']} in the reference; "
        f"F1@0.5 {result['f1'] or 0:.3f} (precision {result['precision'] or 0:.3f}, recall "
        f"{result['recall'] or 0:.3f}), mask AP {result['ap'] or 0:.3f}, AP50 {result['ap50'] or 0:.3f}; "
        f"split {result['splits']}, duplicates {result['duplicates']}, merged neighbours {result['merged']}"
    )
    return result


def run_evaluate(
    job: Job, *, address: str | None = None, log: Callable[[str], None] = print, force: bool = False
) -> dict[str, Any]:
    """Score the mosaic against ``evaluate.labels``; write ``metrics.json`` and the quicklook.

    Recomputes all but the bands a killed run had counted; the confusion counts run as Ray tasks
    on ``address`` when there is more than one worker. ``force`` is taken for the runners' one signature
    (:mod:`geoseg.config.stages`).
    """
    paths = JobPaths.of(job)
    predict, evaluate = predict_spec(job), evaluate_spec(job)
    started = time.perf_counter()
    scene = predicted_scene(job, job.bands)  # once: for a survey this inspects every file
    truth = _truth_raster(job, paths, scene)
    runtime = job.runtime
    matrix, class_names = mosaic_confusion(
        paths.mosaic,
        truth,
        workers=runtime.workers,
        cpus=runtime.cpus_per_worker,
        address=address,
        parts_dir=paths.metrics.parent / ".evaluate-parts",
        reference=_local_file(evaluate_spec(job).labels),
    )
    report: dict[str, Any] = {
        "job": job.name,
        "scene": [str(p) for p in predict.scene] if isinstance(predict.scene, list) else str(predict.scene),
        "model": scores_from_confusion(matrix, class_names),
    }
    if paths.training_history.exists():  # loss and validation mIoU per epoch, from the train stage
        report["training"] = json.loads(paths.training_history.read_text())
    if evaluate.colour_baseline and job.train:
        report["colour_baseline"] = _colour_baseline(job, paths, scene, truth, log)
    mosaic = open_mosaic(paths.mosaic)
    if INSTANCES in mosaic.group and paths.instance_table.exists():
        report["instances"] = _instance_metrics(job, paths, scene, mosaic, log)
    panoptic = panoptic_metrics(job, scene, truth, address, log)
    if panoptic is not None:
        report["panoptic"] = panoptic
    impact = impact_metrics(job, log)  # the impact stage's totals, scored where the job gives its truths
    if impact is not None:
        report["impact"] = impact
    write_quicklook(scene.path, list(scene.bands), truth, mosaic, paths.quicklook)
    tmp = paths.metrics.with_name(paths.metrics.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(paths.metrics)

    model = report["model"]
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in model["per_class_iou"].items() if v is not None)
    log(f"evaluate: per-class IoU: {per_class}")
    line = f"evaluate: mIoU {model['mean_iou']:.3f}, pixel accuracy {model['pixel_accuracy']:.3f}"
    if "colour_baseline" in report:
        line += f"; colour baseline mIoU {report['colour_baseline']['mean_iou']:.3f}"
    log(f"{line} ({time.perf_counter() - started:.0f} s); wrote {paths.metrics}, {paths.quicklook}")
    return report
