"""One-thread BLAS for the small matrix products around the encoder (resize, mask upsampling).

NumPy's OpenBLAS runs a product of this size (256x512 @ 512x512) on all cores, and its worker
threads then busy-wait for new work for a while (OpenBLAS's thread timeout) instead of sleeping.
``prepare_image`` runs right before the encoder, so those spinning threads took CPU from the
engine's own threads: on the 2-core test machine ``set_image`` ran ~60 ms (10%) slower than the
engine call alone, and 20 ms of CPU was burnt after every ``prepare_image`` under load
(docs/engines.md, "Where set_image's time goes"). One thread gives the same bytes (OpenBLAS
splits a product over output blocks, not over the summed axis) and is no slower at this size.

``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27, NumPy's wheels) changes the calling
thread only, so a napari worker thread encoding does not change BLAS for the GUI thread. Where
NumPy uses another BLAS or an older OpenBLAS, ``one_blas_thread()`` does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator
from pathlib import Path


@functools.cache
def _local_setter() -> Callable[[int], int] | None:
    """NumPy's OpenBLAS ``openblas_set_num_threads_local``, or None where there is none."""
    import numpy as np

    base = Path(np.__file__).resolve().parent
    # Linux and Windows wheels bundle it in numpy.libs/, macOS wheels in numpy/.dylibs/.
    for folder in (base.parent / "numpy.libs", base / ".dylibs", base.parent / "numpy.libs" / "lib"):
        for path in sorted(folder.glob("*openblas*")) if folder.is_dir() else ():
            try:
                lib = ctypes.CDLL(str(path))  # already loaded by NumPy: the same library
                fn = lib.openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    return None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy matrix products inside run on one thread (this thread only); restored after."""
    setter = _local_setter()
    if setter is None:
        yield
        return
    before = setter(1)
    try:
        yield
    finally:
        setter(before)
