"""Vectorize stage: mosaic → polygons merged across chunk seams (GPKG + GeoJSON)."""

from __future__ import annotations

import time

from geoseg.config import Job
from geoseg.stages.paths import JobPaths
from geoseg.vectorize import vectorize_mosaic

__all__ = ["run_vectorize"]


def run_vectorize(job: Job, *, log=print) -> dict:
    paths = JobPaths.of(job)
    spec = job.vectorize
    started = time.perf_counter()
    shown = -1

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if done * 10 // total != shown:
            shown = done * 10 // total
            log(f"vectorize: chunk rows {done}/{total}")

    outputs = vectorize_mosaic(paths.mosaic, paths.vectors, classes=spec.classes, simplify_m=spec.simplify_m,
                               min_area_m2=spec.min_area_m2, progress=progress)
    counts = ", ".join(f"{count} {name}" for name, count in outputs.per_class.items())
    log(f"vectorize: {outputs.features} polygons ({counts}) in {time.perf_counter() - started:.0f} s; "
        f"wrote {outputs.gpkg}, {outputs.geojson}")
    return {"features": outputs.features, "per_class": outputs.per_class,
            "gpkg": str(outputs.gpkg), "geojson": str(outputs.geojson)}
