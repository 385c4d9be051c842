"""Independent pieces of a stage as Ray tasks, on the embedded or the cluster's Ray."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_tasks"]


def run_tasks(function: Callable[..., Any], arguments: Sequence[tuple], *, cpus: int) -> list[Any]:
    """``function(*args)`` for every ``args`` as a Ray task of ``cpus`` CPUs; the results in ``arguments``' order.

    Call inside :func:`geoseg.runtime.ray_session`. ``function`` must be importable by the workers
    (a module-level function of geoseg), as Ray ships it by reference.
    """
    import ray

    remote = ray.remote(num_cpus=cpus)(function)
    return ray.get([remote.remote(*args) for args in arguments])
