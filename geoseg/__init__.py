"""geoseg: seamless, out-of-core segmentation of huge aerial GeoTIFFs.

The public API is small::

    import geoseg

    job = geoseg.load_job("jobs/flood_survey.yaml")   # a validated, typed geoseg.Job
    summary = geoseg.run_job("jobs/flood_survey.yaml")  # every stage the job names
    try:
        ...
    except geoseg.GeosegError as error:                 # bad job or input (exit code 2) or a known failure (1)
        ...

The names are loaded on first use, so ``import geoseg`` (which every module of
the package does) imports neither torch nor Ray.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

from geoseg._version import __version__

# Arrow on the C heap, not its own mimalloc pool: mimalloc keeps a band's freed pages for reuse,
# so a long vectorize driver settled ~60 MB higher (RSS, 16384² bench survey, 2 workers: ~495 MB
# vs ~435 MB between bands), and glibc's pages go back at each band (geoseg.io.heap). Set before
# pyarrow first allocates; inherited by Ray's workers; a user's own setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

if TYPE_CHECKING:
    from geoseg.config import Job
    from geoseg.errors import GeosegError
    from geoseg.job import load_job, run_job, validate_job

__all__ = ["GeosegError", "Job", "__version__", "load_job", "run_job", "validate_job"]

_HOMES = {
    "Job": "geoseg.config",
    "load_job": "geoseg.job",
    "GeosegError": "geoseg.errors",
    "run_job": "geoseg.job",
    "validate_job": "geoseg.job",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
