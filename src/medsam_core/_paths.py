"""Output-path checks done before any model work, so nothing the user gave as input is ever lost.

    out = check_output("labels.tif", inputs=[image, boxes_csv], suffixes=(".tif",), what="labels file")
    out_dir = check_output_dir("labels/", inputs=[images_dir])

An output is refused (``OutputError``, exit code 2 in the CLI) when it

* is one of the inputs, a symbolic link to one, or a hard link of one (same device and inode),
* is a folder (for a file output) or a file (for a folder output),
* is read-only, or its folder does not exist / cannot be written,
* has a file-name ending the writer cannot produce.

Atomic writes (temp file + ``os.replace``) replace a directory entry, never the inode, so a hard
link of an input would in fact survive; it is still refused, because to the user it *is* the input.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError

PathLike = str | os.PathLike


#: File endings made of two suffixes that name one format.
DOUBLE_SUFFIXES = (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr")


def split_suffix(path: PathLike, doubles: tuple[str, ...] = DOUBLE_SUFFIXES) -> tuple[str, str]:
    """File name -> (stem, lower-case suffix), with the endings in ``doubles`` taken as one suffix:
    'a.nii.gz' -> ('a', '.nii.gz'), 'b.OME.TIF' -> ('b', '.ome.tif'), 'c.tif' -> ('c', '.tif'). The one
    place file endings are parsed; callers pass ``doubles`` where a narrower rule is their contract."""
    name = Path(path).name
    low = name.lower()
    for double in doubles:
        if low.endswith(double) and len(name) > len(double):
            return name[: -len(double)], double
    p = Path(name)
    return p.stem, p.suffix.lower()


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file: equal real paths, or the same inode (hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compare what can be compared
        pass
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _flat_inputs(inputs: Iterable[PathLike | None]) -> list[Path]:
    return [Path(p).expanduser() for p in inputs if p is not None and str(p) != ""]


def check_not_input(path: PathLike, inputs: Iterable[PathLike | None], what: str = "output") -> None:
    """Refuse ``path`` when it is one of ``inputs``, or a symbolic or hard link of one."""
    path = Path(path).expanduser()
    inputs = _flat_inputs(inputs)
    for inp in inputs:
        if _same_file(path, inp):
            how = "is" if path.absolute() == inp.absolute() else "is the same file as (a link to)"
            raise OutputError(
                f"the {what} {path} {how} the input {inp}: writing it would destroy the input. "
                "Choose another output name."
            )


def _check_writable_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise OutputError(f"the folder {folder} for the {what} does not exist; create it first")
    if not folder.is_dir():
        raise OutputError(f"{folder} (the folder for the {what}) is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"the folder {folder} for the {what} is not writable; choose another place")


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = (), suffixes: tuple[str, ...] | None = None,
                 what: str = "output file") -> Path:
    """Check that the file ``path`` can be written without harm -> the path (``~`` expanded).

    inputs: every file the command reads (None entries are skipped). suffixes: allowed endings
    (case-insensitive), e.g. (".tif", ".tiff"). Raises OutputError saying what is wrong.
    """
    path = Path(path).expanduser()
    name = path.name.lower()
    if suffixes and not any(name.endswith(s) for s in suffixes):
        raise OutputError(f"{what} {path.name} must end in {', '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(f"the {what} {path} is a folder, not a file; give a file name (inside it, if you like)")
    check_not_input(path, inputs, what)
    _check_writable_folder(path.parent, what)
    if path.exists() or path.is_symlink():
        try:
            st = path.stat()
        except OSError as exc:
            raise OutputError(f"the {what} {path} cannot be replaced: {exc.strerror or exc}") from None
        # Mode bits, not os.access: root may write anything, but a read-only file says "keep me".
        if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise OutputError(f"the {what} {path} exists and is read-only; choose another name or make it writable")
    return path


def check_output_dir(path: PathLike, inputs: Iterable[PathLike | None] = (), what: str = "output folder") -> Path:
    """Check that the folder ``path`` can be created (or exists) and written -> the path.

    inputs: folders (or files) the command reads; the output folder may not be one of them.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"the {what} {path} is a file, not a folder; choose a folder name")
    for inp in _flat_inputs(inputs):
        if _same_file(path, inp):
            raise OutputError(
                f"the {what} {path} is also an input folder ({inp}): choose another one so no input is overwritten"
            )
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"the {what} {path} is not writable; choose another place")
        return path
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create the {what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the {what} {path}: {parent} is not writable")
    return path


def check_distinct(paths: dict[str, PathLike | None]) -> None:
    """Refuse two outputs that are one file, e.g. ``--out x.tif --overlay x.tif``: {what: path}."""
    seen: list[tuple[str, Path]] = []
    for what, p in paths.items():
        if p is None:
            continue
        p = Path(p).expanduser()
        for other_what, other in seen:
            if p.absolute() == other.absolute() or _same_file(p, other):
                raise OutputError(f"the {what} and the {other_what} are the same file {p}; give two names")
        seen.append((what, p))
