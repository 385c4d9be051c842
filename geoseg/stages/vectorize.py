"""Vectorize stage: mosaic → polygons merged across chunk seams (GPKG + GeoJSON).

With ``vectorize.instances`` it also numbers every region across the whole
mosaic: ``mosaic.zarr/instances`` and ``instances.parquet``, and an ``id`` column
on the polygons.
"""

from __future__ import annotations

import time

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.io.mosaic import open_mosaic
from geoseg.vectorize import vectorize_instances, vectorize_mosaic
from geoseg.vectorize.classes import RunTasks, VectorOutputs, in_process

__all__ = ["run_vectorize"]


def run_vectorize(job: Job, *, address: str | None = None, log=print, force: bool = False) -> dict:
    """Turn the mosaic's classes (or instances) into polygons under ``vectors/``.

    Bands of chunk rows run as Ray tasks on ``address`` when ``runtime.workers`` > 1, else here;
    always rewrites its outputs (a killed run's finished bands are reused). ``force`` is taken for
    the runners' one signature (:mod:`geoseg.config.stages`).
    """
    paths = JobPaths.of(job)
    spec = job.vectorize
    started = time.perf_counter()
    shown = -1

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if done * 10 // total != shown:
            shown = done * 10 // total
            log(f"vectorize: chunk rows {done}/{total}")

    if "instances" in open_mosaic(paths.mosaic).fingerprint:  # a Mask R-CNN mosaic: one polygon per instance
        return _vectorize_instances(job, paths, progress, log, started)
    runtime = job.runtime

    def run(run_tasks: RunTasks = in_process) -> VectorOutputs:
        return vectorize_mosaic(
            paths.mosaic,
            paths.vectors,
            classes=spec.classes,
            simplify_m=spec.simplify_m,
            min_area_m2=spec.min_area_m2,
            progress=progress,
            instances_table=paths.instance_table if spec.instances else None,
            fmt=spec.format,
            run_tasks=run_tasks,
        )

    if runtime.workers > 1:
        from geoseg.runtime import iter_tasks, ray_session

        with ray_session(address or runtime.address, dashboard=runtime.dashboard):
            outputs = run(lambda function, arguments: iter_tasks(function, arguments, cpus=runtime.cpus_per_worker))
    else:
        outputs = run()
    counts = ", ".join(f"{count} {name}" for name, count in outputs.per_class.items())
    log(
        f"vectorize: {outputs.features} polygons ({counts}) in {time.perf_counter() - started:.0f} s; "
        f"wrote {outputs.vectors}, {outputs.geojson}"
    )
    result = {
        "features": outputs.features,
        "per_class": outputs.per_class,
        "vectors": str(outputs.vectors),
        "geojson": str(outputs.geojson),
    }
    if outputs.instance_table is not None:
        log(
            f"vectorize: {outputs.instances} instances (connected regions across the mosaic); "
            f"wrote {paths.mosaic / 'instances'}, {outputs.instance_table}"
        )
        result.update(instances=outputs.instances, instance_table=str(outputs.instance_table))
    return result


def _vectorize_instances(job: Job, paths: JobPaths, progress, log, started: float) -> dict:
    """The predicted instances (ids from the predict stage), one polygon each, with class, score and area."""
    spec = job.vectorize
    if spec.instances:
        log("vectorize: note: the instance model's own ids are kept; vectorize.instances applies to semantic models")
    out = vectorize_instances(
        paths.mosaic,
        paths.instance_table,
        paths.vectors,
        simplify_m=spec.simplify_m,
        min_area_m2=spec.min_area_m2,
        fmt=spec.format,
        progress=progress,
    )
    counts = ", ".join(f"{count} {name}" for name, count in out.per_class.items())
    log(
        f"vectorize: {out.features} instances ({counts}) in {time.perf_counter() - started:.0f} s; "
        f"wrote {out.vectors}, {out.geojson}"
    )
    return {
        "features": out.features,
        "per_class": out.per_class,
        "vectors": str(out.vectors),
        "geojson": str(out.geojson),
    }
