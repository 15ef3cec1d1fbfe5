"""The allocator thresholds that keep a CPU run out of the kernel (visionzoo.runtime)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Whether a 64 MiB malloc comes from the heap (brk) or from a fresh mmap, after tune_allocator().
CHECK = """
import ctypes, visionzoo.runtime as r
tuned = r.tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
pointer = libc.malloc(64 << 20)
heap = next(line for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
low, high = (int(x, 16) for x in heap.split()[0].split("-"))
print(tuned, r.tune_allocator() is tuned, "heap" if low <= pointer < high else "mmap")
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt and /proc/self/maps: Linux with glibc only")


def _run(**env) -> str:
    result = subprocess.run([sys.executable, "-c", CHECK], env={**os.environ, **env}, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


@glibc_only
def test_large_blocks_come_from_the_heap_once_the_allocator_is_tuned():
    assert _run() == "True True heap"


@glibc_only
def test_visionzoo_malloc_0_leaves_the_allocator_alone():
    assert _run(VISIONZOO_MALLOC="0") == "False True mmap"
