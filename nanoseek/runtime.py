"""Process-level settings the entry points apply once (never at import time)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep freed large buffers in glibc's heap instead of returning them to the OS.

    glibc serves big allocations with fresh mmap'd pages and unmaps them on free, so every training step
    page-faults its activations in again (zero-filling a fresh 64 MiB tensor runs ~10x slower than reusing
    one, docs/performance.md §5.5). Raising the mmap and trim thresholds makes those buffers
    reusable: a tcmalloc-like effect without LD_PRELOAD. Returns False where glibc is not in use.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TOP_PAD, 64 << 20)
        return bool(ok)
    except (OSError, AttributeError):
        return False
