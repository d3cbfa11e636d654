"""Temporary files for atomic writes (write to a temp file in the target folder, then os.replace).

``tempfile.mkstemp`` creates files readable by their owner only (0600); a labels file or a
checkpoint written that way would surprise a lab sharing a folder. Files made here get the
permissions a plain ``open(path, "w")`` would give (0666 minus the umask).

Every temp file made here carries ``TMP_MARK`` in its name (``.<target>.medsam-tmp-XXXXXXXX<suffix>``)
so that one left behind by a killed process (``kill -9``, power loss) can be recognised and
removed by a later run (``clean_stale_tmp``) without touching anybody else's files.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

TMP_MARK = "medsam-tmp-"
#: Age (seconds) after which a temp file of ours is certainly abandoned: a write takes seconds.
STALE_AFTER_S = 3600.0
# mkstemp's random part is 8 characters of [a-z0-9_]; the name starts with a dot (hidden).
_TMP_NAME = re.compile(r"^\..*" + re.escape(TMP_MARK) + r"[a-z0-9_]{8}[^/]*$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mkstemp_readable(**kwargs) -> tuple[int, str]:
    """``tempfile.mkstemp(**kwargs)`` with ordinary file permissions and our mark; returns (fd, path)."""
    kwargs["prefix"] = str(kwargs.get("prefix") or ".") + TMP_MARK
    fd, path = tempfile.mkstemp(**kwargs)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # Windows has no fchmod: the default there is fine
        pass
    return fd, path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a marked temp file in the same folder and
    ``os.replace``: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = mkstemp_readable(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_our_tmp(name: str) -> bool:
    """True for a file name made by ``mkstemp_readable`` (and only those)."""
    return bool(_TMP_NAME.match(name))


def clean_stale_tmp(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove our own temp files older than ``max_age_s`` from ``folder`` -> the paths removed.

    Only names made by ``mkstemp_readable`` are candidates, so nothing else in the folder is ever
    touched; a younger one may belong to a write still running in another process and is kept.
    Errors (a missing folder, a file removed meanwhile, no permission) are ignored: cleaning is a
    courtesy, never a reason to fail the run.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_our_tmp(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
