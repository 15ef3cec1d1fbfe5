"""Process-wide runtime settings that make PyTorch on a CPU fast: the C allocator's thresholds.

PyTorch's CPU tensors come from the C library's `malloc`. glibc serves every request above its
mmap threshold (128 KiB, adapting up to at most 32 MiB) with a fresh `mmap`, and gives it back
with `munmap` when freed. A CNN's activations are larger than that (EfficientNet-Lite0's first
feature map at batch 32 and 224 px is 51 MB), so every forward pass maps, zero-fills page by
page and unmaps hundreds of megabytes: the process spends more time in the kernel than in the
kernels. Measured on the 2-core CI machine (efficientnet_lite0, batch 32, fp32, 224 px,
inference): 20.5 img/s with 11.2 s of system time against 8.6 s of user time; with the
thresholds below, 84.9 img/s and 0.2 s of system time (benchmarks/transfer_cpu.py, issue 19).
Intel's PyTorch tuning guide gives the same diagnosis and recommends jemalloc or tcmalloc
through LD_PRELOAD; raising glibc's own thresholds gets the same effect without a dependency
or a restart.

`tune_allocator()` raises the mmap threshold to 1 GiB (large blocks come from the heap and are
reused) and the trim threshold to 2 GiB (freed memory stays in the process for the next batch),
so the peak RSS stays what the peak of live tensors needs. It is called by the command line and
by `visionzoo.train`; set VISIONZOO_MALLOC=0 to leave the allocator alone. It does nothing on a
C library other than glibc.

`bf16_native(device)` says whether a device computes bf16 natively (a CPU with AVX512-BF16 or AMX,
a GPU that supports it), where bf16 autocast is faster than fp32 rather than emulated and slower.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_allocator", "bf16_native"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 1 << 31
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are set."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("VISIONZOO_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only: musl's mallopt is a stub
        _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        _tuned = False
    return _tuned


def bf16_native(device) -> bool:
    """Whether `device` (a `torch.device`) computes bf16 natively (so bf16 autocast is faster, not slower)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                flags = cpuinfo.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False
