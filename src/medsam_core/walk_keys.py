"""What key boxes say about the object: the prompt between and past them, and where it should end.

Between two key slices (the start box is one) the prompt is their linear blend (``interpolate``).
Past the outermost key beyond the start (a correction drawn towards an end), ``past_key`` gives the
prompt and whether the slice lies past the object's expected tip:

* ``taper``: a key box smaller than the start box says the object narrows there. The start slice is
  taken as the widest cross-section (the user draws there) and the object as an ellipsoid along
  the slicing axis: box area A(d) = A0 (1 - (d / R)^2) at d slices from the start. The key's area
  Ak at dk gives R = dk / sqrt(1 - Ak / A0); past the key the box keeps the key's centre and
  shrinks as the ellipse does (each side by sqrt(A(d) / Ak)), so past the tip the prompt no longer
  covers the tissue beyond the object, where a box held at the key's size still finds something.
  A key box as large as the start box says nothing about an end: the key box is held, as before.
* ``reach``: slices farther than ``reach`` x R from the start lie past the tip: the walk ends there
  ("tip from key boxes"); None: no such end (the stop rules alone end the walk).

docs/3d.md ("One correction") has the measurements on the three volumes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["interpolate", "past_key", "tip_distance"]

MIN_SIDE = 4.0  # px: the smallest box side a tapered prompt keeps
SHRINK = 0.9  # an outer key box narrows towards a tip when its area is under this x the inner one's


def _blend(inner: np.ndarray, outer: np.ndarray, t: float, shape: str, move: bool = False) -> np.ndarray:
    """The box at fraction ``t`` from the ``inner`` key (nearer the start) to the ``outer`` one (t > 1:
    past it). Centre: linear; past the outer key held, or with ``move`` carried on along the line (at
    most one segment further). Sides: the linear blend of the two keys' sides (held past the outer
    key); with ``shape="ellipse"`` and an outer box of less area than the inner one (``SHRINK``),
    scaled so that the box's area follows an ellipse centred on the inner key,
    A(t) = Ai - (Ai - Ao) t^2: a convex object keeps most of its cross-section until near its tip,
    where a linear blend is too small; past the outer key the box keeps shrinking to the tip
    (``tip_distance``). Area rather than each side: a cross-section that changes shape as the object
    bends (one side shrinks, the other grows) is not a tip."""
    ci, co = (inner[:2] + inner[2:]) / 2, (outer[:2] + outer[2:]) / 2
    si, so = inner[2:] - inner[:2], outer[2:] - outer[:2]
    centre = ci + min(t, 2.0 if move else 1.0) * (co - ci)
    side = si + min(t, 1.0) * (so - si)
    ai, ao = float(np.prod(np.maximum(si, 1.0))), float(np.prod(np.maximum(so, 1.0)))
    if shape == "ellipse" and ao < SHRINK * ai:
        area = max(ai - (ai - ao) * t**2, 0.0)
        side = side * np.sqrt(area / float(np.prod(np.maximum(side, 1.0))))
        side = np.maximum(side, np.minimum(MIN_SIDE, so))
    return np.concatenate([centre - side / 2, centre + side / 2])


def interpolate(keys: dict[int, np.ndarray], z: int, start: int | None = None,
                shape: str = "linear") -> np.ndarray | None:
    """The key box on slice z, or the blend of the two key boxes around it (``_blend``, from the one
    nearer ``start``); None outside the keys."""
    if z in keys:
        return keys[z]
    below = [k for k in keys if k < z]
    above = [k for k in keys if k > z]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    if shape == "linear" or start is None:
        t = (z - lo) / (hi - lo)
        return (1 - t) * keys[lo] + t * keys[hi]
    inner, outer = (lo, hi) if abs(lo - start) <= abs(hi - start) else (hi, lo)
    return _blend(np.asarray(keys[inner], float), np.asarray(keys[outer], float),
                  abs(z - inner) / abs(outer - inner), shape)


def tip_distance(inner: np.ndarray, outer: np.ndarray) -> float | None:
    """Where the ellipse through an inner key box (the widest cross-section) and an outer one ends, in
    segments (inner to outer key) from the inner key: the area A(t) = Ai - (Ai - Ao) t^2 reaches 0;
    None when the outer box's area is not under ``SHRINK`` x the inner one's."""
    ai = float(np.prod(np.maximum(inner[2:] - inner[:2], 1.0)))
    ao = float(np.prod(np.maximum(outer[2:] - outer[:2], 1.0)))
    if ao >= SHRINK * ai:
        return None
    return float(np.sqrt(ai / (ai - ao)))


def past_key(keys: dict[int, np.ndarray], start: int, z: int, past: str = "taper", move: bool = False,
             reach: float | None = None) -> tuple[np.ndarray, bool]:
    """(prompt box, past the tip) for slice ``z`` beyond the outermost key on its side of the start
    (the caller makes sure there is one). The prompt goes on along the profile of the last two keys
    (``_blend`` with t > 1: with ``past="taper"`` a key box smaller than the one before it keeps
    shrinking to the tip; with "hold" it is held); past ``reach`` x the tip distance (``tip_distance``)
    the slice lies past the object's expected end."""
    step = 1 if z > start else -1
    side = sorted((k for k in keys if (k - start) * step >= 0 and (k - z) * step < 0), key=lambda k: abs(k - start))
    outer, inner = side[-1], side[-2]
    bo, bi = np.asarray(keys[outer], float), np.asarray(keys[inner], float)
    seg = abs(outer - inner)
    t = abs(z - inner) / seg
    tip = tip_distance(bi, bo) if reach is not None else None
    beyond = tip is not None and t > reach * tip
    if past == "hold" and not move:
        return bo, beyond
    return _blend(bi, bo, t, "ellipse" if past == "taper" else "linear", move), beyond
