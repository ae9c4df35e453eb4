"""Process-level settings the entry points apply once (never at import time), and the device they run on."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from nanoseek.errors import UserError

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


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when there is one, else the CPU), "cpu" or "cuda"; a UserError for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu",
                        param="--device")
    return torch.device(name)
