"""Independent pieces of a stage as Ray tasks, on the embedded or the cluster's Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["iter_tasks", "run_tasks"]


def run_tasks(function: Callable[..., Any], arguments: Sequence[tuple], *, cpus: int) -> list[Any]:
    """``function(*args)`` for every ``args`` as a Ray task of ``cpus`` CPUs; the results in ``arguments``' order.

    Call inside :func:`geoseg.runtime.ray_session`. ``function`` must be importable by the workers
    (a module-level function of geoseg), as Ray ships it by reference.
    """
    return list(iter_tasks(function, arguments, cpus=cpus))


def iter_tasks(function: Callable[..., Any], arguments: Sequence[tuple], *, cpus: int) -> Iterator[Any]:
    """As :func:`run_tasks`, but yields each result in order as soon as it is ready.

    Every task is submitted at once (Ray runs as many as there are CPUs for them), so the caller
    can consume the first results, e.g. write them, while later ones still run.
    """
    import ray

    remote = ray.remote(num_cpus=cpus)(function)
    pending = [remote.remote(*args) for args in arguments]
    for index in range(len(pending)):
        result = ray.get(pending[index])
        pending[index] = None  # let Ray free the result once the caller is done with it
        yield result
