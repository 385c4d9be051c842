"""The overview pyramid of a finished mosaic, built by the job's workers."""

from __future__ import annotations

from pathlib import Path

from geoseg.config import Job
from geoseg.io.overviews import build_overviews

__all__ = ["mosaic_overviews"]


def mosaic_overviews(mosaic: Path, job: Job, address: str | None) -> list[int]:
    """Build ``mosaic``'s overviews: in this process for one worker, else its subtrees as Ray tasks."""
    runtime = job.runtime
    if runtime.workers <= 1:
        return build_overviews(mosaic)
    from geoseg.runtime import ray_session, run_tasks

    def run_parallel(function, arguments):
        return run_tasks(function, arguments, cpus=runtime.cpus_per_worker)

    with ray_session(address or runtime.address, dashboard=runtime.dashboard):
        return build_overviews(mosaic, run_parallel=run_parallel, workers=runtime.workers)
