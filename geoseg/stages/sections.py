"""The job sections a stage cannot run without, and the resolved halo, typed for the stages.

The schema keeps ``train:``, ``predict:`` and ``evaluate:`` optional (a job
names the stages it runs), and :func:`geoseg.job.registry.check_stage_sections`
refuses to start a stage whose sections are missing; ``halo: auto`` is measured
by :func:`geoseg.job.load_job` before any stage sees the job. These helpers
hand a stage the section (or the halo in pixels) it relies on, and say so in
one line when a caller skipped those checks.
"""

from __future__ import annotations

from geoseg.config import Job
from geoseg.config.schema import EvaluateSpec, PredictSpec, TrainSpec
from geoseg.errors import JobConfigError

__all__ = ["evaluate_spec", "predict_spec", "resolved_halo", "train_spec"]


def _missing(job: Job, section: str) -> JobConfigError:
    return JobConfigError(f"job {job.name!r} needs a `{section}:` section for this")


def train_spec(job: Job) -> TrainSpec:
    """The job's ``train:`` section (JobConfigError when it has none)."""
    if job.train is None:
        raise _missing(job, "train")
    return job.train


def predict_spec(job: Job) -> PredictSpec:
    """The job's ``predict:`` section (JobConfigError when it has none)."""
    if job.predict is None:
        raise _missing(job, "predict")
    return job.predict


def evaluate_spec(job: Job) -> EvaluateSpec:
    """The job's ``evaluate:`` section (JobConfigError when it has none)."""
    if job.evaluate is None:
        raise _missing(job, "evaluate")
    return job.evaluate


def resolved_halo(job: Job) -> int:
    """``tiling.halo`` in pixels (ValueError, as :attr:`Tiling.core` raises, while it is still ``auto``)."""
    halo = job.tiling.halo
    if isinstance(halo, str):
        raise ValueError("tiling.halo 'auto' must be resolved (load_job does) before the stage runs")
    return halo
