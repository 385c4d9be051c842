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

The job is validated here first (:func:`geoseg.stages.validate_job`, which
also checks its input files; with ``job_dir`` only the job itself, as its
files are where the cluster is), so a bad job fails in a second with exit
code 2 instead of minutes later on the cluster. A ``submission_id``
may be given: Ray refuses a second job with the same id, which makes a
scheduled submission idempotent (e.g. ``flood-survey-2026-05-01``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import yaml

from geoseg import __version__
from geoseg.config import load_job
from geoseg.config.load import rebase_job_paths
from geoseg.errors import ClusterError, JobConfigError

__all__ = ["Submission", "submit_job", "job_status", "job_logs", "follow_job_logs", "TERMINAL_STATES"]

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Submission:
    """A job handed to a cluster: its submission id, the job's name and stages, and where it went."""

    submission_id: str
    job_name: str
    stages: list[str]
    address: str


def submit_job(job_path: str | Path, *, address: str | None, stages: list[str] | None = None,
               job_dir: str | None = None, submission_id: str | None = None) -> Submission:
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
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="geoseg-submit-") as folder:
        (Path(folder) / job_path.name).write_text(
            f"# {job_path.name} as submitted by geoseg {__version__}; paths made absolute for the cluster\n"
            + yaml.safe_dump(shipped, sort_keys=False), encoding="utf-8")
        metadata = {"geoseg_job": job.name, "geoseg_version": __version__, "job_file": str(job_path.resolve())}
        try:  # uploads the folder (one small YAML file) to the cluster before returning
            given = client.submit_job(entrypoint=shlex.join(command), runtime_env={"working_dir": folder},
                                      submission_id=submission_id, metadata=metadata)
        except (RuntimeError, ValueError) as error:
            raise ClusterError(f"{address}: the cluster refused the job: {_first_line(error)}") from None
    return Submission(given, job.name, stages_run, address)


def _validate(job_path: str | Path, stages: list[str] | None, job_dir: str | None):
    """The job and the stages it will run; JobConfigError (exit code 2) listing every problem."""
    if job_dir is None:
        from geoseg.stages import validate_job

        return validate_job(job_path, stages)
    if not job_dir.startswith("/"):
        raise JobConfigError(f"--job-dir {job_dir!r}: give the job file's folder as an absolute path on the "
                             "cluster's nodes, e.g. /home/ray/geoseg/jobs")
    job = load_job(job_path)  # the schema, the stage sections of the job's own `stages:`, halo auto
    sections = {"train": job.train, "predict": job.predict, "vectorize": job.predict, "evaluate": job.evaluate}
    missing = [f"{job_path}: stage {stage!r} needs a `{'predict' if stage == 'vectorize' else stage}:` section"
               for stage in stages or [] if sections[stage] is None]
    if missing:
        raise JobConfigError(missing)
    return job, list(stages or job.stages)


def job_status(submission_id: str, *, address: str) -> dict:
    """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), Ray's message about it, and its times."""
    info = _job_info(_client(address), submission_id, address)
    return {"submission_id": submission_id, "status": _state(info.status), "message": info.message or "",
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
            "driver_exit_code": getattr(info, "driver_exit_code", None)}


def job_logs(submission_id: str, *, address: str) -> str:
    """Everything the job's driver (``geoseg run`` on the cluster) has printed so far."""
    client = _client(address)
    _job_info(client, submission_id, address)
    try:
        return client.get_job_logs(submission_id)
    except RuntimeError as error:
        raise ClusterError(f"{address}: cannot read the logs of {submission_id!r}: {_first_line(error)}") from None


def follow_job_logs(submission_id: str, *, address: str, write: Callable[[str], None]) -> str:
    """Pass the job's logs to ``write`` as they come until the job ends; return its final status."""
    client = _client(address)
    _job_info(client, submission_id, address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as error:
        raise ClusterError(f"{address}: lost the log stream of {submission_id!r}: {_first_line(error)}; "
                           "`geoseg logs` again shows everything so far") from None
    return _state(_job_info(client, submission_id, address).status)


def _client(address: str | None):
    """A Jobs API client for ``address``, or a one-line ClusterError if nothing answers there."""
    if not address:
        raise ClusterError("no cluster address: give --address http://HEAD_IP:8265 (the Ray dashboard's address) "
                           "or set RAY_API_SERVER_ADDRESS")
    # host:port means the dashboard over HTTP (Ray would take it for the cluster's GCS address instead)
    url = address if "://" in address else f"http://{address}"
    _check_reachable(url, address)
    from ray.job_submission import JobSubmissionClient  # imports Ray's HTTP client only when used

    # Ray's client logs each package upload and closed log stream at INFO (its modules set that level
    # when imported, hence after the import); geoseg prints its own lines.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray's client takes RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address it is given; the
    # address given here must win (a RAY_ADDRESS exported for `geoseg run` may name another cluster).
    hidden = {name: os.environ.pop(name) for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if name in os.environ}
    try:
        return JobSubmissionClient(url)
    except Exception as error:  # ConnectionError, a non-Ray server, a refused token: all mean "cannot use it"
        raise ClusterError(f"{address}: no Ray job server answers there ({_first_line(error)}); give the "
                           "dashboard's address, e.g. http://HEAD_IP:8265") from None
    finally:
        os.environ.update(hidden)


def _check_reachable(url: str, address: str) -> None:
    """Fail in seconds, not at the HTTP client's pace, when nothing listens at ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return  # a ray:// address: Ray's client resolves it
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ClusterError(f"{address}: not a valid address; give the dashboard's, e.g. http://HEAD_IP:8265") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterError(f"{address}: cannot connect ({error.strerror or error}); is the cluster up and is this "
                           "its dashboard address (ray start --head --dashboard-host ..., default port 8265)?") from None


def _job_info(client, submission_id: str, address: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as error:
        if "404" in str(error):
            raise ClusterError(f"{address}: no job {submission_id!r} on this cluster; `ray job list --address "
                               f"{address}` lists them") from None
        raise ClusterError(f"{address}: cannot read job {submission_id!r}: {_first_line(error)}") from None


def _state(status) -> str:
    return getattr(status, "value", str(status))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
