"""Box prompts made from other annotations: a mask's bounding box, a RECIST measurement.

All boxes are (4,) float64 XYXY in pixels (x_min, y_min, x_max, y_max) of an (H, W) image,
x along columns, y along rows, pixel centres at integer coordinates.

RECIST (Response Evaluation Criteria In Solid Tumours) is how clinicians measure lesions: the
longest diameter on a slice, optionally the longest diameter perpendicular to it (short axis).
A line along the long axis alone does not say how wide the lesion is; we assume an ellipse whose
short axis is ``RECIST_SHORT_RATIO`` (0.8) times the long one. Lesions have short/long ratios of
about 0.5 to 0.8; we take the upper end because a box that cuts the lesion loses it (the model
segments inside the box), while a slightly loose box costs little (MedSAM-family models were
trained on boxes jittered outward by several pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import PromptError

__all__ = ["RECIST_SHORT_RATIO", "box_from_mask", "box_from_recist", "clip_box", "fit_box"]

#: Assumed short/long axis ratio of a lesion when only the long axis is drawn.
RECIST_SHORT_RATIO = 0.8


def _margins(margin: float | Sequence[float]) -> tuple[float, float]:
    m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (2,))
    if not np.isfinite(m).all() or (m < 0).any():
        raise PromptError(f"margin must be a finite number >= 0 (or (mx, my)), got {margin!r}")
    return float(m[0]), float(m[1])


def clip_box(box, image_size: tuple[int, int]) -> np.ndarray:
    """Clip an XYXY box to an (H, W) image; PromptError if nothing of it is left inside."""
    h, w = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    if x0 > w - 1 or y0 > h - 1 or x1 < 0 or y1 < 0:
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    return np.array([max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)])


def box_from_mask(mask, margin: float | Sequence[float] = 0.0) -> np.ndarray:
    """(H, W) mask -> (4,) XYXY bounding box of its foreground, grown by ``margin``, clipped.

    margin: pixels, one number or (mx, my) for an anisotropic pixel grid.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise PromptError(f"mask must be 2D (H, W), got shape {m.shape}")
    m = m != 0
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        raise PromptError("mask is empty: there is no object to put a box around")
    cols = np.flatnonzero(m.any(axis=0))
    mx, my = _margins(margin)
    box = np.array([cols[0] - mx, rows[0] - my, cols[-1] + mx, rows[-1] + my], dtype=np.float64)
    return clip_box(box, m.shape)


def _line(points, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape != (2, 2):
        raise PromptError(f"{name} must be two (x, y) points ((x0, y0), (x1, y1)); got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} has NaN or inf coordinates")
    if np.hypot(*(arr[1] - arr[0])) < 1.0:
        raise PromptError(f"{name} is shorter than one pixel: draw a line across the lesion")
    return arr


def _ellipse_half_extent(long_axis: np.ndarray, short_len: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (hx, hy) half extents of the ellipse with this long axis and short length."""
    centre = long_axis.mean(axis=0)
    d = long_axis[1] - long_axis[0]
    a = np.hypot(*d) / 2.0
    u = d / (2.0 * a)  # unit vector along the long axis; the normal is (-u_y, u_x)
    b = short_len / 2.0
    hx = np.sqrt((a * u[0]) ** 2 + (b * u[1]) ** 2)
    hy = np.sqrt((a * u[1]) ** 2 + (b * u[0]) ** 2)
    return centre, np.array([hx, hy])


def box_from_recist(long_axis, short_axis=None, image_size: tuple[int, int] | None = None,
                    margin: float | Sequence[float] = 2.0,
                    short_ratio: float = RECIST_SHORT_RATIO) -> np.ndarray:
    """A RECIST measurement -> (4,) XYXY box prompt in pixels.

    long_axis: ((x0, y0), (x1, y1)), the lesion's longest diameter.
    short_axis: optional ((x0, y0), (x1, y1)), its longest perpendicular diameter.
    Without a short axis the box is the bounding box of the ellipse that has the long axis as
    its major axis and ``short_ratio`` times its length as minor axis (see module docstring).
    With a short axis, the box covers both lines' endpoints and that ellipse with the measured
    short length. Then ``margin`` pixels are added (one number or (mx, my)) and, with
    ``image_size`` (H, W), the box is clipped to the image.
    """
    long_pts = _line(long_axis, "long_axis")
    if not 0.0 < short_ratio <= 1.0:
        raise PromptError(f"short_ratio must be in (0, 1], got {short_ratio}")
    corners = [long_pts]
    if short_axis is None:
        short_len = short_ratio * np.hypot(*(long_pts[1] - long_pts[0]))
    else:
        short_pts = _line(short_axis, "short_axis")
        short_len = np.hypot(*(short_pts[1] - short_pts[0]))
        corners.append(short_pts)
    centre, half = _ellipse_half_extent(long_pts, short_len)
    corners.append(np.stack([centre - half, centre + half]))
    pts = np.concatenate(corners)
    mx, my = _margins(margin)
    box = np.array([pts[:, 0].min() - mx, pts[:, 1].min() - my, pts[:, 0].max() + mx, pts[:, 1].max() + my])
    if image_size is not None:
        box = clip_box(box, image_size)
    return box


def fit_box(box, size, least: float = 2.0) -> np.ndarray:
    """A box a 3D walk made (blended, carried on or tapered between and past key boxes; the
    cross-check walk's; an extent plane's) as a valid prompt: at least ``least`` px a side and
    inside the (H, W) image, keeping its size where it fits (moved inside rather than clipped).
    Such a box can otherwise leave the image or shrink under a pixel, which the predictor rightly
    refuses for a user's box. A box the predictor takes as it is (after its own clipping) is
    returned unchanged."""
    box = np.asarray(box, float)
    h, w = size
    clipped = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    if np.all(clipped[2:] - clipped[:2] >= least):
        return box
    side = np.minimum(np.maximum(box[2:] - box[:2], least), [w - 1, h - 1])
    centre = np.clip((box[:2] + box[2:]) / 2, side / 2, np.array([w - 1, h - 1]) - side / 2)
    return np.concatenate([centre - side / 2, centre + side / 2])
