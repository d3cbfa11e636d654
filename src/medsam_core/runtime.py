"""Process-level performance settings that an application (the CLI, the napari plugin) opts into.

The library itself never changes global process state on import; ``medsam`` and the napari
widget call :func:`tune_malloc` once at start-up.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned: bool | None = None


def tune_malloc(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Ask glibc's malloc to keep freed large blocks instead of returning them to the system.

    The decoder and encoder allocate and free buffers of several MiB on every call; by default
    glibc hands such blocks back to the kernel and page-faults them in again next time, which
    measured as about a third of the decoder's time (docs/benchmarks.md, "Decoder"). Raising
    the trim threshold (and the mmap threshold to glibc's maximum, 32 MiB on 64-bit) keeps them
    in the heap. Linux/glibc only; a no-op elsewhere or when ``MEDSAM_TUNE_MALLOC=0``.
    Returns True when the settings were applied.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("MEDSAM_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))) and ok
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    _tuned = ok
    return ok
