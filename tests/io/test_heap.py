"""Free heap pages go back to the system when asked (glibc); elsewhere the call is a no-op."""

import ctypes.util
import os
import platform
import subprocess
import sys

import psutil
import pytest

from geoseg.io.heap import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"), reason="glibc only")
def test_freed_heap_pages_go_back_to_the_system():
    process = psutil.Process()
    blocks, pins = [], []
    for _ in range(2000):  # ~200 MB of heap blocks, each followed by a small one that stays
        blocks.append(bytearray(100_000))
        pins.append(bytearray(1000))
    del blocks  # holes between the pins: glibc keeps them for reuse, resident
    before = process.memory_info().rss
    assert release_free_memory()
    after = process.memory_info().rss
    assert before - after > 100 * 2**20, (before >> 20, after >> 20)
    assert len(pins) == 2000


def test_arrow_allocates_from_the_c_heap_that_is_trimmed():
    """Arrow's own pool would keep freed pages that ``release_free_memory`` cannot hand back."""
    code = "import geoseg, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "system"
