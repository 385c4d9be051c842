"""Ray's Jobs API: hand a job file to a cluster's job server, read a job's status and logs back.

What is submitted, and why only the job file travels, is explained in
:mod:`geoseg.job.submit`, which validates the job and prepares the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from geoseg.errors import ClusterError

__all__ = ["TERMINAL_STATES", "follow_job_logs", "job_logs", "job_status", "submit_job_file"]

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
_CONNECT_TIMEOUT_S = 10.0


def submit_job_file(
    job_file: str,
    text: str,
    *,
    address: str | None,
    entrypoint: list[str],
    submission_id: str | None,
    metadata: dict[str, str],
) -> str:
    """Submit ``entrypoint`` to the cluster whose job server is at ``address``, with ``job_file`` beside it.

    The job file (``text``, a YAML the caller prepared: see :mod:`geoseg.job.submit`) is the only file
    that travels: it is the whole of the job's ``working_dir``. Returns the submission id.
    """
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="geoseg-submit-") as folder:
        (Path(folder) / job_file).write_text(text, encoding="utf-8")
        try:  # uploads the folder (one small YAML file) to the cluster before returning
            given: str = client.submit_job(
                entrypoint=shlex.join(entrypoint),
                runtime_env={"working_dir": folder},
                submission_id=submission_id,
                metadata=metadata,
            )
        except (RuntimeError, ValueError) as error:
            raise ClusterError(f"{address}: the cluster refused the job: {_first_line(error)}") from None
    return given


def job_status(submission_id: str, *, address: str | None) -> dict:
    """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), Ray's message about it, and its times."""
    info = _job_info(_client(address), submission_id, address)
    return {
        "submission_id": submission_id,
        "status": _state(info.status),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "driver_exit_code": getattr(info, "driver_exit_code", None),
    }


def job_logs(submission_id: str, *, address: str | None) -> str:
    """Everything the job's driver (``geoseg run`` on the cluster) has printed so far."""
    client = _client(address)
    _job_info(client, submission_id, address)
    try:
        return client.get_job_logs(submission_id)
    except RuntimeError as error:
        raise ClusterError(f"{address}: cannot read the logs of {submission_id!r}: {_first_line(error)}") from None


def follow_job_logs(submission_id: str, *, address: str | None, write: Callable[[str], None]) -> str:
    """Pass the job's logs to ``write`` as they come until the job ends; return its final status."""
    client = _client(address)
    _job_info(client, submission_id, address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as error:
        raise ClusterError(
            f"{address}: lost the log stream of {submission_id!r}: {_first_line(error)}; "
            "`geoseg logs` again shows everything so far"
        ) from None
    return _state(_job_info(client, submission_id, address).status)


def _client(address: str | None):
    """A Jobs API client for ``address``, or a one-line ClusterError if nothing answers there."""
    if not address:
        raise ClusterError(
            "no cluster address: give --address http://HEAD_IP:8265 (the Ray dashboard's address) "
            "or set RAY_API_SERVER_ADDRESS"
        )
    # host:port means the dashboard over HTTP (Ray would take it for the cluster's GCS address instead)
    url = address if "://" in address else f"http://{address}"
    _check_reachable(url, address)
    from ray.job_submission import JobSubmissionClient  # imports Ray's HTTP client only when used

    # Ray's client logs each package upload and closed log stream at INFO (its modules set that level
    # when imported, hence after the import); geoseg prints its own lines.
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray's client takes RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address it is given; the
    # address given here must win (a RAY_ADDRESS exported for `geoseg run` may name another cluster).
    hidden = {name: os.environ.pop(name) for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if name in os.environ}
    try:
        return JobSubmissionClient(url)
    except Exception as error:  # ConnectionError, a non-Ray server, a refused token: all mean "cannot use it"
        raise ClusterError(
            f"{address}: no Ray job server answers there ({_first_line(error)}); give the "
            "dashboard's address, e.g. http://HEAD_IP:8265"
        ) from None
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
        raise ClusterError(
            f"{address}: cannot connect ({error.strerror or error}); is the cluster up and is this "
            "its dashboard address (ray start --head --dashboard-host ..., default port 8265)?"
        ) from None


def _job_info(client, submission_id: str, address: str | None):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as error:
        if "404" in str(error):
            raise ClusterError(
                f"{address}: no job {submission_id!r} on this cluster; `ray job list --address {address}` lists them"
            ) from None
        raise ClusterError(f"{address}: cannot read job {submission_id!r}: {_first_line(error)}") from None


def _state(status) -> str:
    return getattr(status, "value", str(status))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
