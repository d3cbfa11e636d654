"""How far the image under the walk's box moves from one slice to the next (block matching).

The box walk (walk.py) holds the user's box from slice to slice: on weak-edged MRI structures the
model's own masks are not exact enough to steer a box by (docs/3d.md). A structure that slides
across the slices still moves the tissue around it, and that motion can be read from the image
alone, without the model's masks: the box's region on the neighbour slice is matched against the
next slice at every whole-pixel shift within a radius (normalised cross-correlation, so a change
of brightness or contrast between slices does not count). The walk moves its anchored box by the
summed shifts (``BoxWalk.follow``).

A shift is taken only when it matches clearly better than no shift (``gain``), so a still object
(a nucleus in a confocal stack) keeps its box where the user drew it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_SIDE = 96  # the matched region is sampled down to at most this many pixels a side


def follow_radius(follow: float, spacing: Sequence[float]) -> int:
    """Search radius in pixels for ``follow`` pixels per slice at isotropic spacing: slices
    thicker than the pixels move the image further between neighbours (at least 1 px)."""
    sz, sy, sx = (float(s) for s in spacing)
    return max(1, int(round(follow * sz / min(sy, sx))))


def image_shift(a: np.ndarray, b: np.ndarray, box: Sequence[float], radius: int,
                gain: float = 0.02) -> tuple[int, int]:
    """(dx, dy): the whole-pixel shift within +-``radius`` at which slice ``b`` best matches slice
    ``a``'s region under ``box`` (XYXY pixels), by normalised cross-correlation; (0, 0) unless
    the best match beats no shift by ``gain`` (or the region is under 5 px a side, or flat on
    either slice: a blank slice says nothing about motion)."""
    h, w = a.shape
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0 = max(x0, radius), max(y0, radius)
    x1, y1 = min(x1, w - 1 - radius), min(y1, h - 1 - radius)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0, 0
    step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / MAX_SIDE)))
    rows, cols = np.arange(y0, y1 + 1, step), np.arange(x0, x1 + 1, step)
    ref, here = _normalised(a[np.ix_(rows, cols)]), _normalised(b[np.ix_(rows, cols)])
    if ref is None or here is None:
        return 0, 0
    still = float(np.mean(ref * here))
    best, best_score = (0, 0), still
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            cand = _normalised(b[np.ix_(rows + dy, cols + dx)]) if (dx or dy) else None
            score = -np.inf if cand is None else float(np.mean(ref * cand))
            if score > best_score:
                best, best_score = (dx, dy), score
    return best if best_score - still >= gain else (0, 0)


def _normalised(patch: np.ndarray) -> np.ndarray | None:
    p = patch.astype(np.float32)
    sd = float(p.std())
    return None if sd <= 1e-6 * max(1.0, float(np.abs(p).max())) else (p - p.mean()) / sd
