"""Batch jobs on a Ray cluster through Ray's Jobs API: submit a job file, read its status and logs.

``geoseg submit JOB --address http://HEAD:8265`` runs ``geoseg run JOB``
*on the cluster* (its driver on the head node), so the job outlives the
submitting laptop or CI runner; ``geoseg status`` and ``geoseg logs`` read
it back by its submission id.

What travels with the job, and why: the cluster's nodes already hold geoseg
(the image in ``infra/``) and share the job's data and output folders
(NFS, a ReadWriteMany volume, or object storage), as ``geoseg run --address``
needs too. So only the job file travels, in the job's runtime environment:
``working_dir`` is a fresh temporary folder holding one YAML file, and the
entrypoint is ``geoseg run <that file> [--stages ...]``, run in that folder.
Shipping the job file's own folder instead would carry whatever else lies
there (or miss data outside it), and its relative paths would resolve
against Ray's unpacked copy, where nothing else is. The shipped copy has
every relative path made absolute against the job file's folder *as the
cluster sees it* (``job_dir``): by default the folder's absolute path here,
which is right when the submitter shares the nodes' filesystem layout (the
head node itself, a VM on the same NFS, the local two-node test cluster);
from a laptop that forwards the dashboard, ``--job-dir`` names where the
repo's job folder lies on the nodes (``/home/ray/geoseg/jobs`` in the
image). Absolute paths and ``s3://`` URIs are kept. The copy drops
``runtime.address``: a submitted job runs on the cluster it was submitted
to, which its driver finds through the ``RAY_ADDRESS`` Ray sets for it.
Object-storage credentials are never written into the shipped file; they
come from the nodes' environment as for any run.

The job is validated here first (:func:`geoseg.job.validate_job`, which
also checks its input files; with ``job_dir`` only the job itself, as its
files are where the cluster is), so a bad job fails in a second with exit
code 2 instead of minutes later on the cluster. A ``submission_id``
may be given: Ray refuses a second job with the same id, which makes a
scheduled submission idempotent (e.g. ``flood-survey-2026-05-01``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from geoseg._version import __version__
from geoseg.config.load import rebase_job_paths
from geoseg.errors import JobConfigError
from geoseg.job.load import load_job
from geoseg.job.registry import check_stage_sections
from geoseg.job.run import validate_job
from geoseg.runtime.jobs import submit_job_file

__all__ = ["Submission", "submit_job"]


@dataclass(frozen=True)
class Submission:
    """A job handed to a cluster: its submission id, the job's name and stages, and where it went."""

    submission_id: str
    job_name: str
    stages: list[str]
    address: str


def submit_job(
    job_path: str | Path,
    *,
    address: str | None,
    stages: list[str] | None = None,
    job_dir: str | None = None,
    submission_id: str | None = None,
) -> Submission:
    """Validate the job here, then submit ``geoseg run`` of it to the cluster whose job server is at ``address``.

    ``job_dir`` is the job file's folder as the cluster's nodes see it (default: its absolute path
    here, and the job's input files are checked here too; given, only the job itself is checked
    here and its files are checked where it runs).
    """
    job, stages_run = _validate(job_path, stages, job_dir)
    job_path = Path(job_path)
    data = yaml.safe_load(job_path.read_text(encoding="utf-8"))  # read and checked by _validate just now
    shipped = rebase_job_paths(data, job_dir or str(job_path.resolve().parent))
    if isinstance(shipped.get("runtime"), dict):
        shipped["runtime"] = {key: value for key, value in shipped["runtime"].items() if key != "address"}
    command = ["geoseg", "run", job_path.name] + (["--stages", *stages] if stages else [])
    text = (
        f"# {job_path.name} as submitted by geoseg {__version__}; paths made absolute for the cluster\n"
        + yaml.safe_dump(shipped, sort_keys=False)
    )
    metadata = {"geoseg_job": job.name, "geoseg_version": __version__, "job_file": str(job_path.resolve())}
    given = submit_job_file(
        job_path.name, text, address=address, entrypoint=command, submission_id=submission_id, metadata=metadata
    )
    assert address is not None  # submit_job_file refuses a missing address (ClusterError)
    return Submission(given, job.name, stages_run, address)


def _validate(job_path: str | Path, stages: list[str] | None, job_dir: str | None):
    """The job and the stages it will run; JobConfigError (exit code 2) listing every problem."""
    if job_dir is None:
        return validate_job(job_path, stages)
    if not job_dir.startswith("/"):
        raise JobConfigError(
            f"--job-dir {job_dir!r}: give the job file's folder as an absolute path on the "
            "cluster's nodes, e.g. /home/ray/geoseg/jobs"
        )
    job = load_job(job_path)  # the schema, the stage sections of the job's own `stages:`, halo auto
    return job, check_stage_sections(job, stages, str(job_path))
