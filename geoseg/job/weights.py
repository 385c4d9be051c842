"""A job's pretrained encoder weights: checked before anything runs, fetched by ``geoseg weights fetch JOB``.

The check looks only on this machine and imports no torch for smp's encoders (see
:mod:`geoseg.models.hub_cache`); the fetch is the one place geoseg downloads weights, into the library's own
cache, on a machine with internet access. Jobs then read them from there, offline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from geoseg.config import Job, read_job_file
from geoseg.errors import JobConfigError, ModelError
from geoseg.models.hub_cache import cached_weights, weights_source

__all__ = ["check_encoder_weights", "fetch_job_weights"]


def check_encoder_weights(job: Job, stages: list[str], source: str) -> list[str]:
    """One line per problem with ``model.encoder_weights`` when ``stages`` train (prediction never reads them)."""
    chosen = job.model.encoder_weights
    if chosen is None or "train" not in stages:
        return []
    if chosen.file is not None:
        if chosen.file.is_file():
            return []
        return [f"{chosen.file}: model.encoder_weights: file not found; check the path (relative to {source})"]
    assert chosen.name is not None
    try:
        where = weights_source(job.model.arch, job.model.encoder, chosen.name)
    except ModelError as exc:
        return [f"{source}: {exc}"]
    return [] if cached_weights(where) is not None else [where.missing_message(source)]


def fetch_job_weights(path: str | Path, log: Callable[[str], None] = print) -> Path | None:
    """Download the job's named ``model.encoder_weights`` into the library's cache; the cached file.

    None when the job names a local file (nothing to fetch). Raises JobConfigError when it names no weights
    or weights the encoder does not have, StageError when the download fails.
    """
    job = read_job_file(path)
    chosen = job.model.encoder_weights
    if chosen is None:
        raise JobConfigError(
            f"{path}: model.encoder_weights: not set, so there is nothing to fetch; name the encoder's "
            "weights in the job, e.g. encoder_weights: imagenet"
        )
    if chosen.file is not None:
        log(f"weights: {path} names a local file ({chosen.file}); nothing to fetch")
        return None
    from geoseg.models.pretrained import fetch_encoder_weights, file_sha256  # imports torch

    assert chosen.name is not None
    try:
        where = weights_source(job.model.arch, job.model.encoder, chosen.name)
        file = fetch_encoder_weights(job.model.arch, job.model.encoder, chosen.name)
    except ModelError as exc:
        raise JobConfigError(f"{path}: {exc}") from None
    log(
        f"weights: {chosen.name!r} weights of {where.encoder}: {file} "
        f"({file.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(file)[:16]})"
    )
    variable = "HF_HUB_CACHE" if where.hub == "huggingface" else "TORCH_HOME (holding hub/checkpoints/)"
    log(
        f"weights: for a machine without internet access, copy {where.cache} to the same place there "
        f"(or anywhere, and set {variable} to it)"
    )
    return file
