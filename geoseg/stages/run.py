"""Chain the stages a job names; validate everything before the first one starts."""

from __future__ import annotations

import time
from pathlib import Path

from geoseg.config import Job, load_job
from geoseg.errors import JobConfigError
from geoseg.stages.preflight import check_job_inputs

__all__ = ["validate_job", "run_job"]


def validate_job(path: str | Path, stages: list[str] | None = None) -> tuple[Job, list[str]]:
    """Load the job and check its inputs; raise JobConfigError listing every problem."""
    job = load_job(path)
    stages = stages or list(job.stages)
    missing = {"train": job.train, "predict": job.predict, "vectorize": job.predict, "evaluate": job.evaluate}
    problems = [f"{path}: stage {stage!r} needs a `{'predict' if stage == 'vectorize' else stage}:` section"
                for stage in stages if missing.get(stage) is None]
    if problems:
        raise JobConfigError(problems)
    problems = check_job_inputs(job, stages, str(path))
    if problems:
        raise JobConfigError(problems)
    return job, stages


def run_job(path: str | Path, *, stages: list[str] | None = None, address: str | None = None, log=print) -> dict:
    """Run ``stages`` (default: the job's) in order; return each stage's summary."""
    job, stages = validate_job(path, stages)
    started = time.perf_counter()
    log(f"geoseg: job {job.name!r}: stages {', '.join(stages)}; outputs in {job.output_dir}")
    summary = {}
    for stage in stages:
        if stage == "train":
            from geoseg.stages.train import run_train
            summary[stage] = run_train(job, address=address, log=log)
        elif stage == "predict":
            from geoseg.stages.predict import run_predict
            summary[stage] = run_predict(job, address=address, log=log)
        elif stage == "vectorize":
            from geoseg.stages.vectorize import run_vectorize
            summary[stage] = run_vectorize(job, log=log)
        elif stage == "evaluate":
            from geoseg.stages.evaluate import run_evaluate
            summary[stage] = run_evaluate(job, log=log)
    log(f"geoseg: job {job.name!r} finished in {time.perf_counter() - started:.0f} s")
    return summary
