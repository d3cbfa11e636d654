"""3D: one box on one slice -> the whole object, slice by slice (the public API).

``walk_volume`` returns a ``WalkResult`` (masks by slice, scores, boxes, keys, and the ``Stop`` of
each direction: ``vanished``, ``IoU fell to 0.31``, ``area collapsed``, ``contrast faded``,
``intensity changed``, ``reached key slice``, ``end of volume``, with its slice). ``propagate`` is
the same walk as a generator of ``SliceResult`` steps (its return value is the WalkResult), for
progress bars and workers; ``segment_volume`` returns the (Z, Y, X) mask.

The walk itself (box and mask prompt from the neighbour slice, margins, stop rules, key boxes) is
``walk.BoxWalk``; ``method=`` takes any other ``walk.Propagator`` (e.g. a memory-based model).

Corrections: ``previous=`` an earlier WalkResult of the same object, with one more (or a moved)
key box, re-walks only the side(s) of the start slice where the keys changed and keeps the rest.

Key boxes ``{z: box}`` guide and bound the object (see walk.py, walk_keys.py); with
``bound_by_keys`` (default) the walk does not go past a key slice beyond the start in its direction.
Past one (``bound_by_keys=False``) the key options shape the walk: ``key_shape``, ``key_past``,
``key_move``, ``key_reach`` (the end a key box narrower than the start box implies), and with
``key_extend=False`` (default) a correction whose keys lie inside the span the previous walk kept
on a side re-walks that span only and keeps the previous stop there.

Prompt: ``anchor`` x the last key box passed + (1 - anchor) x the neighbour mask's box; a
cross-check walk (mask boxes only) ends a direction where the two disagree (``min_agree``). The
stop rules' verdicts feed an evidence count cut at its maximum (``patience``, ``trip_weight``:
walk_stop.py); ``output`` picks which decoder output a slice keeps ("anchor": the one most like
the anchor slice's mask; "single"; "consistent").
Margin: ``margin`` px plus the start slice's box slack plus ``growth`` slice spacings in physical
units, converted to each in-plane axis's pixels; ``spacing`` (z, y, x) refers to the volume's own
axes, whatever the slicing axis. Boxes are XYXY pixels in the slice plane: for ``axis=0`` x is the
volume's last axis (X) and y its middle axis (Y); in general y and x are the two remaining axes in
their original order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence

import numpy as np

from .errors import PromptError
from .preprocess import Intensity, check_boxes
from .volume import Cancel, as_slices, check_cancel, is_blank, volume_intensity
from .walk import BoxWalk, Propagator, SliceResult, StopRules, WalkResult

__all__ = ["SliceResult", "WalkResult", "propagate", "segment_volume", "walk_volume"]

_SIDES = ("masks", "scores", "boxes", "logits", "features")


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


def _changed_sides(keys: dict, previous: WalkResult, z: int) -> tuple[str, ...]:
    """Which directions a correction must re-walk: those holding a new, moved or removed key."""
    old = previous.keys
    if previous.start != z or not np.allclose(old.get(z, -1), keys[z]):
        return ("up", "down")
    changed = {k for k in set(keys) | set(old)
               if k not in keys or k not in old or not np.allclose(keys[k], old[k])}
    return tuple(d for d, hit in (("up", any(k > z for k in changed)), ("down", any(k < z for k in changed))) if hit)


def _seed(previous: WalkResult | None, shape, axis: int, z: int, keys: dict) -> tuple[WalkResult, tuple]:
    """A fresh WalkResult, or one holding what a correction keeps of ``previous``."""
    result = WalkResult(tuple(shape), axis, z, keys)
    if previous is None:
        return result, ("up", "down")
    if tuple(previous.shape) != tuple(shape) or previous.axis != axis:
        raise PromptError(
            f"previous walk was made on a {previous.shape} volume sliced along axis {previous.axis}, not "
            f"{tuple(shape)} along axis {axis}: pass the WalkResult of this volume (or none)"
        )
    sides = _changed_sides(keys, previous, z)
    if len(sides) == 2:
        return result, sides
    keep = [zz for zz in previous.masks if zz == z or (zz > z and "up" not in sides) or (zz < z and "down" not in sides)]
    for name in _SIDES:
        src = getattr(previous, name)
        getattr(result, name).update({zz: src[zz] for zz in keep if zz in src})
    result.stops.update({d: s for d, s in previous.stops.items() if d not in sides})
    return result, sides


def propagate(predictor, volume, box, z: int, axis: int = 0, *,
              key_boxes: Mapping[int, Sequence[float]] | None = None, spacing: Sequence[float] | None = None,
              margin: float = 0.0, growth: float = 0.0, min_iou: float = 0.3, min_area_ratio: float = 0.2,
              min_contrast: float = 0.3, iou_drop: float = 0.6, max_shift: float | None = None,
              max_growth: float | None = 2.0, min_agree: float = 0.35, patience: float = 3,
              contrast_noise: float = 2.0, trip_weight: float = 1.0, anchor: float = 1.0,
              box_rule: str = "mask", output: str = "anchor",
              mask_prompt: bool = False, adaptive_margin: bool = True, bound_by_keys: bool = True,
              key_shape: str = "ellipse", key_past: str = "hold", key_move: bool = True, key_reach: float | None = 1.2,
              key_extend: bool = False, extent_prior: bool = True, extent_cap: float | None = 0.5,
              vote: float | None = 2.0, follow: float | None = 3.0, follow_frames: int = 1,
              min_slack: float | None = None,
              intensity: Intensity | None = None,
              previous: WalkResult | None = None,
              method: Propagator | None = None, cancel: Cancel = None) -> Generator[SliceResult, None, WalkResult]:
    """Walk an object through ``volume`` (Z, Y, X) from ``box`` ((4,) XYXY pixels) on slice ``z``.

    Yields SliceResult ``(z, mask (Y, X) bool, score)`` for the start slice, then each slice up,
    then each slice down (a correction with ``previous`` yields only the slices it re-walks).
    ``z`` and the keys of ``key_boxes`` index the slicing ``axis``; masks are in that slice's
    plane. ``intensity`` is made volume-wide (volume_intensity). ``cancel`` (callable or
    threading.Event) is checked before every slice and raises CancelledError. The generator's
    return value (StopIteration.value) is the WalkResult. ``method`` replaces the default
    ``BoxWalk`` built from the margin, prompt and rule arguments. ``extent_prior`` (default on)
    reads the structure's extent on two planes orthogonal to the slices first (2 more encodes,
    walk_extent.py) and guards the stop with it; ``extent_cap`` (0.5; None: off) ends a direction
    that runs past an end both planes agree on by more than that x its depth (at least 3 slices;
    stop reason "past the estimated end"). ``vote`` (2 in-plane pixels; None: off): the WalkResult's
    ``volume()`` takes each slice off the key slices as the majority of the walked slices that lie
    within that distance (``walk.vote_reach``: 2 slices each side for isotropic voxels, none for
    slices much thicker than the pixels); the steps yielded and ``masks`` are as decoded. ``follow``
    (3 px per slice at isotropic spacing; None or 0: off) moves the anchored box with the image
    under it between neighbour slices (block matching, ``walk_follow``); each slice is matched against
    the last one where the box moved, up to ``follow_frames`` (default 1: always the neighbour)
    slices back; 3 lets motion of less than a pixel per slice add up (a better tracker, but not a
    better walk on our volumes: docs/3d.md). ``min_slack`` (pixels of the model's 256 grid; None, the
    default, or 0: off): a start box closer than that to the start slice's mask is pushed out to it
    on those sides, the start slice decoded again with it, and that box held (``WalkResult.boxes[z]``;
    the user's box stays ``keys[z]``): for a box drawn flush with the object (docs/3d.md). Each
    plane read is a step of its own (``stage="plane"``, the start slice's mask again), so progress
    bars move while the planes are encoded. Arguments are checked at the call (PromptError /
    ImageError), before any slice is segmented.
    """
    slices = as_slices(volume, axis)
    n = len(slices)
    if not all(0.0 <= v <= 1.0 for v in (min_iou, min_area_ratio, min_contrast, iou_drop, min_agree, anchor)):
        raise PromptError(
            f"min_iou, min_area_ratio, min_contrast, iou_drop, min_agree and anchor must lie in [0, 1], got "
            f"{min_iou}, {min_area_ratio}, {min_contrast}, {iou_drop}, {min_agree}, {anchor}"
        )
    if not isinstance(patience, (int, float, np.number)) or not patience >= 1 or not contrast_noise >= 0:
        raise PromptError(f"patience must be a number >= 1 and contrast_noise >= 0, got {patience!r}, {contrast_noise!r}")
    if not (margin >= 0 and growth >= 0) or any(v is not None and not v > 0 for v in (max_shift, max_growth)):
        raise PromptError(f"margin and growth must be numbers >= 0, max_shift and max_growth > 0 or None; got "
                          f"{margin}, {growth}, {max_shift}, {max_growth}")
    if box_rule not in ("mask", "track"):
        raise PromptError(f"box_rule must be 'mask' or 'track', got {box_rule!r}")
    if key_shape not in ("linear", "ellipse"):
        raise PromptError(f"key_shape must be 'linear' or 'ellipse', got {key_shape!r}")
    if key_past not in ("hold", "taper"):
        raise PromptError(f"key_past must be 'hold' or 'taper', got {key_past!r}")
    if output not in ("single", "anchor", "consistent"):
        raise PromptError(f"output must be 'single', 'anchor' or 'consistent', got {output!r}")
    if key_reach is not None and not (isinstance(key_reach, (int, float, np.number)) and key_reach >= 1):
        raise PromptError(f"key_reach must be a number >= 1 or None, got {key_reach!r}")
    if extent_cap is not None and not (isinstance(extent_cap, (int, float, np.number)) and extent_cap >= 0):
        raise PromptError(f"extent_cap must be a number >= 0 or None, got {extent_cap!r}")
    if vote is not None and (isinstance(vote, bool) or not (isinstance(vote, (int, float, np.number)) and vote >= 0)):
        raise PromptError(f"vote must be a number >= 0 (in-plane pixels) or None, got {vote!r}")
    if follow is not None and (isinstance(follow, bool) or not (isinstance(follow, (int, float, np.number))
                                                                 and follow >= 0)):
        raise PromptError(f"follow must be a number >= 0 (pixels per slice) or None, got {follow!r}")
    if isinstance(follow_frames, bool) or not isinstance(follow_frames, (int, np.integer)) \
            or follow_frames < 1:
        raise PromptError(f"follow_frames must be a whole number of slices >= 1, got {follow_frames!r}")
    if min_slack is not None and (isinstance(min_slack, bool) or not (
            isinstance(min_slack, (int, float, np.number)) and min_slack >= 0)):
        raise PromptError(f"min_slack must be a number >= 0 (pixels of the model's 256 grid) or None, got {min_slack!r}")
    if not trip_weight > 0:
        raise PromptError(f"trip_weight must be a number > 0, got {trip_weight!r}")
    if not isinstance(z, (int, np.integer)):
        raise PromptError(f"z must be a slice index (int), got {z!r}")
    keys = _check_keys(box, z, key_boxes, n, slices.shape[1:])
    z = int(z)
    if is_blank(slices[z]):
        raise PromptError(f"slice {z} is blank (every pixel = {np.min(slices[z]):g}): there is nothing to start "
                          "from; draw the box on a slice that shows the object")
    result, sides = _seed(previous, slices.shape, axis % 3, z, keys)
    if method is None:
        rules = StopRules(min_iou, iou_drop, min_area_ratio, min_contrast, max_shift, max_growth, min_agree,
                          float(patience), contrast_noise, float(trip_weight))
        method = BoxWalk(rules, margin, growth, adaptive_margin, mask_prompt, box_rule, anchor=anchor, output=output,
                         key_shape=key_shape, key_past=key_past, key_move=key_move, key_reach=key_reach,
                         extent_prior=extent_prior, extent_cap=extent_cap, vote=vote, follow=follow,
                         follow_frames=int(follow_frames), min_slack=min_slack)
    hi = max(keys) if bound_by_keys and max(keys) > z else n - 1
    lo = min(keys) if bound_by_keys and min(keys) < z else 0
    kept = {}
    if previous is not None and not key_extend:
        (lo, hi), kept = _previous_ends(previous, keys, z, sides, (lo, hi))
    gen = method.run(predictor, slices, result, sides, (lo, hi), volume_intensity(slices, intensity),
                     _spacing(spacing, axis), cancel)
    return _restore_stops(gen, kept) if kept else gen


def _previous_ends(previous: WalkResult, keys: dict, z: int, sides, bounds) -> tuple[tuple[int, int], dict]:
    """A correction whose keys on a side all lie inside the span the previous walk kept there re-walks
    that span and does not go past its end: the previous stop is kept (``key_extend=False``)."""
    lo, hi = bounds
    kept, done = {}, previous.slices
    for side in sides:
        far = [zz for zz in done if (zz - z) * (1 if side == "up" else -1) > 0]
        ks = [k for k in keys if (k - z) * (1 if side == "up" else -1) > 0]
        if not far or not ks or side not in previous.stops:
            continue
        end, outer = (max(far), max(ks)) if side == "up" else (min(far), min(ks))
        if abs(outer - z) < abs(end - z):
            kept[side] = (end, previous.stops[side])
            hi, lo = (min(hi, end), lo) if side == "up" else (hi, max(lo, end))
    return (lo, hi), kept


def _restore_stops(gen, kept: dict):
    """Run ``gen``; a side that ran to the previous walk's end gets the previous walk's stop back."""
    result = yield from gen
    for side, (end, stop) in kept.items():
        if result.stops.get(side) is not None and result.stops[side].slice == end and \
                result.stops[side].reason in ("end of volume", "reached key slice"):
            result.stops[side] = stop
    return result


def walk_volume(predictor, volume, box, z: int, axis: int = 0, *,
                on_progress: Callable[[int, int], None] | None = None, cancel: Cancel = None,
                **options) -> WalkResult:
    """Run ``propagate`` to the end and return its WalkResult (``.volume()`` is the 3D mask).

    ``on_progress(done, total_estimate)`` is called after each step (a decoded slice, or one of the
    extent prior's planes) and once at the end with ``(done, done)``; the estimate only shrinks.
    ``options`` go to ``propagate``.
    """
    gen = propagate(predictor, volume, box, z, axis, cancel=cancel, **options)
    done = 0
    while True:
        try:
            res = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        done += 1
        if on_progress is not None:
            on_progress(done, res.total)
    check_cancel(cancel)
    if on_progress is not None:
        on_progress(done, done)
    return result


def segment_volume(predictor, volume, box, z: int, axis: int = 0, *, labels: np.ndarray | None = None,
                   label_id: int = 1, on_progress: Callable[[int, int], None] | None = None,
                   cancel: Cancel = None, **options) -> np.ndarray:
    """Segment one object in ``volume`` from ``box`` ((4,) XYXY pixels) on slice ``z`` of ``axis``.

    Returns the (Z, Y, X) bool mask in the volume's own axis order (``walk_volume`` returns the
    WalkResult with the stop reasons). ``options`` go to ``propagate``. ``on_progress(done,
    total_estimate)`` is called after each slice. With ``labels`` (an integer array of the
    volume's shape), ``label_id`` is written where the mask is, only once the whole walk has
    finished: a cancel (CancelledError) or an error leaves ``labels`` untouched.
    """
    vol = np.asarray(volume)
    as_slices(vol, axis)  # volume errors first
    if labels is not None and (np.shape(labels) != vol.shape or np.asarray(labels).dtype.kind not in "iu"):
        raise PromptError(
            f"labels must be an integer array of the volume's shape {vol.shape}, got "
            f"{np.shape(labels)} {np.asarray(labels).dtype}"
        )
    out = walk_volume(predictor, vol, box, z, axis, on_progress=on_progress, cancel=cancel, **options).volume()
    if labels is not None:
        labels[out] = label_id
    return out
