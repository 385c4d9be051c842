"""Exception hierarchy.

Every user-facing problem is a ``GeosegError``; the CLI prints its message on one
line and exits with ``exit_code``. Each subclass also inherits the built-in that
fits, as rasterio does, so callers can catch ``ValueError`` or ``OSError``.

Any other exception is a bug, in geoseg or in a Ray worker running geoseg's code:
the CLI prints its whole traceback and exits 1. So only a *known* failure becomes a
``GeosegError``: bad input (exit 2), and while running (``StageError``, exit 1) a
lost actor, worker or node, an actor or worker group that could not start, a
failed read or write (``OSError``), a missing object in storage, each with the
original exception chained as its ``__cause__``. A ``GeosegError`` raised inside a
Ray actor or worker reaches the driver as itself.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClusterError",
    "GeosegError",
    "InputRasterError",
    "InputVectorError",
    "JobConfigError",
    "ModelError",
    "StageError",
]


class GeosegError(Exception):
    """Root of geoseg's errors. ``exit_code`` 2 means bad job or input."""

    exit_code = 2


class JobConfigError(GeosegError, ValueError):
    """The job file is malformed or holds invalid values.

    ``problems`` holds every problem found, one line each, so that
    ``geoseg validate`` can report them all at once.
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class InputRasterError(GeosegError, OSError):
    """A raster is missing, unreadable, lacks a CRS or does not fit the job (``problems``: one line each)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class InputVectorError(GeosegError, OSError):
    """A label vector file is missing, unreadable or does not fit the scene."""


class ModelError(GeosegError, ValueError):
    """Unknown architecture, or a tile size the model cannot take."""


class CheckpointError(GeosegError, OSError):
    """A checkpoint is missing, unsafe to load or does not match the job."""


class StageError(GeosegError, RuntimeError):
    """A stage failed while running (exit code 1), not because of bad input.

    Raised for known failures only (a lost worker, a failed write, an output changed
    under the stage, ...), ``from`` the exception that reported it where there is one;
    a bug is never turned into one.
    """

    exit_code = 1


class ClusterError(GeosegError, ConnectionError):
    """A Ray cluster's job server is unreachable, refuses a request or knows no such job."""
