"""Start or attach to Ray for the length of a stage.

``ray.init()`` with no address starts the embedded local cluster; an address
(job file, ``--address`` or ``RAY_ADDRESS``) attaches to a real one.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any

import ray

__all__ = ["ray_session"]


@contextmanager
def ray_session(address: str | None = None, *, dashboard: bool = False):
    """Start (or attach to) Ray for the duration of a stage; reuse it if already up.

    ``dashboard`` applies only to the embedded cluster: its dashboard
    processes take several percent of a 2-core laptop for the whole job
    (measured by ``geoseg bench predict``), so they start only when asked for.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Keep the console to geoseg's own progress lines: Ray Train's patched print
    # would echo every worker line twice, and its INFO logs bury the progress.
    options: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "runtime_env": {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    }
    if not address:
        options["include_dashboard"] = dashboard
    ray.init(address=address, **options)
    from ray.data import DataContext  # only its settings: heavy to import where no stage needs it

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
