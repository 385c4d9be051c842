"""Load a job for running: the job file read and validated, then ``halo: auto`` measured on the model."""

from __future__ import annotations

from pathlib import Path

from geoseg.config import Job, read_job_file
from geoseg.errors import JobConfigError

__all__ = ["load_job"]


def load_job(path: str | Path) -> Job:
    """Read, validate and resolve a job file; raise JobConfigError listing every problem."""
    job = read_job_file(path)
    _check_crf(job, str(path))
    if job.tiling.auto:
        _check_auto_tiling(job, str(path))
    return _resolve_auto_halo(job, str(path)) if job.tiling.halo == "auto" else job


def _check_crf(job: Job, source: str) -> None:
    """A dense CRF refines class scores: an instance model has none."""
    from geoseg.models.known import INSTANCE_ARCHITECTURE_NAMES

    if job.predict is not None and job.predict.crf is not None and job.model.arch in INSTANCE_ARCHITECTURE_NAMES:
        raise JobConfigError(
            f"{source}: predict.crf: {job.model.arch} predicts instances, not per-pixel class scores for a CRF "
            "to refine; remove predict.crf"
        )


def _check_auto_tiling(job: Job, source: str) -> None:
    """``tiling: auto`` needs the seam figures a semantic model's training measures on its validation strip."""
    from geoseg.models.known import INSTANCE_ARCHITECTURE_NAMES

    problems: list[str] = []
    if job.model.arch in INSTANCE_ARCHITECTURE_NAMES:
        problems.append(
            f"{source}: tiling: auto chooses by the seams of a segmentation model; for {job.model.arch} give "
            "tiling.tile_size and tiling.halo (at least half the largest object)"
        )
    elif "train" in job.stages and job.train is not None:
        if job.train.validation_fraction == 0:
            problems.append(
                f"{source}: train.validation_fraction: 0 leaves no held-out strip to measure seams on for "
                "tiling: auto; use e.g. 0.15, or give tiling.tile_size and tiling.halo"
            )
        if not job.train.measure_seams:
            problems.append(
                f"{source}: train.measure_seams: false leaves tiling: auto nothing to choose by; "
                "remove it, or give tiling.tile_size and tiling.halo"
            )
    if problems:
        raise JobConfigError(problems)


def _resolve_auto_halo(job: Job, source: str) -> Job:
    """Replace ``halo: auto`` by the model's measured safe halo (see geoseg.models.context)."""
    from geoseg.models.context import safe_halo  # imports torch: only when asked for
    from geoseg.models.instance import is_instance_arch

    if is_instance_arch(job.model.arch):
        raise JobConfigError(
            f"{source}: tiling.halo: 'auto' measures a segmentation model's context; for "
            f"{job.model.arch} give the halo in pixels, at least half the largest object "
            "(tiles then overlap by more than any object, and the merge keeps a whole view)"
        )
    try:
        halo = safe_halo(
            job.model.arch,
            encoder=job.model.encoder,
            options=dict(job.model.options),
            in_channels=len(job.bands) if job.bands else 3,
        )
    except Exception as exc:  # an unknown arch or encoder is reported by the input checks
        raise JobConfigError(
            f"{source}: tiling.halo: cannot measure the context of {job.model.arch!r} ({exc}); give the halo in pixels"
        ) from None
    if job.tiling.size - 2 * halo <= 0:
        raise JobConfigError(
            f"{source}: tiling.tile_size: {job.tiling.size} leaves no core with "
            f"{job.model.arch}'s safe halo {halo}; use tile_size >= {2 * halo + 256}"
        )
    return job.model_copy(update={"tiling": job.tiling.model_copy(update={"halo": halo})})
