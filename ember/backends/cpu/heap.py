"""Keeps glibc's heap from handing large activation buffers back to the OS between runs.

CPU kernels allocate every output through PyTorch's CPU allocator, i.e. ``malloc``. glibc serves
a block above its mmap threshold (adaptive, at most 32 MiB) with a fresh ``mmap`` and unmaps it
on ``free``, and it trims free memory off the heap top above the trim threshold (at most
64 MiB). The next allocation of that block then page-faults on every 4 KiB page, which costs
more than the layer's arithmetic: MobileNetV2 at batch 8, 2 threads, the 16->96 1x1 convolution
at 112x112 (a 38.5 MB output) took 11.9 ms per call, and 2.7 ms once its output came from the
heap. ONNX Runtime avoids this with its own arena.

``reserve(largest, peak)`` raises the mmap threshold above the engine's largest tensor and the
trim threshold above its planned peak, so freed activations stay in the heap and are reused.
It only ever raises them, never below glibc's own ceilings (so no block glibc would have kept
in the heap is mapped instead), and does nothing where ``mallopt`` is not glibc's. The cost:
the process keeps up to ``peak`` bytes of freed heap instead of returning it to the OS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from typing import Callable, Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MIB = 1 << 20
#: glibc's own ceilings for its adaptive thresholds (64-bit): never set anything below them.
GLIBC_MMAP_CEILING = 32 * MIB
GLIBC_TRIM_CEILING = 64 * MIB
#: Blocks beyond this stay mmapped whatever the engine (keeps a runaway plan from pinning RAM).
MAX_MMAP_THRESHOLD = 1 << 30
#: mallopt takes a C int.
MAX_TRIM_THRESHOLD = (1 << 31) - MIB

_lock = threading.Lock()
_applied = {"mmap": 0, "trim": 0}


@functools.cache
def _mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, or ``None`` on another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return None
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def thresholds(largest: int, peak: int) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for an engine whose largest tensor is ``largest`` bytes
    and whose intermediates peak at ``peak`` bytes."""
    mmap = min(MAX_MMAP_THRESHOLD, max(GLIBC_MMAP_CEILING, -(-largest // MIB) * MIB + MIB))
    trim = max(GLIBC_TRIM_CEILING, 2 * mmap, 2 * peak)
    return mmap, min(trim, MAX_TRIM_THRESHOLD)


def reserve(largest: int, peak: int) -> bool:
    """Raises glibc's malloc thresholds for an engine (see the module docstring).

    Returns whether the thresholds are now at least what the engine needs (``False`` where
    ``mallopt`` is unavailable or refused a value).
    """
    fn = _mallopt()
    if fn is None:
        return False
    mmap, trim = thresholds(largest, peak)
    with _lock:
        ok = True
        if trim > _applied["trim"]:
            if fn(M_TRIM_THRESHOLD, trim) == 1:
                _applied["trim"] = trim
            else:
                ok = False
        if mmap > _applied["mmap"]:
            if fn(M_MMAP_THRESHOLD, mmap) == 1:
                _applied["mmap"] = mmap
            else:
                ok = False
        return ok


def applied() -> dict[str, int]:
    """The thresholds set so far in this process (0: left to glibc)."""
    with _lock:
        return dict(_applied)
