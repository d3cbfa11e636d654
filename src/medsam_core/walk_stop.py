"""Where a 3D walk stops: per-slice features, the stop rules, and the evidence count that cuts a
direction.

Each decoded slice gets features (predicted IoU, area, contrast against its surround, mean
intensity, overlap with the neighbour mask, agreement with the cross-check walk). ``stop_reason``
says which rule, calibrated on the start slice, the slice trips (a short text the user sees), or
None. ``Evidence`` turns that sequence into the cut: every slice that passes adds one, every slice
that trips subtracts ``trip_weight``; slices after the running maximum are held, the direction
ends once the count has fallen ``patience`` below its maximum (or the mask is empty), and it is cut
just after the maximum. The cut is chosen on the whole profile walked so far rather than at the first
slice that trips: a bad slice between good ones is kept, and a run of good slices after a few bad
ones wins them back. With ``trip_weight`` 1 and ``patience`` 2 this is the earlier rule (two
slices in a row that trip end the walk, at the first). docs/3d.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Calibration", "Evidence", "Stop", "StopRules", "contrast", "slice_features", "stop_reason"]


@dataclass(frozen=True)
class Stop:
    """Why one direction of a walk ended: a short reason and the slice where it happened (the
    first slice not kept; for "end of volume" and "reached key slice" the last slice kept)."""

    reason: str
    slice: int

    def __str__(self) -> str:
        return f"{self.reason} at slice {self.slice}"


@dataclass(frozen=True)
class StopRules:
    """When a slice trips (see walk.py's docstring); a rule at 0 (``max_shift`` None) is off.

    ``patience``: how far the evidence count may fall below its maximum before the direction ends;
    ``trip_weight``: what one tripping slice costs (a passing slice adds 1)."""

    min_iou: float = 0.3
    iou_drop: float = 0.6
    min_area_ratio: float = 0.2
    min_contrast: float = 0.3
    max_shift: float | None = None
    max_growth: float | None = 2.0
    min_agree: float = 0.35  # IoU between the mask and the cross-check walk's mask
    patience: float = 3.0
    contrast_noise: float = 2.0  # contrast rule only if the start's contrast >= this x its inside std
    trip_weight: float = 1.0


@dataclass
class Calibration:
    """What the start slice showed: predicted IoU, mean and std inside the mask, contrast (0: the
    contrast rule is off), and the (x, y) px slack between the user's box and the mask's box."""

    score: float
    mean: float
    std: float
    contrast: float
    slack: tuple[float, float]


def contrast(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """Mean intensity inside ``mask`` minus the lower quartile of a ``ring``-pixel band around it
    (the quartile, not the mean: a touching neighbour covers part of the band)."""
    from scipy import ndimage

    if not mask.any():
        return 0.0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    sl = (
        slice(max(rows[0] - ring, 0), rows[-1] + ring + 1),
        slice(max(cols[0] - ring, 0), cols[-1] + ring + 1),
    )
    m, img = mask[sl], image[sl].astype(np.float64)
    band = ndimage.binary_dilation(m, iterations=ring) & ~m
    return float(img[m].mean() - np.percentile(img[band], 25)) if band.any() else 0.0


def slice_features(image: np.ndarray, mask: np.ndarray, score: float, prev: np.ndarray | None) -> dict:
    """What the rules see on one slice: (Y, X) image and bool mask, predicted IoU, neighbour mask."""
    area = int(mask.sum())
    f = {"score": float(score), "area": area, "overlap": 0.0, "mean": 0.0, "contrast": 0.0}
    if area:
        vals = image[mask].astype(np.float64)
        f["mean"], f["std"] = float(vals.mean()), float(vals.std())
        f["contrast"] = contrast(image, mask)
        if prev is not None and prev.any():
            f["overlap"] = float((mask & prev).sum() / (mask | prev).sum())
    return f


def stop_reason(r: StopRules, f: dict, prev_area: int, cal: Calibration) -> str | None:
    """The rule ``f`` (a slice's features) trips, as a short user-readable reason, or None.
    ``prev_area``: the neighbour slice's mask area in pixels."""
    if f["area"] == 0:
        return "vanished"
    if f["score"] < r.min_iou or f["score"] < r.iou_drop * cal.score:
        return f"IoU fell to {f['score']:.2f}"
    if f["area"] < r.min_area_ratio * prev_area:
        return "area collapsed"
    if r.max_growth is not None and f["area"] > r.max_growth * prev_area:
        return "area grew"
    if r.min_contrast and cal.contrast and f["contrast"] / cal.contrast < r.min_contrast:
        return "contrast faded"
    if r.max_shift is not None and cal.std > 0 and abs(f["mean"] - cal.mean) > r.max_shift * cal.std:
        return "intensity changed"
    if r.min_agree and f.get("agree", 1.0) < r.min_agree:
        return f"lost track ({f['agree']:.2f})"
    return None


class Evidence:
    """The evidence count of one direction (module docstring). ``add(z, why, empty)`` returns
    ``(kept, stop)``: the slices now kept for good (in walk order; held ones come out once the
    count reaches a new maximum) and, when the direction ends, the Stop (its slice is the first
    one not kept); ``finish()`` drops what is still held at the end of the walk."""

    def __init__(self, rules: StopRules):
        self.rules = rules
        self.count = self.best = 0.0
        self.held: list[tuple[int, str | None]] = []

    def add(self, z: int, why: str | None, empty: bool = False) -> tuple[list[int], Stop | None]:
        if empty:
            self.held.append((z, why or "vanished"))
            return [], self.finish()
        self.count += -self.rules.trip_weight if why else 1.0
        self.held.append((z, why))
        if self.count >= self.best - 1e-9:  # a tie keeps the longer object
            self.best, kept, self.held = self.count, [h for h, _ in self.held], []
            return kept, None
        if self.best - self.count >= self.rules.patience - 1e-9:
            return [], self.finish()
        return [], None

    @property
    def dropped(self) -> list[int]:
        """Slices held now (decoded, not kept yet)."""
        return [h for h, _ in self.held]

    def finish(self) -> Stop | None:
        """The Stop at the first held slice (None when nothing is held)."""
        if not self.held:
            return None
        first = self.held[0]
        reason = first[1] or next((why for _, why in self.held if why), "lost track")
        return Stop(reason, first[0])
