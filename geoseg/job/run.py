"""Chain the stages a job names; validate everything before the first one starts."""

from __future__ import annotations

import time
from pathlib import Path

from geoseg.config import Job
from geoseg.config.paths import JobPaths
from geoseg.errors import JobConfigError
from geoseg.job.load import load_job
from geoseg.job.preflight import check_job_inputs
from geoseg.job.registry import check_stage_sections, stage_runner
from geoseg.job.runrecord import (
    LATEST,
    RUN_FILE,
    RunRecord,
    code_version,
    finished_run,
    input_fingerprints,
    noop_message,
    stage_outputs,
)
from geoseg.report import report_path, write_report
from geoseg.runtime.session import ray_kept, ray_output_to  # import no Ray themselves: validating starts nothing

__all__ = ["RAY_LOG", "run_job", "validate_job"]

RAY_LOG = "ray.log"  # in the run's folder: Ray's own warnings and its workers' stderr (the terminal with verbose)


def validate_job(path: str | Path, stages: list[str] | None = None) -> tuple[Job, list[str]]:
    """Load the job and check its inputs; raise JobConfigError listing every problem."""
    job = load_job(path)
    stages = check_stage_sections(job, stages, str(path))
    problems = check_job_inputs(job, stages, str(path))
    if problems:
        raise JobConfigError(problems)
    return job, stages


def run_job(
    path: str | Path,
    *,
    stages: list[str] | None = None,
    address: str | None = None,
    log=print,
    force: bool = False,
    verbose: bool = False,
) -> dict:
    """Run ``stages`` (default: the job's) in order; return each stage's summary, and the run under "run".

    Every run that runs ends by writing ``report.html`` beside ``metrics.json`` (:mod:`geoseg.report`);
    its path is in run.json and under "run" → "report".

    Each run is recorded in ``output_dir/runs/<run id>/run.json``. When the most recent run already
    did this work (same job, code, stages and inputs, outputs still there) nothing runs and Ray is
    not started; ``force`` runs every stage again from scratch (see :mod:`geoseg.job.runrecord`).
    Ray's own output (its warnings, its workers' stderr) goes to ``runs/<run id>/ray.log``, named at
    the end when it holds anything or a stage failed; ``verbose`` leaves it on the terminal.
    """
    job, stages = validate_job(path, stages)
    code, inputs = code_version(), input_fingerprints(job, stages)
    if not force:
        previous, why = finished_run(job, stages, code=code, inputs=inputs)
        if previous is not None:
            log(noop_message(job, previous))
            run_file = JobPaths.of(job).runs / previous["run_id"] / RUN_FILE
            report = report_path(job)  # left as that run wrote it; written again from its outputs if deleted
            if not report.exists():
                report = write_report(job, previous["run_id"])
                log(f"geoseg: report → {report} (written again from run {previous['run_id']}'s outputs)")
            return {"run": {"id": previous["run_id"], "file": str(run_file), "noop": True, "report": str(report)}}
        if why:
            log(f"geoseg: running again: {why}")
    record = RunRecord.start(job, path, stages, force=force, address=address, code=code, inputs=inputs, log=log)
    ray_log = None if verbose else record.folder / RAY_LOG
    started = time.perf_counter()
    log(f"geoseg: job {job.name!r}: stages {', '.join(stages)}; outputs in {job.output_dir}")
    log(f"geoseg: run {record.run_id}{' (--force: every stage again)' if force else ''}; record in {record.path}")
    summary = {}
    try:
        with ray_output_to(ray_log), ray_kept():  # Ray, if a stage starts it, is started once for the job
            for stage in stages:
                with record.stage(stage):
                    summary[stage] = _run_stage(stage, job, address=address, log=log, force=force)
                    record.data["stages"][stage]["outputs"] = stage_outputs(stage, job, summary[stage])
                    if stage in ("train", "predict"):
                        record.note_checkpoint(job)
                    if job.publish:
                        _publish(job, job.publish, record.data["stages"][stage]["outputs"], f"{stage} outputs", log)
        if record.data["checkpoint"]["weights_sha256"] is None:
            record.note_checkpoint(job)
        report = write_report(job, record.run_id)  # a failure here is a bug: it fails the run, with its traceback
        record.data["report"] = str(report)
        log(f"geoseg: report → {report}")
    except BaseException as exc:
        record.fail(exc)  # a stage's failure is already recorded; this catches one between stages
        _mention_ray_log(ray_log, log, failed=True)
        raise
    record.finish()
    if job.publish:  # last: a reader that finds this run "done" finds every output it lists
        _publish(job, job.publish, [report], "the report", log)
        _publish(job, job.publish, [record.path, JobPaths.of(job).runs / LATEST], "the run record", log)
    log(f"geoseg: job {job.name!r} finished in {time.perf_counter() - started:.0f} s; run {record.run_id}")
    _mention_ray_log(ray_log, log, failed=False)
    summary["run"] = {"id": record.run_id, "file": str(record.path), "noop": False, "report": str(report)}
    return summary


def _mention_ray_log(ray_log: Path | None, log, *, failed: bool) -> None:
    """Name the run's Ray log when it holds something, or when a stage failed and Ray had started."""
    if ray_log is None or not ray_log.exists():
        return
    if failed or ray_log.stat().st_size > 0:
        log(f"geoseg: Ray's own messages (warnings, worker logs) are in {ray_log}; --verbose shows them here")


def _run_stage(stage: str, job: Job, *, address: str | None, log, force: bool) -> dict:
    return stage_runner(stage)(job, address=address, log=log, force=force)


def _publish(job: Job, prefix: str, outputs: list, what: str, log) -> None:
    from geoseg.io.publish import publish_outputs

    written = publish_outputs(outputs, Path(job.output_dir), prefix)
    log(f"geoseg: published {what} to {prefix} ({len(written)} item(s))")
