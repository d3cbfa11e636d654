"""Boxes in, instance labels out: the job behind ``medsam segment`` and ``medsam demo``.

Box CSV: a header ``x_min,y_min,x_max,y_max`` (XYXY, pixel coordinates along the array's columns
and rows, the napari display of the array), plus a ``z`` column (slice index) for 3D images.
Other columns are ignored. Instance ids follow box order: box i (0-based, i.e. CSV data row i+1)
becomes id i+1. Where boxes overlap, a later box only fills pixels that are still background, so
an earlier object is never overwritten (the napari widget's default rule too).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ImageError, PromptError
from .preprocess import Intensity, check_boxes

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def slice_index(text: str) -> int:
    """A CSV's z value -> slice index; "8.0" is slice 8, "8.7" is refused (ValueError), never rounded."""
    zf = float(text)
    if zf != int(zf):
        raise ValueError(f"z={text} is not a whole slice index")
    return int(zf)
Progress = Callable[[int, int], None] | None


def read_boxes_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a box CSV -> (boxes (N, 4) float64 XYXY, z (N,) int64 or None when there is no z column)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PromptError(f"boxes file {path} is a directory, not a CSV file")
    if not path.is_file():
        raise PromptError(f"boxes file {path} does not exist (check the path)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptError(f"cannot read boxes file {path}: {exc}") from exc
    missing = [c for c in BOX_COLUMNS if c not in header]
    if missing:
        raise PromptError(
            f"boxes file {path} needs a header line with columns x_min,y_min,x_max,y_max (and z for 3D); "
            f"missing: {', '.join(missing)}"
        )
    has_z = "z" in header
    if not rows:
        raise PromptError(f"boxes file {path} has a header but no boxes")
    boxes = np.zeros((len(rows), 4), np.float64)
    z = np.zeros(len(rows), np.int64) if has_z else None
    for i, row in enumerate(rows):
        line = i + 2  # 1-based, after the header (DictReader puts extra fields under the key None)
        if None in row:
            raise PromptError(f"boxes file {path}, line {line} has more fields than the header "
                              f"({len(header)} columns): remove the extra values or add column names")
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            boxes[i] = [float(row[c]) for c in BOX_COLUMNS]
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise PromptError(f"boxes file {path}, line {line}: {exc}; every box needs four numbers") from exc
        if has_z:
            try:
                z[i] = slice_index(row["z"])
            except (ValueError, KeyError, TypeError, OverflowError) as exc:
                raise PromptError(f"boxes file {path}, line {line}: {exc}; z is the slice index, a whole "
                                  "number from 0") from exc
    if not np.isfinite(boxes).all():
        raise PromptError(f"boxes file {path} contains NaN or inf coordinates")
    return boxes, z


def check_boxes_for_image(boxes: np.ndarray, z: np.ndarray | None, spatial_shape: tuple[int, ...]) -> None:
    """Check boxes (and z) against a (Y, X) or (Z, Y, X) image before any model work."""
    if len(spatial_shape) == 3:
        if z is None:
            raise PromptError(
                f"the image is 3D {spatial_shape} (Z, Y, X): add a z column to the boxes file giving the "
                "slice each box is drawn on"
            )
        bad = np.flatnonzero((z < 0) | (z >= spatial_shape[0]))
        if bad.size:
            raise PromptError(
                f"box {int(bad[0])} has z={int(z[bad[0]])}, outside the {spatial_shape[0]} slices (0..{spatial_shape[0] - 1})"
            )
    elif z is not None:
        raise PromptError("the image is 2D but the boxes file has a z column: remove it, or pass the 3D volume")
    check_boxes(boxes, spatial_shape[-2:])


def paste_masks(labels: np.ndarray, masks: np.ndarray, ids) -> None:
    """Write (N, H, W) bool masks into (H, W) ``labels`` in place, in order, background pixels only."""
    for mask, obj_id in zip(masks, ids, strict=True):
        labels[mask & (labels == 0)] = obj_id


def segment_boxes(predictor, image: np.ndarray, boxes: np.ndarray, z: np.ndarray | None = None,
                  intensity: Intensity | None = None, channel=None, batch_size: int = 64,
                  progress: Progress = None, roi: str = "auto", clip_to_box: bool = True) -> np.ndarray:
    """Segment every box; returns uint32 labels of the image's spatial shape, box i -> id i+1.

    image: (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C) when ``z`` is given (one slice index per
    box). boxes: (N, 4) XYXY pixels. Every slice goes through roi.predict_boxes: roi "auto"
    (whole image for boxes big enough, a zoomed crop for small ones), "roi" or "whole";
    clip_to_box as there. progress(done, total) is called after each encode (2D) or slice
    (3D). A 3D volume gets one intensity window for all its slices (volume_intensity).
    batch_size is kept for compatibility (decoding is chunked by roi.DECODE_CHUNK).
    """
    from .roi import count_encodes, iter_box_masks
    from .volume import volume_intensity

    del batch_size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if z is None:
        labels = np.zeros(image.shape[:2], np.uint32)
        total = count_encodes(check_boxes(boxes, image.shape[:2]), image.shape[:2], roi,
                              predictor.spec.preprocessing.input_size)
        for k, (idx, results) in enumerate(iter_box_masks(predictor, image, boxes, roi, intensity, channel,
                                                          clip_to_box)):
            paste_box_masks(labels, results, idx + 1)
            if progress:
                progress(k + 1, total)
        return labels
    z = np.asarray(z, np.int64)
    if image.ndim not in (3, 4):
        raise ImageError(f"boxes with z need a (Z, Y, X) volume, got shape {image.shape}")
    labels = np.zeros(image.shape[:3], np.uint32)
    intensity = volume_intensity(image, intensity)
    slices = sorted(set(z.tolist()))
    for k, zi in enumerate(slices):
        sel = np.flatnonzero(z == zi)  # box order kept within the slice
        for idx, results in iter_box_masks(predictor, image[zi], boxes[sel], roi, intensity, channel, clip_to_box):
            paste_box_masks(labels[zi], results, sel[idx] + 1)
        if progress:
            progress(k + 1, len(slices))
    return labels


def paste_box_masks(labels: np.ndarray, results, ids) -> None:
    """Paste roi.BoxMask results into (H, W) ``labels`` in place; where objects overlap the smallest
    id wins (the same as pasting in box order onto background only, whatever the encode order)."""
    from .roi import paste_min_id

    for r, obj_id in zip(results, ids, strict=True):
        paste_min_id(labels, r.window, r.mask[None], np.array([obj_id], np.uint32))


def parse_intensity(text: str | None) -> Intensity:
    """'auto' | 'percentile' | 'as_is' | 'minmax' | 'ct:<window name>' (see CT_WINDOWS) -> Intensity."""
    from .preprocess import CT_WINDOWS

    text = (text or "auto").strip().lower()
    if text.startswith("ct"):
        name = text.partition(":")[2] or "soft_tissue"
        if name not in CT_WINDOWS:
            raise ImageError(f"unknown CT window {name!r}; use ct:<name> with one of {', '.join(CT_WINDOWS)}")
        return Intensity.ct(name)
    text = text.replace("-", "_")
    if text not in ("auto", "percentile", "as_is", "minmax"):
        raise ImageError(f"unknown intensity {text!r}: use auto, percentile, as_is, minmax or ct:<window>")
    return Intensity(mode=text)


def parse_channel(text: str | None):
    """'auto' | 'rgb' | 'mean' | 'max' | an integer index -> what Predictor's ``channel`` takes."""
    text = (text or "auto").strip().lower()
    if text.lstrip("-").isdigit():
        return int(text)
    if text not in ("auto", "rgb", "mean", "max"):
        raise ImageError(f"unknown channel {text!r}: use auto, rgb, mean, max or a channel index (0, 1, ...)")
    return text
