"""Hand the C heap's free pages back to the system between bands (glibc's ``malloc_trim``).

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
from functools import cache

__all__ = ["release_free_memory"]


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; whether any were (False: none, or not glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
