"""An extent prior for a 3D walk: the structure's ends along the walk axis, read on orthogonal planes.

A box walk sees the structure one slice at a time, and on MRI atlas structures the ends are mostly
not visible in any one slice (docs/3d.md). On a plane *orthogonal* to the slices (through the start
slice's mask), the structure's whole profile along the walk axis is one image. ``estimate_extent``
encodes two such planes (one along each in-plane axis, through the deepest point of the start mask),
prompts the model there with a box whose in-plane side comes from the start slice and whose
walk-axis side is a guess from the start cross-section's physical size, re-prompts with the box of
the mask it got (``iterations``), and reads the first and last slice the mask covers.

Planes whose slice spacing differs from the in-plane pixel size are resampled to square pixels
before encoding (the model was trained on square pixels), and the rows mapped back to slices.

Cost: ``len(planes)`` encoder calls (2 by default) and a few decoder calls per structure; the
planes are ordinary images for the predictor's EmbeddingCache (keyed by content), so a second
object through the same plane costs no encoder work.

The estimate is a *prior*, not a stop: ``Extent.lo``/``hi`` say where the two planes put the ends;
how a walk uses it (and whether it should) is measured in docs/3d.md ("Stop research: extent from
orthogonal planes").
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from .cancel import Cancel, check_cancel
from .errors import PromptError
from .preprocess import Intensity
from .prompts import fit_box

__all__ = ["PLANES", "Extent", "ExtentGuard", "PlaneEstimate", "deepest_point", "estimate_extent", "orthogonal_planes",
           "read_extent"]

PLANES = 2  # orthogonal planes read per structure (one along each in-plane axis): 2 encodes


@dataclass(frozen=True)
class PlaneEstimate:
    """One orthogonal plane's reading: ``axis`` the in-plane axis it runs along ("x": the plane is
    (slices, X) at row ``at``; "y": (slices, Y) at column ``at``), the first and last slice its mask
    covers (``lo``, ``hi``; None when the mask was empty), the predicted IoU, and every box tried
    ((4,) XYXY in the plane's own, possibly resampled, pixels; rows are slices x ``zoom``)."""

    axis: str
    at: int
    lo: int | None
    hi: int | None
    score: float
    zoom: float
    boxes: tuple = field(default_factory=tuple, repr=False)

    def at_box_edge(self, step: int) -> bool:
        """True when the end in direction ``step`` lies within a slice of the last box's edge: the
        model's mask may have stopped because the box did (a structure deeper than the box), so
        the end is not one the plane saw."""
        end = self.hi if step > 0 else self.lo
        if end is None or not self.boxes:
            return True
        box = self.boxes[-1]
        edge = np.ceil((box[3] + 0.5) / self.zoom) - 1 if step > 0 else np.floor((box[1] + 0.5) / self.zoom)
        return abs(end - edge) <= 1


@dataclass(frozen=True)
class Extent:
    """The prior: ``lo``..``hi`` (inclusive slice indices along the walk axis) combined over the
    planes that found the structure (``combine``); None when none did."""

    lo: int | None
    hi: int | None
    planes: tuple[PlaneEstimate, ...]

    def depth(self, z: int, step: int) -> int | None:
        """Slices from the start slice ``z`` to the estimated end in direction ``step`` (+1 up,
        -1 down); None without an estimate."""
        end = self.hi if step > 0 else self.lo
        return None if end is None else max((end - z) * step, 0)

    def cap(self, z: int, step: int, past: float = 0.5, least: int = 3, agree: float = 0.1) -> int | None:
        """Slices from ``z`` in direction ``step`` past which a walk ends ("past the estimated end"),
        or None. Only where both planes put this end within ``agree`` x the estimated depth (at
        least 1 slice) of each other, each more than a slice inside its last box (an end the plane
        saw, not where its box stopped): two independent readings that agree. The walk may go
        ``max(past x this side's depth, least)`` slices past the end they agree on: it stops
        overruns (an out-of-focus blob beyond a nucleus) without cutting a structure the planes see
        a little short (docs/3d.md, "Past the estimated end")."""
        good = [p for p in self.planes if p.lo is not None]
        depth = self.depth(z, step)
        if len(good) < 2 or depth is None:
            return None
        ends = [p.hi if step > 0 else p.lo for p in good]
        if max(ends) - min(ends) > max(1.0, agree * (self.hi - self.lo)):
            return None
        if any(p.at_box_edge(step) for p in good):  # the mask ended where its box did: not an end seen
            return None
        return depth + int(np.ceil(max(past * depth, least)))


def deepest_point(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the mask pixel farthest from its border: the line through the thick part."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def orthogonal_planes(slices: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    """The two planes through the deepest point of ``mask`` ((Y, X) bool on one slice of ``slices``,
    (Z, Y, X) walk axis first). Returns [(axis, at, plane, zoom, line_spacing)]: ``plane`` (Z', N)
    with Z' = Z x ``zoom`` rows (resampled so the rows' spacing is the in-plane pixel size when the
    slice spacing differs by more than 10 %), N = X for axis "x" (row ``at`` of every slice) or Y
    for axis "y" (column ``at``)."""
    from scipy import ndimage

    if not mask.any():
        raise PromptError("the start mask is empty: there is no structure to read an extent for")
    yc, xc = deepest_point(mask)
    sz, sy, sx = (float(s) for s in spacing)
    out = []
    for axis, at, plane, s_in in (("x", yc, slices[:, yc, :], sx), ("y", xc, slices[:, :, xc], sy)):
        zoom = sz / s_in
        plane = np.asarray(plane)
        if abs(zoom - 1.0) > 0.1:
            plane = ndimage.zoom(plane.astype(np.float32), (zoom, 1.0), order=1)
            zoom = plane.shape[0] / slices.shape[0]
        else:
            zoom = 1.0
        out.append((axis, at, plane, zoom, s_in))
    return out


def _line_run(line: np.ndarray, at: int) -> tuple[int, int]:
    """First and last index of the run of ``line`` (1D bool) that holds ``at``."""
    lo = hi = at
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < len(line) - 1 and line[hi + 1]:
        hi += 1
    return lo, hi


def _component_rows(mask: np.ndarray, row: float, col: float) -> tuple[int, int] | None:
    """Row extent of the connected component of ``mask`` nearest to (row, col)."""
    from scipy import ndimage

    if not mask.any():
        return None
    lab, n = ndimage.label(mask)
    r, c = int(round(row)), int(round(col))
    pick = lab[min(max(r, 0), mask.shape[0] - 1), min(max(c, 0), mask.shape[1] - 1)]
    if pick == 0:  # the point is outside every component: the nearest one
        dist = ndimage.distance_transform_edt(lab == 0, return_indices=True)[1]
        pick = lab[dist[0][r, c], dist[1][r, c]]
    rows = np.flatnonzero((lab == pick).any(axis=1))
    return int(rows[0]), int(rows[-1])


def estimate_extent(predictor, slices: np.ndarray, mask: np.ndarray, box, z: int, spacing=(1.0, 1.0, 1.0),
                    intensity: Intensity | None = None, **options) -> Extent:
    """``read_extent`` run to the end: the Extent (arguments and keyword ``options`` as there)."""
    steps = read_extent(predictor, slices, mask, box, z, spacing, intensity, **options)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def read_extent(
    predictor,
    slices: np.ndarray,
    mask: np.ndarray,
    box,
    z: int,
    spacing=(1.0, 1.0, 1.0),
    intensity: Intensity | None = None,
    *,
    reach: float = 1.0,
    iterations: int = 1,
    side: str = "box",
    combine: str = "mean",
    cancel: Cancel = None,
) -> Generator[PlaneEstimate, None, Extent]:
    """Estimate the structure's first and last slice along the walk axis from orthogonal planes.

    slices: (Z, Y, X) volume, walk axis first; mask: (Y, X) bool start mask on slice ``z``;
    box: (4,) XYXY the user's box on slice ``z``; spacing: (z, y, x) physical spacing in that
    order; intensity: the volume's window (``volume_intensity``) so the planes are normalised
    like the slices.
    reach: the first box's walk-axis half side, in start cross-section radii (the radius of a disc
    of the mask's physical area): a structure about as deep as it is wide fits in ``reach`` 1.
    iterations: re-prompts with the box of the mask found (walk-axis side only, grown by the start
    slice's slack between ``box`` and the mask) after the first prompt.
    side: the box's in-plane side: "box" (the user's box) or "line" (the start mask's run along the
    plane's line, grown by the same slack).
    combine: "mean", "min" (the shorter estimate per end) or "max" over the planes that found it.
    cancel: checked before each plane's encode (``CancelledError``; nothing is changed).

    A generator (for progress bars: each plane costs an encode): yields each plane's
    PlaneEstimate as it is read and returns the Extent. ``estimate_extent`` runs it to the end.
    """
    if side not in ("box", "line") or combine not in ("mean", "min", "max"):
        raise PromptError(
            f"side must be 'box' or 'line' and combine 'mean', 'min' or 'max'; got {side!r}, {combine!r}"
        )
    if iterations < 0 or reach <= 0:
        raise PromptError(f"reach must be > 0 and iterations >= 0, got {reach!r}, {iterations!r}")
    mask = np.asarray(mask, bool)
    box = np.asarray(box, float)
    n = slices.shape[0]
    sz, sy, sx = (float(s) for s in spacing)
    radius = np.sqrt(mask.sum() / np.pi * sy * sx)  # physical
    rows_idx = np.flatnonzero(mask.any(axis=1))
    cols_idx = np.flatnonzero(mask.any(axis=0))
    slack = {
        "x": max(((cols_idx[0] - box[0]) + (box[2] - cols_idx[-1])) / 2, 1.0) if mask.any() else 1.0,
        "y": max(((rows_idx[0] - box[1]) + (box[3] - rows_idx[-1])) / 2, 1.0) if mask.any() else 1.0,
    }
    found = []
    for axis, at, plane, zoom, s_in in orthogonal_planes(slices, mask, spacing):
        line = mask[at, :] if axis == "x" else mask[:, at]
        centre = deepest_point(mask)[1 if axis == "x" else 0]
        if side == "box":
            a0, a1 = (box[0], box[2]) if axis == "x" else (box[1], box[3])
        else:
            lo_r, hi_r = _line_run(line, centre)
            a0, a1 = lo_r - slack[axis], hi_r + slack[axis]
        a0, a1 = max(a0, 0.0), min(a1, plane.shape[1] - 1.0)
        zc = (z + 0.5) * zoom - 0.5  # the start slice's row in the plane
        half = reach * radius / s_in  # rows of the (square-pixel) plane
        pad = (slack["x"] + slack["y"]) / 2  # the start box's looseness; plane rows are in-plane pixels
        lo_row, hi_row = zc - half, zc + half
        check_cancel(cancel)
        predictor.set_image(plane, intensity=intensity)
        boxes, got, score = [], None, 0.0
        for _ in range(iterations + 1):
            # fitted: a tiny start mask, a structure at the volume's first or last slice, or a plane
            # squeezed by resampling can leave a box under a pixel, which the predictor refuses
            b = fit_box([a0, max(lo_row, 0.0), a1, min(hi_row, plane.shape[0] - 1.0)], plane.shape)
            boxes.append(b)
            pred = predictor.predict(boxes=b[None])
            m, score = pred[0][0], float(pred[1][0])
            rows = _component_rows(m, zc, centre)
            if rows is None:
                break
            got = rows
            lo_row, hi_row = rows[0] - pad, rows[1] + pad
        if got is None:
            found.append(PlaneEstimate(axis, at, None, None, score, zoom, tuple(boxes)))
            yield found[-1]
            continue
        lo = int(np.clip(np.floor((got[0] + 0.5) / zoom), 0, n - 1))
        hi = int(np.clip(np.ceil((got[1] + 0.5) / zoom) - 1, 0, n - 1))
        found.append(PlaneEstimate(axis, at, min(lo, z), max(hi, z), score, zoom, tuple(boxes)))
        yield found[-1]
    good = [p for p in found if p.lo is not None]
    if not good:
        return Extent(None, None, tuple(found))
    pick = {"mean": lambda v: int(round(float(np.mean(v)))), "min": None, "max": None}[combine]
    los, his = [p.lo for p in good], [p.hi for p in good]
    if combine == "mean":
        lo, hi = pick(los), pick(his)
    elif combine == "min":  # the shorter estimate at each end
        lo, hi = max(los), min(his)
    else:
        lo, hi = min(los), max(his)
    return Extent(min(lo, z), max(hi, z), tuple(found))


class ExtentGuard:
    """How one direction of a walk uses the prior (docs/3d.md, "Stop research"): the slices within
    ``guard`` x the estimated depth pass whatever they show (no stop well inside the structure the
    planes see), and the cross-check rule ("lost track") becomes relative: a slice trips when its
    agreement is under ``agree`` x the median agreement of the first guarded slices walked so far
    (at most ``window``; at least the first slice). ``depth``: slices from the start to the
    estimated end in this direction (``Extent.depth``), None without an estimate (no guard, the
    calibration window is ``window``).

    ``verdict(k, f, why)``: ``k`` the slice's distance from the start (1, 2, ...), ``f`` its features
    (``f["agree"]``: IoU with the cross-check walk's mask), ``why`` what the other rules say
    (``stop_reason`` with ``min_agree=0``). Returns the reason the slice trips, or None."""

    def __init__(self, depth: float | None, guard: float = 0.5, agree: float = 0.6, window: int = 5):
        self.inside = 0 if depth is None else int(np.floor(depth * guard))
        self.window = window if depth is None else max(1, min(window, self.inside))
        self.agree = agree
        self.seen: list[float] = []

    def verdict(self, k: int, f: dict, why: str | None) -> str | None:
        a = float(f.get("agree", 1.0))
        if len(self.seen) < self.window:
            self.seen.append(a)
        if why is None and a < self.agree * float(np.median(self.seen)):
            why = f"lost track ({a:.2f})"
        return None if k <= self.inside and f.get("area", 1) else why
