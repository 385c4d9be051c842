"""Start or attach to Ray for the length of a stage, with Ray's own output kept off the terminal.

``ray.init()`` with no address starts the embedded local cluster; an address
(job file, ``--address`` or ``RAY_ADDRESS``) attaches to a real one.

Ray writes to the terminal from many places: its Python loggers and warnings,
its C++ core worker (straight to file descriptor 2), the lines its workers write
to stderr (forwarded to the driver's ``sys.stderr`` by ``log_to_driver``), and
the processes it starts, which inherit descriptor 2. Inside
:func:`ray_output_to`, a session points descriptor 2 itself at a log file for
its whole length, which catches all of them; lines workers write to *stdout*
(the training loop's progress, as geoseg prints it) still reach the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from geoseg.io.heap import allocator_env

__all__ = ["ray_kept", "ray_output_to", "ray_session"]

# Where sessions send Ray's output: None is the terminal (``--verbose``, and callers that never ask).
_ray_log: Path | None = None


@contextmanager
def ray_output_to(log_file: Path | None) -> Iterator[None]:
    """Send the output of every Ray session started inside to ``log_file`` (appended; None: the terminal)."""
    global _ray_log
    previous, _ray_log = _ray_log, log_file
    if log_file is not None:
        # Worker lines reach the terminal as geoseg wrote them, without Ray's colour-coded "(pid=...)"
        # prefix (read when Ray is first imported, so before any stage; --verbose keeps it).
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    try:
        yield
    finally:
        _ray_log = previous


@contextmanager
def _stderr_to(log_file: Path | None) -> Iterator[None]:
    """Point file descriptor 2 at ``log_file`` (None: leave it), and back on the way out.

    At the descriptor, not ``sys.stderr``: C++ code and child processes write to it directly. Restored
    before the caller reports a failure, so geoseg's own error lines still reach the terminal.
    """
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _KeptRay:
    """A job's Ray, kept from the first stage that starts it to the job's end (see :func:`ray_kept`)."""

    def __init__(self) -> None:
        self.started = ExitStack()  # Ray's shutdown, then descriptor 2 given back
        self.running = False  # whether this job started the Ray that runs
        self.dashboard = False


_kept: _KeptRay | None = None  # set inside ray_kept


@contextmanager
def ray_kept() -> Iterator[None]:
    """Keep the Ray a stage starts inside running for the next stages, and stop it on the way out.

    Starting the embedded Ray costs ~7 s on a laptop (its GCS, raylet, dashboard and log processes):
    a job paid it for every stage that used Ray (prediction, its overviews, vectorizing, evaluating);
    inside this it pays it once. A job that needs no Ray still starts none. Descriptor 2 stays on
    the run's log from Ray's start to its shutdown, so that Ray's lines between stages go there too.
    """
    global _kept
    previous, _kept = _kept, _KeptRay()
    kept = _kept
    try:
        yield
    finally:
        _kept = previous
        kept.started.close()


@contextmanager
def ray_session(address: str | None = None, *, dashboard: bool = False) -> Iterator[None]:
    """Start (or attach to) Ray for the duration of a stage; reuse it if already up.

    ``dashboard`` applies only to the embedded cluster: its dashboard
    processes take several percent of a 2-core laptop for the whole job
    (measured by ``geoseg bench predict``), so they start only when asked for.
    Inside :func:`ray_kept` a Ray this starts stays up after the stage (one that lacks the
    dashboard a stage asks for is started again with it).
    """
    if _kept is not None:
        _keep_started(_kept, address, dashboard)
        yield
        return
    with _stderr_to(_ray_log):  # from the import on: importing Ray can warn too
        import ray  # here, not at the top: the orchestrator imports this module before it knows Ray is needed

        if ray.is_initialized():
            yield
            return
        _start(ray, address, dashboard)
        try:
            yield
        finally:
            ray.shutdown()


def _keep_started(kept: _KeptRay, address: str | None, dashboard: bool) -> None:
    """Start Ray for the rest of the job unless it runs already (with the dashboard, if asked for)."""
    if kept.running and (kept.dashboard or not dashboard):
        return
    kept.started.close()  # a kept Ray without the dashboard this stage needs, if any
    kept.running = False
    kept.started.enter_context(_stderr_to(_ray_log))  # from the import on: importing Ray can warn too
    import ray

    if ray.is_initialized():  # the caller's own Ray: used, and left to the caller to stop
        return
    _start(ray, address, dashboard)
    kept.started.callback(ray.shutdown)
    kept.running, kept.dashboard = True, dashboard


def _start(ray, address: str | None, dashboard: bool) -> None:
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, **_init_options(address, dashboard))
    from ray.data import DataContext  # only its settings: heavy to import where no stage needs it

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


_NO_PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def _init_options(address: str | None, dashboard: bool) -> dict[str, Any]:
    # Keep the console to geoseg's own progress lines: Ray Train's patched print
    # would echo every worker line twice, and its INFO logs bury the progress.
    # Worker lines are still forwarded (log_to_driver): stdout ones (progress) to the terminal,
    # stderr ones to sys.stderr, which is the log file inside ray_output_to.
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    # Every model or training worker keeps its freed tensors' memory for the next batch (geoseg/io/heap.py).
    if address:  # a running cluster's workers get the settings through the job's runtime environment
        options["runtime_env"] = {"env_vars": {_NO_PRINT_PATCH: "0", **allocator_env()}}
    else:
        # The embedded Ray's processes inherit this process's environment. A runtime environment would
        # cost every model actor ~1 s more to start: Ray prestarts workers for a job without one while
        # it starts, and starts those of a job with one only once the job has registered (measured on
        # 2 cores: the actor's constructor entered 1.2 s after it was asked for, against 0.1 s).
        os.environ.setdefault(_NO_PRINT_PATCH, "0")
        os.environ.update(allocator_env())
        options["include_dashboard"] = dashboard
    return options
