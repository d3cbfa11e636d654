"""Where a batch's boxes come from: box CSVs, napari Shapes CSV exports, or existing label images.

Formats (all boxes XYXY pixels, inclusive, along the array's columns (x) and rows (y)):

* one box CSV for the whole folder: columns ``image`` (file name, or stem), ``x_min, y_min,
  x_max, y_max`` and an optional ``z`` (slice of a 3D image);
* a folder of per-image CSVs named ``<image stem>.csv``, each either a box CSV (as ``medsam
  segment`` reads) or a napari Shapes layer export (File > Save Selected Layer(s) as .csv:
  columns ``index, shape-type, vertex-index, axis-0, axis-1[, axis-2]``; each shape becomes the
  box spanning its vertices, axes (y, x) or (z, y, x), a 3D shape must lie in one z slice);
* a folder of label images (e.g. Cellpose output) paired with the images by file stem: one box
  per label id per slice (its bounding box, grown by ``margin`` pixels), and the result keeps the
  label ids.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .errors import ImageError, PromptError
from .segment import BOX_COLUMNS, read_boxes_csv, slice_index
from .series import split_name

SHAPES_COLUMNS = ("index", "shape-type", "vertex-index", "axis-0", "axis-1")
Boxes = tuple[np.ndarray, np.ndarray | None]  # (N, 4) XYXY, (N,) z or None


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptError(f"cannot read boxes file {path}: {exc}") from exc
    for line, r in enumerate(raw, start=2):
        if None in r:  # DictReader keeps values beyond the header under the key None
            raise PromptError(f"boxes file {path}, line {line} has more fields than the header "
                              f"({len(header)} columns): remove the extra values or add column names")
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in raw]
    return header, rows


def is_shapes_csv(header: list[str]) -> bool:
    return all(c in header for c in SHAPES_COLUMNS)


def read_shapes_csv(path: str | os.PathLike) -> Boxes:
    """A napari Shapes CSV export -> (boxes (N, 4) XYXY, z (N,) or None); one box per shape."""
    path = Path(path).expanduser()
    header, rows = _read_rows(path)
    if not is_shapes_csv(header):
        raise PromptError(f"{path} is not a napari Shapes export: it needs columns {', '.join(SHAPES_COLUMNS)}")
    axes = sorted((c for c in header if c.startswith("axis-")), key=lambda c: int(c.split("-")[1]))
    if len(axes) not in (2, 3):
        raise PromptError(f"{path}: shapes with {len(axes)} axes; boxes need (y, x) or (z, y, x) vertices")
    shapes: dict[int, list[list[float]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            shapes.setdefault(int(float(row["index"])), []).append([float(row[a]) for a in axes])
        except (KeyError, ValueError, OverflowError) as exc:
            raise PromptError(f"{path}, line {line}: {exc}; every vertex needs numbers in {', '.join(axes)}") from exc
    if not shapes:
        raise PromptError(f"{path} has a header but no shapes")
    boxes, zs = [], []
    for idx in sorted(shapes):
        v = np.asarray(shapes[idx])
        y, x = v[:, -2], v[:, -1]
        boxes.append([x.min(), y.min(), x.max(), y.max()])
        if len(axes) == 3:
            z = np.floor(v[:, 0] + 0.5)
            if (z != z[0]).any():
                raise PromptError(f"{path}: shape {idx} spans slices {sorted(set(z.tolist()))}; draw each box in one slice")
            zs.append(int(z[0]))
    arr = np.asarray(boxes, np.float64)
    if not np.isfinite(arr).all():
        raise PromptError(f"{path} contains NaN or inf coordinates")
    return arr, (np.asarray(zs, np.int64) if zs else None)


def read_any_boxes(path: str | os.PathLike) -> Boxes:
    """A per-image CSV: napari Shapes export or box CSV (x_min, y_min, x_max, y_max[, z])."""
    header, _ = _read_rows(Path(path).expanduser())
    return read_shapes_csv(path) if is_shapes_csv(header) else read_boxes_csv(path)


def read_table(path: str | os.PathLike, image_names: list[str], skipped: list[str] | tuple[str, ...] = ()
               ) -> dict[str, Boxes]:
    """One CSV with an ``image`` column -> {image file name: (boxes, z)}; names may be stems.

    skipped: files of the folder left out of this run (``--pattern``): their rows are ignored.
    Raises PromptError when a row names an image that is in neither list.
    """
    path = Path(path).expanduser()
    header, rows = _read_rows(path)
    if "image" not in header:
        raise PromptError(
            f"{path} has no 'image' column: a single boxes CSV for a folder needs columns "
            "image,x_min,y_min,x_max,y_max[,z]; or pass a folder of <image stem>.csv files"
        )
    missing = [c for c in BOX_COLUMNS if c not in header]
    if missing:
        raise PromptError(f"{path} is missing the columns {', '.join(missing)}")
    by_name = {n: n for n in image_names} | {split_name(n)[0]: n for n in image_names}
    left_out = set(skipped) | {split_name(n)[0] for n in skipped}
    grouped: dict[str, list[dict[str, str]]] = {}
    for line, row in enumerate(rows, start=2):
        name = by_name.get(row["image"])
        if name is None and row["image"] in left_out:
            continue
        if name is None:
            raise PromptError(f"{path}, line {line}: image {row['image']!r} is not in the image folder")
        grouped.setdefault(name, []).append(row)
    has_z = "z" in header
    out = {}
    for name, group in grouped.items():
        try:
            boxes = np.array([[float(r[c]) for c in BOX_COLUMNS] for r in group], np.float64)
            z = None
            zs = [(r.get("z") or "").strip() for r in group] if has_z else []
            if any(zs):  # an empty z on a 2D image's rows: a folder may mix images and volumes
                if not all(zs):
                    raise PromptError(f"{path}: some boxes of {name} have a z and some do not: give every box "
                                      "of a volume its slice, and leave z empty only for 2D images")
                z = np.array([slice_index(v) for v in zs], np.int64)
        except (ValueError, OverflowError) as exc:
            raise PromptError(f"{path}: a box of {name} is not four numbers and a slice ({exc})") from exc
        if not np.isfinite(boxes).all():
            raise PromptError(f"{path}: boxes of {name} contain NaN or inf")
        out[name] = (boxes, z)
    return out


def find_paired(folder: Path, image: Path, suffixes: tuple[str, ...], _index: dict | None = None) -> Path | None:
    """The file in ``folder`` with the same stem as ``image`` and one of ``suffixes`` (first by name).

    _index: a dict reused across calls to list ``folder`` once (stem -> paths).
    """
    index = _index if _index is not None else {}
    if not index:
        for p in sorted(folder.iterdir(), key=lambda q: q.name):
            stem, suffix = split_name(p)
            if p.is_file() and not p.name.startswith(".") and suffix in suffixes:
                index.setdefault(stem, []).append(p)
    hits = index.get(split_name(image)[0], [])
    return hits[0] if hits else None


def _split_binary(planes: list[np.ndarray]) -> list[np.ndarray]:
    """A binary mask (one foreground value: 0/1, 0/255 from a threshold) holds many objects under one
    id: one box around all of them segmented them as one object. Each connected object (8-connected,
    per plane) gets its own id, with a warning, as the napari reader and ``train`` treat such masks."""
    import warnings

    from scipy import ndimage

    values = np.unique(np.concatenate([np.unique(p) for p in planes]))
    if len(values[values != 0]) != 1:
        return planes
    split = [ndimage.label(p != 0, structure=np.ones((3, 3), bool))[0] for p in planes]
    if max(int(p.max()) for p in split) <= 1:
        return planes
    warnings.warn("the labels look like a binary mask (one value for every object): each connected object "
                  "gets its own box; give each object its own id (e.g. skimage.measure.label) to choose",
                  UserWarning, stacklevel=3)
    return split


def boxes_from_labels(labels, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(Y, X) or (Z, Y, X) label image -> (boxes (N, 4) XYXY, z (N,) or None, ids (N,)).

    One box per label id (per slice in 3D): its bounding box grown by ``margin`` pixels on each
    side, clipped to the image.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui" or labels.ndim not in (2, 3):
        raise ImageError(f"label image of dtype {labels.dtype}, shape {labels.shape}: need integer (Y, X) or (Z, Y, X)")
    if margin < 0:
        raise PromptError(f"margin {margin} must be >= 0 pixels")
    planes = [labels] if labels.ndim == 2 else list(labels)
    planes = _split_binary(planes)
    boxes, zs, ids = [], [], []
    h, w = labels.shape[-2:]
    for zi, plane in enumerate(planes):
        for k, sl in enumerate(ndimage.find_objects(plane.astype(np.int64, copy=False)), start=1):
            if sl is None:
                continue
            boxes.append([max(sl[1].start - margin, 0), max(sl[0].start - margin, 0),
                          min(sl[1].stop - 1 + margin, w - 1), min(sl[0].stop - 1 + margin, h - 1)])
            zs.append(zi)
            ids.append(k)
    arr = np.asarray(boxes, np.float64).reshape(-1, 4)
    return arr, (np.asarray(zs, np.int64) if labels.ndim == 3 else None), np.asarray(ids, np.int64)
