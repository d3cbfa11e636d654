"""Segmentation metrics as the MedSAM paper reports them: Dice, IoU and NSD (surface Dice).

All functions take two masks of the same shape, 2D (Y, X) or 3D (Z, Y, X); any non-zero value
is foreground. Conventions for empty masks (no foreground at all):

* both empty -> 1.0 (the prediction agrees perfectly with an empty reference);
* exactly one empty -> 0.0.

NSD (normalized surface distance, also called surface Dice) is the fraction of both boundaries
that lies within ``tolerance`` of the other boundary:

    NSD = (|B_pred within tol of B_ref| + |B_ref within tol of B_pred|) / (|B_pred| + |B_ref|)

where a boundary B is the set of foreground pixels removed by one binary erosion (face
connectivity), so a mask that touches the array edge has its boundary there too. Distances are
Euclidean, in pixels, or in physical units when ``spacing`` ((y, x) or (z, y, x)) is given; a
pixel at distance exactly ``tolerance`` counts as within. Boundary pixels are counted, not
weighted by surface area, so values can differ slightly from DeepMind's ``surface-distance``
package (which weights surfels) on curved shapes; both agree on the conventions above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ImageError

__all__ = ["dice", "iou", "nsd", "boundary"]


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise ImageError(f"masks must have the same shape to be compared; got {p.shape} and {r.shape}")
    if p.ndim not in (2, 3):
        raise ImageError(f"masks must be 2D (Y, X) or 3D (Z, Y, X); got shape {p.shape}")
    return p != 0, r != 0


def dice(pred, ref) -> float:
    """Dice = 2|P & R| / (|P| + |R|) for two (Y, X) or (Z, Y, X) masks; both empty -> 1.0."""
    p, r = _pair(pred, ref)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def iou(pred, ref) -> float:
    """IoU (Jaccard) = |P & R| / |P | R| for two (Y, X) or (Z, Y, X) masks; both empty -> 1.0."""
    p, r = _pair(pred, ref)
    union = int(np.logical_or(p, r).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, r).sum()) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary of a boolean mask: the mask minus its erosion (face connectivity, outside = 0)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(sp) != ndim:
        raise ImageError(
            f"spacing {sp} has {len(sp)} values but the masks are {ndim}D: give one value per axis, "
            "(y, x) for 2D or (z, y, x) for 3D"
        )
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ImageError(f"spacing {sp} must be positive and finite")
    return sp


def nsd(pred, ref, tolerance: float = 2.0, spacing: Sequence[float] | None = None) -> float:
    """Normalized surface distance (surface Dice) of two (Y, X) or (Z, Y, X) masks, in [0, 1].

    tolerance: in pixels, or in the units of ``spacing`` when it is given ((y, x) or (z, y, x),
    e.g. micrometres or millimetres per pixel). Both empty -> 1.0; one empty -> 0.0.
    """
    from scipy import ndimage

    p, r = _pair(pred, ref)
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ImageError(f"tolerance must be a finite number >= 0, got {tolerance}")
    sp = _check_spacing(spacing, p.ndim)
    if not p.any() and not r.any():
        return 1.0
    if not p.any() or not r.any():
        return 0.0
    bp, br = boundary(p), boundary(r)
    # Distance from every pixel to the nearest boundary pixel of the other mask.
    dist_to_r = ndimage.distance_transform_edt(~br, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~bp, sampling=sp)
    # A tiny slack keeps a distance of exactly `tolerance` (e.g. sqrt(2) vs 1.41421356) inside.
    tol = tolerance + 1e-9 * max(1.0, tolerance)
    close = int((dist_to_r[bp] <= tol).sum()) + int((dist_to_p[br] <= tol).sum())
    return close / (int(bp.sum()) + int(br.sum()))
