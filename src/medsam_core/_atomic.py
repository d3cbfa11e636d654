"""Temporary files for atomic writes (write to a temp file in the target folder, then os.replace).

``tempfile.mkstemp`` creates files readable by their owner only (0600); a labels file or a
checkpoint written that way would surprise a lab sharing a folder. Files made here get the
permissions a plain ``open(path, "w")`` would give (0666 minus the umask).
"""

from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mkstemp_readable(**kwargs) -> tuple[int, str]:
    """``tempfile.mkstemp(**kwargs)`` with ordinary file permissions; returns (fd, path)."""
    fd, path = tempfile.mkstemp(**kwargs)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # Windows has no fchmod: the default there is fine
        pass
    return fd, path
