"""Keep freed memory in the process, so that large tensors do not page-fault on every step.

glibc's malloc serves every block above 32 MB (its largest dynamic mmap threshold) with a fresh
mmap and returns it with munmap on free. A training step at the paper preset allocates and frees
dozens of 30-130 MB activations and gradients, so each step touches them as new pages, and the
kernel zeroes every page on first touch, a large part of a step's time on CPU
(`python scripts/bench_train.py` measures it; docs/tuning.md has the numbers).
`keep_freed_memory` makes malloc take every block from the heap and never trim it, so freed
activations are reused as they are. The process keeps its peak memory until it exits, which is
what a training run does anyway. A no-op where glibc's `mallopt` is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Serve all allocations from the heap and never trim it (glibc). True when applied."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
