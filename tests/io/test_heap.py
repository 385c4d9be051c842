"""Free heap pages go back to the system when asked (glibc); elsewhere the call is a no-op."""

import ctypes.util
import platform

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
