"""The 3D walk's engine: a box (and the neighbour's mask) carried slice by slice, with stop rules.

``BoxWalk`` is the default ``Propagator``: what ``propagate``/``walk_volume`` run. A memory-based
propagation model (MedSAM2/SAM2 style) would be another class with the same ``run`` method; the
API and the widget only see ``SliceResult`` steps and the ``WalkResult`` at the end.

One step (slice ``z`` after slice ``p`` in the walk's direction):

* box: ``anchor`` (default 1) x the last key box passed (the user's start box) + (1 - anchor) x the
  bounding box of ``p``'s mask grown by a margin: ``margin`` px plus the slack the model left on
  the start slice between the user's box and its mask, plus ``growth`` slice spacings in physical
  units. The anchored box carries no mask error from slice to slice (on MRI atlas structures the
  model's mask and the structure differ, and a box from the last mask drifts; docs/3d.md);
* tight start box (``min_slack``, off by default): where the user's box lies closer than that
  many 256-grid pixels to the start slice's mask it is pushed out to it, the start slice decoded
  again, and that box held (``boxes[start]``; ``keys`` keep the user's box); measured in docs/3d.md;
* follow (``follow``, 3 px per slice): the anchored box moves with the image under it, read by
  block matching between ``p`` and ``z`` (``walk_follow``: the model's masks play no part), so a
  structure that slides across the slices is not left behind by a held box (one box: colin27
  0.908x -> 0.914x, macaque 0.954x -> 0.962x the per-slice oracle; docs/3d.md). With
  ``follow_frames`` > 1, ``z`` is matched against the last slice where the box moved, up to that
  many slices back, so motion under a pixel per slice adds up instead of being lost between
  neighbours (off by default: it tracks better but the walk's stops do worse with it; docs/3d.md);
* cross-check: a second walk, prompted only by its own neighbour mask's box (+ slack), is decoded
  on the same slice; the IoU of the two masks ("lost track") ends the walk where a fixed box would
  still find something past the structure's end;
* mask prompt: with ``mask_prompt`` the decoder also gets ``p``'s low-resolution logits as
  SAM's ``mask_input``. Off by default: LiteMedSAM was not trained with mask prompts and its masks
  leak into the surroundings with one (cells3d nuclei: 3D Dice 0.04-0.63 instead of 0.79-0.91;
  clipping the logits to +-1 or +-4 does not help; docs/3d.md);
* kept mask (``output``): "anchor" (default) keeps, of the one-mask output and the three
  multimask outputs for the slice's box, the one most like the mask on the anchor box's slice
  (the start slice or the last key slice passed); the rules still see the one-mask output.
  On the MRI atlas structures the one-mask output is often too tight (docs/3d.md);
* stop rules (``walk_stop.StopRules``), checked on every slice outside the key-box span, each
  calibrated from the start slice: "vanished", "IoU fell to 0.31", "area collapsed", "area grew",
  "contrast faded", "intensity changed", "lost track (0.21)" (cross-check IoU under ``min_agree``);
  their verdicts feed an evidence count (``walk_stop.Evidence``) that cuts the direction just
  after its maximum once it has fallen ``patience`` below it;
* vote (``vote``, 2 in-plane pixels): the walk's 3D mask (``WalkResult.volume``) takes each slice
  off the key slices as the majority of the walked slices within that distance (2 slices each side
  on isotropic voxels, none on slices much thicker than the pixels): each slice is decoded on its
  own, and a part dropped or a neighbour's tissue taken on one slice is outvoted by the slices
  around it (one box: colin27 0.884x -> 0.908x the per-slice oracle; docs/3d.md).

Key boxes (``walk_keys``): on a key slice the prompt is its key box; strictly between two keys (the
start box is one) it is their blend and the stop rules are off (the user says the object is there):
towards a key box of less area the box's area follows an ellipse (``key_shape="ellipse"``); past the
outermost key its box is held (``key_past``), its centre carried on along the last two keys' line
(``key_move``), and the walk ends at ``key_reach`` x the tip the narrowing keys imply ("tip from key
boxes"). The cross-check walk restarts from each key slice's mask.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from .preprocess import Intensity
from .prompts import box_from_mask, fit_box
from .volume import Cancel, check_cancel, is_blank
from .walk_extent import PLANES, Extent, ExtentGuard, read_extent
from .walk_follow import follow_radius, image_shift
from .walk_keys import interpolate, past_key
from .walk_stop import Calibration, Evidence, Stop, StopRules, contrast, slice_features, stop_reason

__all__ = ["BoxWalk", "Propagator", "SliceResult", "Stop", "StopRules", "WalkResult", "contrast"]


class SliceResult(tuple):
    """Unpacks as ``(z, mask, score)``: slice index along the slicing axis, (Y, X) bool mask,
    predicted IoU. Also carries ``box`` ((4,) XYXY prompt used) and ``total``: the expected number
    of slices the walk decodes in all, for progress bars (from the start slice's cross-section:
    a structure about as deep as it is wide; it grows while a direction goes on past that and
    shrinks when one stops early; always more than the slices done until the walk ends).
    ``stage``: "slice" for a decoded slice; "plane" for each of the extent prior's orthogonal planes
    (an encode: a progress step of its own, counted in ``total``; it repeats the start slice's
    mask, so code that paints each step's mask stays right)."""

    def __new__(cls, z: int, mask: np.ndarray, score: float, box: np.ndarray, total: int, stage: str = "slice"):
        obj = super().__new__(cls, (z, mask, score))
        obj.z, obj.mask, obj.score, obj.box, obj.total, obj.stage = z, mask, score, box, total, stage
        return obj


@dataclass
class WalkResult:
    """What a walk made and why it ended. Slices index the slicing axis; masks are (Y, X) bool in
    that slice's plane; ``volume()`` puts them back in the volume's own axis order."""

    shape: tuple[int, int, int]  # (slices, Y, X) in slicing order
    axis: int
    start: int
    keys: dict[int, np.ndarray]  # slice -> (4,) XYXY key box (the start box included)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    boxes: dict[int, np.ndarray] = field(default_factory=dict)
    stops: dict[str, Stop] = field(default_factory=dict)  # "up" (z increasing) and "down"
    rewalked: int = 0  # slices decoded by this run (a correction keeps the other side as it was)
    logits: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # (256, 256), with mask_prompt
    features: dict[int, dict] = field(default_factory=dict, repr=False)  # per slice: what the rules saw
    extent: Extent | None = None  # with BoxWalk(extent_prior=True): the orthogonal planes' estimate
    # volume(): each slice off the keys is the majority of the walked slices within ``vote`` slices of
    # it (set by the walk from the spacing; 0: the masks as decoded). ``masks`` stay as decoded.
    vote: int = 0

    @property
    def slices(self) -> list[int]:
        return sorted(z for z, m in self.masks.items() if m.any())

    def volume(self, voted: bool = True) -> np.ndarray:
        """(Z, Y, X) bool mask in the volume's own axis order: the slices' masks voted along the
        walk (``vote``; key slices keep the mask their box gave), or as decoded with ``voted=False``."""
        out = np.zeros(self.shape, bool)
        for z, m in self.masks.items():
            out[z] = m
        if voted and self.vote > 0:
            out = vote_slices(out, self.vote, keep=self.keys)
        return np.moveaxis(out, 0, self.axis)

    def describe(self) -> str:
        """One line for a status bar, e.g. ``"slices 41-80; up: vanished at slice 81; down: ..."``."""
        zs = self.slices
        span = f"slices {zs[0]}-{zs[-1]}" if zs else "no slice"
        return "; ".join([span] + [f"{d}: {s}" for d, s in self.stops.items()])


class Propagator(Protocol):
    """What ``propagate`` runs: yields a SliceResult per decoded slice, returns a WalkResult."""

    def run(self, predictor, slices: np.ndarray, result: WalkResult, directions: tuple[str, ...],
            bounds: tuple[int, int], intensity: Intensity, spacing: tuple[float, float, float],
            cancel: Cancel) -> Generator[SliceResult, None, WalkResult]: ...


def _start_box(result: WalkResult) -> np.ndarray:
    """The box the walk holds from the start slice: the one its mask was decoded with (the user's box,
    or that box widened with ``min_slack``); the user's box where the start slice is not decoded yet."""
    return result.boxes.get(result.start, result.keys[result.start])


def _expected_depth(mask: np.ndarray, spacing) -> int:
    """Slices a walk expects in one direction: the start cross-section's radius in slice spacings."""
    sz, sy, sx = spacing
    radius = np.sqrt(max(int(mask.sum()), 1) / np.pi * sy * sx)
    return max(int(np.ceil(radius / sz)), 2)


@dataclass(frozen=True)
class BoxWalk:
    """The default Propagator: box (+ mask prompt) from the neighbour slice, StopRules."""

    rules: StopRules = StopRules()
    margin: float = 0.0
    growth: float = 0.0
    adaptive_margin: bool = True
    mask_prompt: bool = False
    box_rule: str = "mask"
    max_slack: float = 8.0
    anchor: float = 1.0  # weight of the last key box passed in each prompt box (0: the mask's box only)
    # which decoder output a slice keeps: "single" (the one-mask output), "anchor" (of it and the three
    # multimask outputs, the one most like the mask on the anchor box's slice), "consistent" (... most
    # like the neighbour's kept mask)
    output: str = "anchor"
    # key boxes (walk_keys): ``key_shape`` between keys: "linear" blend, or "ellipse" (a side that
    # shrinks towards the outer key follows an ellipse); ``key_past``: past the last key its box is
    # held ("hold") or keeps shrinking along that ellipse to the tip ("taper");
    # ``key_move`` carries the centre on past the last key; the walk ends past ``key_reach`` x the tip
    # distance (None: no such end)
    key_shape: str = "ellipse"
    key_past: str = "hold"
    key_move: bool = True
    key_reach: float | None = 1.2
    # extent prior (walk_extent.py): the structure's ends read on two orthogonal planes (2 encodes);
    # no stop within half the estimated depth, and "lost track" relative to the guarded slices' agreement
    # (on by default: one box 0.865/0.903/0.911x -> 0.884/0.948/0.937x of the oracle, docs/3d.md)
    extent_prior: bool = True
    # with the prior: where both planes agree on an end, a direction ends this x its depth (at least 3
    # slices) past that end ("past the estimated end", Extent.cap); None: no such end
    extent_cap: float | None = 0.5
    # the 3D mask (WalkResult.volume) is voted over the slices within this many in-plane pixels
    # (vote_reach: 2 slices on 1 mm iso MRI; none for slices much thicker than the pixels); None: off
    vote: float | None = 2.0
    # off key spans the anchored box moves with the image under it (walk_follow.py: block matching
    # between neighbour slices, up to this many pixels per slice at isotropic spacing); None: held still
    follow: float | None = 3.0
    # the slice the next one is matched against: the last one where the box moved, up to this many
    # slices back (1: always the neighbour). A structure that moves less than a pixel per slice moves
    # nothing neighbour to neighbour; against an older slice its motion adds up to whole pixels.
    # 3 centres the box better on MRI but the walk overruns more with it (docs/3d.md), so 1
    follow_frames: int = 1
    # a start box closer than this many pixels of the model's 256 grid to the start slice's mask is
    # pushed out to that distance on those sides; the start slice is decoded again with it and that box
    # is held (the user's box stays the key). Off by default: 1.5 lifts a box drawn flush with the
    # object on the dev volumes (macaque 0.768x -> 0.832x the oracle) but not on the check structures
    # nobody tuned on, and costs where the mask leaks to a loose box's edge (docs/3d.md "A tight start box")
    min_slack: float | None = None

    def run(self, predictor, slices, result, directions, bounds, intensity, spacing, cancel):
        keys, z = result.keys, result.start
        result.vote = vote_reach(spacing, self.vote)
        fresh = z not in result.masks
        if fresh:
            check_cancel(cancel)
            self._decode(predictor, slices[z], keys[z], None, intensity, result, z, None)
            result.rewalked += 1
            wide = self._widened(keys[z], result.masks[z], slices.shape[1:])
            if wide is not None:
                self._decode(predictor, slices[z], wide, None, intensity, result, z, None)
        depth = _expected_depth(result.masks[z], spacing)
        spans = [min(bounds[1] - z if d == "up" else z - bounds[0], depth) for d in directions]
        prior = self.extent_prior and result.masks[z].any() and not is_blank(slices[z])
        planes = PLANES if prior else 0  # each plane read is a progress step (an encode, unlike a decode)
        if fresh:
            yield SliceResult(z, result.masks[z], result.scores[z], result.boxes[z], 1 + planes + sum(spans))
        cal = self._calibrate(slices[z], result, intensity)
        if prior:
            result.extent = yield from self._read_extent(predictor, slices, result, spacing, intensity,
                                                         int(fresh) + planes + sum(spans), cancel)
        for i, name in enumerate(directions):
            step, end = (1, bounds[1]) if name == "up" else (-1, bounds[0])
            result.stops[name] = yield from self._walk(predictor, slices, result, z, step, end, cal, intensity,
                                                       spacing, (depth, sum(spans[i + 1:]) + planes), cancel)
        return result

    def _widened(self, box, mask, size) -> np.ndarray | None:
        """``box`` pushed out where it lies closer than ``min_slack`` (256-grid px) to ``mask``'s
        bounding box, kept inside the image; None when no side moves (or no mask / option)."""
        if not self.min_slack or not mask.any():
            return None
        s = self.min_slack * max(size) / 256.0
        t, b = box_from_mask(mask), np.asarray(box, float)
        wide = np.array([min(b[0], t[0] - s), min(b[1], t[1] - s), max(b[2], t[2] + s), max(b[3], t[3] + s)])
        wide = np.clip(wide, 0, [size[1] - 1, size[0] - 1, size[1] - 1, size[0] - 1])
        return wide if np.abs(wide - b).max() >= 0.5 else None

    @staticmethod
    def _read_extent(predictor, slices, result, spacing, intensity, total, cancel):
        """The extent prior's planes (walk_extent.read_extent), one progress step each: a
        SliceResult of the start slice with ``stage="plane"``. Cancel is checked before each."""
        z = result.start
        steps = read_extent(predictor, slices, result.masks[z], _start_box(result), z, spacing, intensity,
                            cancel=cancel)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            yield SliceResult(z, result.masks[z], result.scores[z], result.keys[z], total, stage="plane")

    def _calibrate(self, image, result, intensity) -> Calibration:
        z = result.start
        mask, box = result.masks[z], _start_box(result)
        f = result.features[z]
        c0 = f["contrast"]
        window = intensity.value_range
        if window is not None and abs(c0) < 0.01 * (window[1] - window[0]):
            c0 = 0.0  # no measurable contrast at the start: the contrast rule cannot tell anything
        if abs(c0) < self.rules.contrast_noise * f.get("std", 0.0):
            c0 = 0.0  # an edge within the structure's own noise (deep brain structures): no signal either
        slack = (0.0, 0.0)
        if self.adaptive_margin and mask.any():
            tight = box_from_mask(mask)
            sx = ((tight[0] - box[0]) + (box[2] - tight[2])) / 2
            sy = ((tight[1] - box[1]) + (box[3] - tight[3])) / 2
            slack = (float(np.clip(sx, 0, self.max_slack)), float(np.clip(sy, 0, self.max_slack)))
        span = (window[1] - window[0]) if window is not None else float(np.ptp(image))
        std = max(f.get("std", 0.0), 0.02 * span)  # a uniform structure still has noise and partial volume
        return Calibration(f["score"], f.get("mean", 0.0), std, c0, slack)

    def _decode(self, predictor, image, box, mask_input, intensity, result, z, prev, choose=None) -> np.ndarray:
        """Decode slice z with ``box``; the rules see the single-output mask (returned). With
        ``choose`` (a (Y, X) bool mask to be like: see ``output``) the kept mask is the one among
        that mask and the three multimask outputs that overlaps ``choose`` most."""
        choosing = choose is not None and choose.any()
        if is_blank(image):
            mask, score, logits, others = np.zeros(image.shape, bool), 0.0, None, []
        else:
            predictor.set_image(image, intensity=intensity)
            kw = {"mask_input": mask_input[None, None]} if mask_input is not None else {}
            # with a choice to make, one decoder pass gives the one-mask output and the three others
            pred = predictor.predict(boxes=box[None], multimask_output="all" if choosing else False, **kw)
            masks, scores = (pred[0][0], pred[1][0]) if choosing else (pred[0][:1], pred[1][:1])
            mask, score, others = masks[0], float(scores[0]), list(masks[1:])
            low = getattr(pred, "low_res_logits", None)
            logits = None if low is None else low[0, 0].astype(np.float32)
        kept = mask
        if choosing and mask.any():
            kept = _most_consistent([mask, *others], choose)
        result.masks[z], result.scores[z], result.boxes[z] = kept, score, np.asarray(box, float)
        if logits is not None and self.mask_prompt:
            result.logits[z] = logits
        result.features[z] = slice_features(image, mask, score, prev)
        return mask

    def _box(self, prev, cal: Calibration, spacing) -> np.ndarray:
        sz, sy, sx = spacing
        mx = self.margin + cal.slack[0] + self.growth * sz / sx
        my = self.margin + cal.slack[1] + self.growth * sz / sy
        return box_from_mask(prev, (mx, my))

    def _next_box(self, prev, track, cal, spacing, size, key_box) -> np.ndarray:
        """The prompt off key spans: ``anchor`` x the last key box passed + (1 - anchor) x the
        neighbour rule's box (``_rule_box``)."""
        if self.anchor >= 1.0:
            return np.asarray(key_box, float)
        box = self._rule_box(prev, track, cal, spacing, size)
        return box if self.anchor <= 0.0 else self.anchor * np.asarray(key_box, float) + (1 - self.anchor) * box

    def _rule_box(self, prev, track, cal, spacing, size) -> np.ndarray:
        """"mask": the neighbour mask's box plus margins. "track": the neighbour's box moved by how
        the masks' boxes moved between the last two slices (a model that segments a structure too
        large or too small by the same amount on every slice moves the box right all the same)."""
        if self.box_rule == "mask" or track[-1][1] is None:
            return self._box(prev, cal, spacing)
        box = track[-1][0].copy()
        if len(track) >= 2 and track[-2][1] is not None:
            box += track[-1][1] - track[-2][1]
        h, w = size
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            return self._box(prev, cal, spacing)
        return box

    def _walk(self, predictor, slices, result, z, step, end, cal, intensity, spacing, expect, cancel):
        """One direction from slice z to ``end`` inclusive; returns its Stop. ``expect``: (slices
        expected in this direction, in the directions after it), for the progress total.

        The rules' verdicts go into an ``Evidence`` count (walk_stop.py): a slice is yielded once
        it is kept for good, the held slices after the count's maximum are dropped when the
        direction ends. ``prev`` is the neighbour's single-output mask (what the rules compare
        with), ``out`` its kept mask, ``shadow`` the cross-check walk's mask (``_check``)."""
        last, evidence = z, Evidence(self.rules)
        guard = ExtentGuard(result.extent.depth(z, step)) if result.extent is not None else None
        cap = self._cap(result, z, step)
        free = replace(self.rules, min_agree=0.0)  # with the guard, "lost track" is relative (ExtentGuard)
        prev = shadow = out = result.masks[z]
        track = [(result.boxes[z], box_from_mask(prev) if prev.any() else None)]  # (box used, mask's tight box)
        drift, drift_from = np.zeros(2), None  # how far the image moved since the anchor box's slice
        radius = follow_radius(self.follow, spacing) if self.follow else 0
        for zz in range(z + step, end + step, step):
            check_cancel(cancel)
            key = interpolate(result.keys, zz, z, self.key_shape)
            guided = key is not None  # between or on key slices: the user says the object is there
            if cap is not None and not guided and abs(zz - z) > cap:
                return self._drop(result, evidence) or Stop("past the estimated end", zz)
            if not guided and not prev.any():
                return self._drop(result, evidence) or Stop("vanished", zz)
            passed = [k for k in result.keys if (k - zz) * step < 0 and (k - z) * step >= 0]
            anchor_z = max(passed) if step > 0 else min(passed)
            anchor_box = result.keys[anchor_z] if anchor_z != z else _start_box(result)
            if not guided and anchor_z != z:  # past a key beyond the start: what the keys say (walk_keys)
                anchor_box, tip = past_key(result.keys, z, zz, self.key_past, self.key_move, self.key_reach)
                if tip:
                    return self._drop(result, evidence) or Stop("tip from key boxes", zz)
            if radius and not guided:
                if drift_from != anchor_z:
                    drift, drift_from = np.zeros(2), anchor_z
                    frame, frame_drift = last, drift  # the slice matched against, and the drift there
                held = np.asarray(anchor_box, float)
                moved = np.asarray(image_shift(slices[frame], slices[zz], held + np.tile(frame_drift, 2),
                                               radius))
                drift = frame_drift + moved
                if moved.any() or abs(zz - frame) >= max(1, self.follow_frames):
                    frame, frame_drift = zz, drift
                anchor_box = held + np.tile(drift, 2)
            box = key if guided else self._next_box(prev, track, cal, spacing, prev.shape, anchor_box)
            box = box if zz in result.keys else fit_box(box, slices.shape[1:])
            mi = result.logits.get(last) if self.mask_prompt and key is None else None
            like = out if self.output == "consistent" else result.masks.get(anchor_z)
            mask = self._decode(predictor, slices[zz], box, mi, intensity, result, zz, prev,
                                None if zz in result.keys or self.output == "single" else like)
            result.rewalked += 1
            f = result.features[zz]
            why = None  # on and between key slices the user says the object is there: no rules
            if guided:
                shadow = mask if mask.any() else shadow
            else:
                if self.rules.min_agree:
                    shadow = self._check(predictor, slices[zz], shadow, box, mask, cal, spacing, f)
                why = stop_reason(self.rules if guard is None else free, f, int(prev.sum()), cal)
                why = why if guard is None else guard.verdict(abs(zz - z), f, why)
            kept, stop = evidence.add(zz, why, empty=not guided and not mask.any())
            if stop is not None:
                return self._drop(result, evidence, stop)
            if kept:
                ahead = min(max(expect[0] - abs(zz - z), 1), abs(end - zz))
                total = result.rewalked + ahead + expect[1]
                for zk in kept:  # held slices come out once a later one wins them back
                    yield SliceResult(zk, result.masks[zk], result.scores[zk], result.boxes[zk], total)
            last = zz
            if mask.any():
                prev, out = mask, result.masks[zz]
                track.append((np.asarray(box, float), box_from_mask(prev)))
        stop = evidence.finish()
        if stop is not None:
            return self._drop(result, evidence, stop)
        if end in result.keys and end != z:
            return Stop("reached key slice", end)
        return Stop("end of volume", end)

    def _cap(self, result, z: int, step: int) -> int | None:
        """Extent.cap for this direction; none when a key box on this side lies past the estimated
        end (the user says the object is there: the planes' end is wrong on this side)."""
        if result.extent is None or self.extent_cap is None:
            return None
        depth = result.extent.depth(z, step)
        if depth is not None and any((k - z) * step > depth for k in result.keys):
            return None
        return result.extent.cap(z, step, self.extent_cap)

    @staticmethod
    def _drop(result, evidence: Evidence, stop: Stop | None = None) -> Stop | None:
        """Forget the held slices; the Stop is the first one's (None when nothing was held)."""
        stop = stop or evidence.finish()
        for zh in evidence.dropped:
            for d in (result.masks, result.scores, result.boxes, result.logits):
                d.pop(zh, None)
        evidence.held = []
        return stop

    def _check(self, predictor, image, shadow, box, mask, cal, spacing, f) -> np.ndarray:
        """The cross-check: a second walk whose box is only its own neighbour mask's box (+ slack),
        decoded on the same slice (no encoder work). Inside the structure both prompts find the
        same object; past its end the anchored box still holds something while the mask-box walk
        shrinks or slides away, so their IoU (``f["agree"]``) falls. Returns its new mask."""
        if not shadow.any() or is_blank(image):
            f["agree"] = 0.0
            return shadow
        # a valid prompt even where the shadow mask runs along the image's edge with under a pixel
        # of slack (a nucleus cut by the image border, a tight start box)
        own = fit_box(self._rule_box(shadow, [(None, None)], cal, spacing, shadow.shape), image.shape)
        other = mask if np.allclose(own, box) else predictor.predict(boxes=own[None])[0][0]
        union = (mask | other).sum()
        f["agree"] = float((mask & other).sum() / union) if union else 0.0
        return other if other.any() else shadow

    def stop_reason(self, f: dict, prev: np.ndarray, cal: Calibration) -> str | None:
        """The rule ``f`` (a slice's features) trips, as a short user-readable reason, or None."""
        return stop_reason(self.rules, f, int(prev.sum()), cal)


def vote_reach(spacing, vote: float | None) -> int:
    """Slices each side a slice's mask is voted with: those within ``vote`` in-plane pixels of it
    (spacing (z, y, x)); 0 with ``vote`` None or 0, or for slices thicker than that (a CT of 5 mm
    slices at 0.7 mm pixels), where neighbours show a different cross-section."""
    if not vote:
        return 0
    sz, sy, sx = spacing
    return int(np.floor(vote * min(sy, sx) / sz + 0.5))


def vote_slices(stack: np.ndarray, reach: int, keep=()) -> np.ndarray:
    """Each slice of ``stack`` ((Z, Y, X) bool) between its first and last non-empty slice becomes
    the majority of the slices within ``reach`` of it; the window stays centred, so it narrows
    towards the span's ends and the end slices stay as they are (a shape that grows or shrinks
    steadily over the window keeps its cross-section). Slices in ``keep`` stay as they are.
    LiteMedSAM decodes each slice on its own, so a slice's mask flickers (a part dropped, a
    neighbour's tissue taken) where its neighbours agree; structures change smoothly over slices
    closer than their pixels."""
    zs = np.flatnonzero(stack.any(axis=(1, 2)))
    if reach <= 0 or zs.size < 2:
        return stack
    lo, hi = int(zs[0]), int(zs[-1])
    rows = np.flatnonzero(stack[lo:hi + 1].any(axis=(0, 2)))
    cols = np.flatnonzero(stack[lo:hi + 1].any(axis=(0, 1)))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # the walk's pixels only
    out = stack.copy()
    for z in range(lo, hi + 1):
        r = min(reach, z - lo, hi - z)
        if z in keep or r <= 0:
            continue
        votes = stack[z - r:z + r + 1, crop[0], crop[1]].sum(axis=0, dtype=np.uint16)  # one window at a time
        out[z, crop[0], crop[1]] = 2 * votes > 2 * r + 1
    return out


def _most_consistent(candidates, neighbour) -> np.ndarray:
    """Among ``candidates`` (the one-mask output, then the three multimask outputs for the same
    box), the one with the highest IoU with ``neighbour`` (the mask to be like): the object's own
    cross-section, not a part or a leak; the first one on a tie."""
    best, best_iou = candidates[0], -1.0
    for m in candidates:
        union = (m | neighbour).sum()
        iou = (m & neighbour).sum() / union if union else 0.0
        if iou > best_iou:
            best, best_iou = m, iou
    return best
