"""The C heap between batches and between bands (glibc).

**Keep freed tensors' memory for the next batch** (:func:`keep_freed_memory`, :func:`allocator_env`).

A CPU forward or backward pass allocates tensors of tens to hundreds of MB (a U-Net's
first feature maps for a batch of 8 tiles of 256 px: 134 MB). glibc's ``malloc`` serves
anything above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns it
with ``munmap`` when the tensor is freed, so every step faults every page of every large
tensor in again, zero-filled by the kernel: measured on the 2-core development machine,
training U-Net/resnet18 took 10.3 million page faults in 80 s and spent ~18% of its CPU
time in the kernel. The same happens in a thread's own arena (Ray Train runs the loop
in a thread), whose heaps cannot exceed 64 MB.

Three glibc settings (mallopt(3); the environment variables of the same names are read
when a process starts) keep that memory in the process for the next step instead:

- ``MALLOC_MMAP_MAX_=0``: no allocation is served by its own mapping; all come from the heap;
- ``MALLOC_TRIM_THRESHOLD_``: free memory at the top of the heap is kept up to 2 GiB, not
  returned at once;
- ``MALLOC_ARENA_MAX=1``: every thread allocates from the main heap (which grows with
  ``brk``) rather than from 64 MB thread arenas that fall back to ``mmap`` for large blocks.

A process then keeps its peak between batches: a prediction actor's peak rose 9% (1,913 →
2,079 MB at 4096², batch 8) and still does not grow with the scene (2,189 MB at 8192²). The
speed-up is what PyTorch's performance tuning guide gets by switching to jemalloc or
tcmalloc ("Switch Memory allocator", https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html),
without a library to preload. Settings the user has made in the environment are kept.

**Hand the free pages back between bands** (:func:`release_free_memory`, glibc's ``malloc_trim``).

A driver that writes one band after another frees what each band used, but glibc keeps freed
pages in its arenas for reuse, so a long run's resident memory settles at the high-water mark of
its transients (GDAL, GEOS, Ray and Arrow all allocate through ``malloc``: ``geoseg/__init__.py``
puts Arrow on the C heap). Measured on the 40000² bench survey with two workers (Arrow still on its
own pool then): the vectorize driver's PSS held 335–385 MB between bands without trimming and
298–316 MB with a trim after each band (its Python objects: 55 MB either way). ``malloc_trim(0)``
(``man 3 malloc_trim``; glibc ≥ 2.8 releases the whole free pages of every arena) costs about a
millisecond. A no-op where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from functools import cache

__all__ = ["ALLOCATOR_ENV", "allocator_env", "keep_freed_memory", "release_free_memory"]

_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB is the most it can say

ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
    "MALLOC_ARENA_MAX": "1",
}

# mallopt(3) parameter numbers (glibc's malloc.h) for the variables above.
_MALLOPT = {"MALLOC_MMAP_MAX_": -4, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_ARENA_MAX": -8}


def allocator_env() -> dict[str, str]:
    """The allocator variables for processes started from here: the user's own values where set."""
    return {name: os.environ.get(name, value) for name, value in ALLOCATOR_ENV.items()}


def keep_freed_memory() -> bool:
    """Apply :func:`allocator_env` to this running process and to the processes it starts.

    The environment is updated (a value already set stays) so that an embedded Ray's processes, which
    inherit it, start with the settings; this process gets them through ``mallopt``.
    Returns whether this process's allocator took them (False where the C library is not glibc).
    """
    settings = allocator_env()
    os.environ.update(settings)
    mallopt = _glibc("mallopt")
    return mallopt is not None and all(mallopt(_MALLOPT[name], int(value)) == 1 for name, value in settings.items())


@cache
def _glibc(function: str):
    """The C library's ``function`` where it is glibc; None elsewhere (macOS, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; whether any were (False: none, or not glibc)."""
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False
