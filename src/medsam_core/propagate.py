"""3D: one box on one slice -> the whole object, slice by slice.

The walk (MedSAM's 3D recipe, with a shared embedding cache instead of re-encoding every slice
for every object):

1. the start slice ``z`` is segmented with the user's box;
2. walking **up** (z+1, z+2, ...) and then **down** (z-1, z-2, ...), each slice's box prompt is
   the bounding box of the neighbour slice's mask, grown by a margin (below);
3. a direction stops, without keeping the offending slice, when the mask vanishes, its predicted
   IoU falls below ``min_iou``, its area drops below ``min_area_ratio`` times the previous
   slice's area, or its contrast (mean intensity inside the mask minus the lower quartile of a
   3-pixel band around it, robust to a touching neighbour) falls below ``min_contrast`` times the start slice's contrast: the object ended or
   faded (out-of-focus ends of a confocal nucleus) and the model is segmenting something else.
   The last rule is off when the start slice shows no measurable contrast (< 1% of the window).

Key boxes ``{z: box}`` on other slices guide and bound the object: on a key slice the prompt is
its key box; strictly between two key slices (the start box counts as one) the prompt is the
linear interpolation of the two key boxes and the stop rules are off (the user has said the
object is there). With ``bound_by_keys`` (default) the walk does not go past a key slice that
lies beyond the start slice in its direction; a direction with no key beyond the start is free.

Margin: ``margin`` pixels (fixed slack, like the box jitter the model was trained with) plus
``growth`` slice spacings in physical units, converted to each in-plane axis's pixels: a convex
object's cross-section grows by up to about one slice spacing per slice where its surface is at
45 degrees. So thick slices (CT at 5 mm, pixels 0.7 mm) get a wider margin than thin ones;
``spacing`` (z, y, x) refers to the volume's own axes, whatever the slicing axis.

Boxes are XYXY pixels in the slice plane: for ``axis=0`` x is the volume's last axis (X) and y
its middle axis (Y); in general y and x are the two remaining axes in their original order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import PromptError
from .preprocess import Intensity, check_boxes
from .prompts import box_from_mask
from .volume import Cancel, as_slices, check_cancel, is_blank, volume_intensity

__all__ = ["SliceResult", "propagate", "segment_volume"]


class SliceResult(tuple):
    """Unpacks as ``(z, mask, score)``: slice index along the slicing axis, (Y, X) bool mask,
    predicted IoU. Also carries ``box`` ((4,) XYXY prompt used) and ``total`` (current estimate
    of how many slices the walk will yield in all, for progress bars; it only shrinks)."""

    def __new__(cls, z: int, mask: np.ndarray, score: float, box: np.ndarray, total: int):
        obj = super().__new__(cls, (z, mask, score))
        obj.z, obj.mask, obj.score, obj.box, obj.total = z, mask, score, box, total
        return obj


def _spacing(spacing: Sequence[float] | None, axis: int) -> tuple[float, float, float]:
    """(slice, y, x) spacing in the moved order."""
    if spacing is None:
        return 1.0, 1.0, 1.0
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise PromptError(f"spacing must be three positive numbers (z, y, x), got {spacing!r}")
    order = [axis % 3] + [a for a in range(3) if a != axis % 3]
    return tuple(float(sp[a]) for a in order)


def _check_keys(box, z: int, key_boxes: Mapping[int, Sequence[float]] | None,
                n: int, size: tuple[int, int]) -> dict[int, np.ndarray]:
    keys = {}
    for kz, kbox in {**(key_boxes or {}), z: box}.items():
        if not isinstance(kz, (int, np.integer)) or not 0 <= kz < n:
            raise PromptError(f"slice index {kz!r} is outside the volume's {n} slices (0..{n - 1})")
        keys[int(kz)] = check_boxes(kbox, size)[0]
    return keys


def _interpolate(keys: dict[int, np.ndarray], z: int) -> np.ndarray | None:
    """The key box on slice z, or the linear blend of the two key boxes around it; None outside."""
    if z in keys:
        return keys[z]
    below = [k for k in keys if k < z]
    above = [k for k in keys if k > z]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    t = (z - lo) / (hi - lo)
    return (1 - t) * keys[lo] + t * keys[hi]


def _segment(predictor, image: np.ndarray, box: np.ndarray, intensity: Intensity):
    if is_blank(image):
        return np.zeros(image.shape, bool), 0.0
    predictor.set_image(image, intensity=intensity)
    masks, scores = predictor.predict(boxes=box[None])
    return masks[0], float(scores[0])


@dataclass(frozen=True)
class _Rules:
    margins: tuple[float, float]  # (mx, my) pixels
    min_iou: float
    min_area_ratio: float
    min_contrast: float
    intensity: Intensity
    cancel: Cancel


def propagate(predictor, volume, box, z: int, axis: int = 0, *,
              key_boxes: Mapping[int, Sequence[float]] | None = None, spacing: Sequence[float] | None = None,
              margin: float = 2.0, growth: float = 1.0, min_iou: float = 0.5, min_area_ratio: float = 0.2,
              min_contrast: float = 0.15, bound_by_keys: bool = True, intensity: Intensity | None = None,
              cancel: Cancel = None) -> Generator[SliceResult, None, dict[str, str]]:
    """Walk an object through ``volume`` (Z, Y, X) from ``box`` ((4,) XYXY pixels) on slice ``z``.

    Yields SliceResult ``(z, mask (Y, X) bool, score)`` for the start slice, then each slice up,
    then each slice down (see module docstring for prompts, margins, key boxes and stop rules).
    ``z`` and the keys of ``key_boxes`` index the slicing ``axis``; masks are in that slice's
    plane. ``intensity`` is made volume-wide (volume_intensity). ``cancel`` (callable or
    threading.Event) is checked before every slice and raises CancelledError. The generator's
    return value (StopIteration.value) says why each direction stopped: {"up": ..., "down": ...}.
    Arguments are checked at the call (PromptError / ImageError), before any slice is segmented.
    """
    slices = as_slices(volume, axis)
    n = len(slices)
    if not all(0.0 <= v <= 1.0 for v in (min_iou, min_area_ratio, min_contrast)):
        raise PromptError(
            f"min_iou, min_area_ratio and min_contrast must lie in [0, 1], got {min_iou}, {min_area_ratio}, "
            f"{min_contrast}"
        )
    if not (margin >= 0 and growth >= 0):
        raise PromptError(f"margin and growth must be numbers >= 0, got {margin}, {growth}")
    if not isinstance(z, (int, np.integer)):
        raise PromptError(f"z must be a slice index (int), got {z!r}")
    keys = _check_keys(box, z, key_boxes, n, slices.shape[1:])
    sz, sy, sx = _spacing(spacing, axis)
    rules = _Rules((margin + growth * sz / sx, margin + growth * sz / sy), min_iou, min_area_ratio,
                   min_contrast, volume_intensity(slices, intensity), cancel)
    z = int(z)
    hi = max(keys) if bound_by_keys and max(keys) > z else n - 1
    lo = min(keys) if bound_by_keys and min(keys) < z else 0
    return _propagate(predictor, slices, keys, z, lo, hi, rules)


def _propagate(predictor, slices, keys, z, lo, hi, rules: _Rules):
    check_cancel(rules.cancel)
    mask, score = _segment(predictor, slices[z], keys[z], rules.intensity)
    total = hi - lo + 1
    yield SliceResult(z, mask, score, keys[z], total)
    c0 = _contrast(slices[z], mask)
    window = rules.intensity.value_range
    if window is not None and abs(c0) < 0.01 * (window[1] - window[0]):
        c0 = 0.0  # no measurable contrast at the start: the contrast rule cannot tell anything
    why = {}
    for name, step, end in (("up", 1, hi), ("down", -1, lo)):
        why[name], last = yield from _walk(predictor, slices, keys, z, step, end, mask, rules, total, c0)
        total -= abs(end - last)  # slices this direction did not reach
    return why


def _contrast(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """Mean intensity inside ``mask`` minus the lower quartile of a ``ring``-pixel band around it."""
    from scipy import ndimage

    if not mask.any():
        return 0.0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    sl = (slice(max(rows[0] - ring, 0), rows[-1] + ring + 1), slice(max(cols[0] - ring, 0), cols[-1] + ring + 1))
    m, img = mask[sl], image[sl].astype(np.float64)
    band = ndimage.binary_dilation(m, iterations=ring) & ~m
    # The band's lower quartile, not its mean: a touching neighbour covers part of the band.
    return float(img[m].mean() - np.percentile(img[band], 25)) if band.any() else 0.0


def _stop_reason(image, mask, score: float, prev_area: int, c0: float, rules: _Rules) -> str | None:
    area = int(mask.sum())
    if area == 0:
        return "mask vanished"
    if score < rules.min_iou:
        return f"predicted IoU {score:.2f} < min_iou {rules.min_iou}"
    if area < rules.min_area_ratio * prev_area:
        return f"area collapsed to {area} px from {prev_area} px"
    if c0 and _contrast(image, mask) / c0 < rules.min_contrast:
        return f"contrast fell below {rules.min_contrast} of the start slice's"
    return None


def _walk(predictor, slices, keys, z, step, end, prev, rules: _Rules, total: int, c0: float):
    """One direction from slice z to ``end`` inclusive; returns (why it stopped, last slice kept)."""
    prev_area, last = int(prev.sum()), z
    for zz in range(z + step, end + step, step):
        check_cancel(rules.cancel)
        key = _interpolate(keys, zz)
        if key is None and prev_area == 0:
            return "mask vanished", last
        box = key if key is not None else box_from_mask(prev, rules.margins)
        mask, score = _segment(predictor, slices[zz], box, rules.intensity)
        if key is None and (why := _stop_reason(slices[zz], mask, score, prev_area, c0, rules)):
            return f"{why} on slice {zz}", last
        yield SliceResult(zz, mask, score, box, total)
        last = zz
        if mask.any():
            prev, prev_area = mask, int(mask.sum())
    return f"reached slice {end}", last


def segment_volume(predictor, volume, box, z: int, axis: int = 0, *, labels: np.ndarray | None = None,
                   label_id: int = 1, on_progress: Callable[[int, int], None] | None = None,
                   cancel: Cancel = None, **options) -> np.ndarray:
    """Segment one object in ``volume`` from ``box`` ((4,) XYXY pixels) on slice ``z`` of ``axis``.

    Returns the (Z, Y, X) bool mask in the volume's own axis order. ``options`` go to
    ``propagate`` (key_boxes, spacing, margin, growth, min_iou, min_area_ratio, bound_by_keys,
    intensity). ``on_progress(done, total_estimate)`` is called after each slice. With
    ``labels`` (an integer array of the volume's shape), ``label_id`` is written where the mask
    is, only once the whole walk has finished: a cancel (CancelledError) or an error leaves
    ``labels`` untouched and returns nothing.
    """
    vol = np.asarray(volume)
    slices = as_slices(vol, axis)
    if labels is not None and (np.shape(labels) != vol.shape or np.asarray(labels).dtype.kind not in "iu"):
        raise PromptError(
            f"labels must be an integer array of the volume's shape {vol.shape}, got "
            f"{np.shape(labels)} {np.asarray(labels).dtype}"
        )
    out = np.zeros(slices.shape, bool)
    done = 0
    for res in propagate(predictor, vol, box, z, axis, cancel=cancel, **options):
        out[res.z] = res.mask
        done += 1
        if on_progress is not None:
            on_progress(done, res.total)
    check_cancel(cancel)
    if on_progress is not None:
        on_progress(done, done)
    out = np.moveaxis(out, 0, axis)
    if labels is not None:
        labels[out] = label_id
    return out
