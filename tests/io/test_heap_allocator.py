"""Freed tensors' memory stays in the process for the next batch (``geoseg.io.heap.keep_freed_memory``).

Each case runs in a fresh interpreter: glibc reads its settings when a process starts, and
``mallopt`` changes them for the rest of a process's life.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from geoseg.io.heap import ALLOCATOR_ENV
from geoseg.runtime.session import _init_options

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV} | (env or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


SECOND_BATCH_FAULTS = """
    import ctypes, resource
    from geoseg.io.heap import keep_freed_memory
    kept = keep_freed_memory() if {keep} else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    size = 200 * 2**20  # as torch allocates a tensor (NumPy would ask the kernel for huge pages)

    def batch():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        return block

    libc.free(batch())  # a first batch's tensor, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = batch()  # the next batch's
    print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (size // resource.getpagesize()))
"""


@glibc_only
def test_the_next_batch_reuses_the_memory_the_last_one_freed():
    kept, faulted_share = run_python(SECOND_BATCH_FAULTS.format(keep=True)).split()
    assert kept == "True"
    assert float(faulted_share) < 0.05
    # Without the settings every page of the 200 MB block is faulted in again (the cost removed).
    kept, faulted_share = run_python(SECOND_BATCH_FAULTS.format(keep=False)).split()
    assert kept == "False"
    assert float(faulted_share) > 0.9


def test_the_embedded_rays_workers_start_with_the_settings_and_the_users_own_value_wins():
    seen = run_python(
        """
        import json, os, ray
        from geoseg.io.heap import ALLOCATOR_ENV
        from geoseg.runtime.session import ray_session

        @ray.remote(num_cpus=1)
        def settings():
            return {name: os.environ.get(name) for name in ALLOCATOR_ENV}

        with ray_session(None):
            print(json.dumps(ray.get(settings.remote())))
        """,
        env={"MALLOC_ARENA_MAX": "4"},
    )
    assert json.loads(seen) == {**ALLOCATOR_ENV, "MALLOC_ARENA_MAX": "4"}


def test_a_clusters_workers_get_the_settings_through_the_runtime_environment(monkeypatch):
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    options = _init_options("ray://head:10001", dashboard=False)
    assert options["runtime_env"]["env_vars"] == {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **ALLOCATOR_ENV}
    assert all(name not in os.environ for name in ALLOCATOR_ENV)  # nothing set in the driver for a cluster
