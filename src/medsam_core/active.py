"""Active learning: rank candidate boxes by how unsure the model is about them.

For each candidate box (drawn by the user, the bounding box of an existing label, or proposed by
``auto.detect_boxes``) three confidence components are measured, each in [0, 1]:

* ``iou_pred``: the decoder's own IoU estimate (its IoU head), clipped to [0, 1];
* ``stability``: mean IoU between the mask of the box and the masks of ``n_jitter`` jittered
  copies of the box (each side moved by up to ``jitter`` x the box's side, at least 1 pixel),
  all decoded in one ``predict`` call on the cached embedding;
* ``agreement``: IoU between the masks of the current and the previous model for the same box
  (only when a previous predictor is given; both should share one EmbeddingCache, so a
  decoder-only fine-tune costs no extra encoder pass).

The uncertainty score is one minus the weighted mean of the available confidences::

    score = 1 - (w_iou * iou_pred + w_stab * stability + w_agree * agreement) / (w_iou + w_stab + w_agree)

with ``w_agree`` dropped (weight 0) when there is no previous model. Defaults: all weights 1.
A score of 0 means fully confident, 1 means no confidence at all; higher ranks first. Every
component is kept in ``Suggestion.components`` (plus ``"area"``, the mask's pixel count).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PromptError

COMPONENTS = ("iou_pred", "stability", "agreement", "flip", "contrast", "head")


@dataclass(frozen=True)
class Candidate:
    """One box to consider: on image ``image_id`` (slice ``z`` of a volume, or None for 2D),
    ``box`` (4,) XYXY pixels; ``label`` is the label id it came from, if any."""

    image_id: Hashable
    box: tuple[float, float, float, float]
    z: int | None = None
    label: int | None = None


@dataclass
class Suggestion:
    """A ranked candidate: where to look (image_id, z, box (4,) XYXY pixels), its uncertainty
    ``score`` (higher = less sure) and the components that made it."""

    image_id: Hashable
    z: int | None
    box: np.ndarray
    score: float
    components: dict[str, float] = field(default_factory=dict)
    label: int | None = None
    index: int = -1  # position in the candidate list given to ``score_candidates``


@dataclass(frozen=True)
class Weights:
    """Weights of the confidence components in the uncertainty score (see the module docstring)."""

    iou_pred: float = 1.0
    stability: float = 1.0
    agreement: float = 1.0
    flip: float = 0.0  # the signals of signals.py: off unless asked for (and measured)
    contrast: float = 0.0
    head: float = 0.0

    def check(self) -> Weights:
        vals = (self.iou_pred, self.stability, self.agreement, self.flip, self.contrast, self.head)
        if any(not np.isfinite(v) or v < 0 for v in vals) or self.iou_pred + self.stability <= 0:
            raise PromptError(f"weights must be >= 0 and iou_pred + stability > 0; got {self}")
        return self


def combine(components: Mapping[str, float], weights: Weights = Weights()) -> float:
    """Uncertainty score from confidence components (missing ``agreement`` -> weight 0)."""
    w = {k: getattr(weights, k) for k in COMPONENTS}
    total = sum(w[k] for k in COMPONENTS if k in components)
    if total <= 0:
        raise PromptError("no weighted component to combine: give iou_pred or stability a weight > 0")
    conf = sum(w[k] * float(components[k]) for k in COMPONENTS if k in components)
    return float(1.0 - conf / total)


def mask_iou_many(ref: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (H, W) bool mask with each of (K, H, W) masks -> (K,); both empty -> 1."""
    ref = ref.reshape(-1)
    flat = others.reshape(len(others), -1)
    inter = (flat & ref).sum(1)
    union = (flat | ref).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def jitter_box_set(box, n: int, frac: float, image_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(n, 4) copies of one XYXY box, each side moved by up to ``frac`` x the box side (>= 1 px),
    inward or outward, clipped to the (H, W) image; every box keeps >= 1 pixel of width/height."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = image_size
    sx, sy = max(1.0, frac * (x1 - x0)), max(1.0, frac * (y1 - y0))
    d = rng.uniform(-1.0, 1.0, size=(n, 4)) * np.array([sx, sy, sx, sy])
    out = np.array([x0, y0, x1, y1]) + d
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h - 1)
    bad = (out[:, 2] - out[:, 0] < 1) | (out[:, 3] - out[:, 1] < 1)
    out[bad] = (x0, y0, x1, y1)
    return out


def _plane(images: Mapping[Hashable, Any], image_id: Hashable, z: int | None) -> np.ndarray:
    if image_id not in images:
        raise PromptError(f"a candidate refers to image {image_id!r}, which is not among the images given")
    img = images[image_id]
    if z is None:
        return np.asarray(img)
    if not 0 <= int(z) < len(img):
        raise PromptError(f"candidate slice z={z} is outside image {image_id!r} with {len(img)} slices")
    return np.asarray(img[int(z)])


def _group(candidates: Sequence[Candidate]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault((c.image_id, c.z), []).append(i)
    return groups


def _score_plane(predictor, previous, plane, cands: list[Candidate], n_jitter: int, jitter: float,
                 rng: np.random.Generator, signals: Sequence[str] = (), head=None) -> list[dict[str, float]]:
    """Components of the candidates of one (H, W) plane: one predict call (boxes + jitters)."""
    predictor.set_image(plane)
    boxes = np.asarray([c.box for c in cands], np.float64).reshape(-1, 4)
    size = plane.shape[:2]
    jit = [jitter_box_set(b, n_jitter, jitter, size, rng) for b in boxes] if n_jitter > 0 else []
    all_boxes = np.concatenate([boxes, *jit]) if jit else boxes
    masks, scores = predictor.predict(boxes=all_boxes)
    masks, scores = np.asarray(masks, bool), np.asarray(scores, np.float64).reshape(-1)
    n = len(boxes)
    prev_masks = None
    if previous is not None:
        previous.set_image(plane)
        prev_masks = np.asarray(previous.predict(boxes=boxes)[0], bool)
    out = []
    for i in range(n):
        comp = {"iou_pred": float(np.clip(scores[i], 0.0, 1.0)), "area": float(masks[i].sum())}
        if n_jitter > 0:
            others = masks[n + i * n_jitter: n + (i + 1) * n_jitter]
            comp["stability"] = float(mask_iou_many(masks[i], others).mean())
        if prev_masks is not None:
            comp["agreement"] = float(mask_iou_many(masks[i], prev_masks[i: i + 1])[0])
        out.append(comp)
    if signals:
        from .signals import extra_signals

        for comp, extra in zip(out, extra_signals(predictor, plane, boxes, masks[:n], signals, head), strict=True):
            comp.update(extra)
    return out


def score_candidates(predictor, images: Mapping[Hashable, Any], candidates: Sequence[Candidate],
                     previous=None, n_jitter: int = 8, jitter: float = 0.1, weights: Weights = Weights(),
                     seed: int = 0, on_progress=None, signals: Sequence[str] = (), head=None) -> list[Suggestion]:
    """Uncertainty of every candidate, in candidate order (see ``rank`` / ``suggest``).

    predictor: a ``Predictor`` of the current model (anything with ``set_image`` and
    ``predict(boxes=) -> (masks (N, H, W), scores (N,))``). images: image_id -> (H, W[, C])
    image or (Z, H, W) volume (for candidates with a ``z``). previous: a predictor of the
    previous model, or None; make it with ``previous_predictor`` so it shares the cache.
    n_jitter: jittered boxes per candidate (0 turns stability off); jitter: fraction of the
    box side. on_progress(done, total): after each image/slice. signals: extra components of
    ``signals.SIGNALS`` ("flip", "contrast", "head"; the last needs ``head``, an ``autohead.AutoHead``),
    weighted by ``weights`` (0 by default: give them weights, e.g. ``signals.fit_weights``).
    Raises PromptError on bad input.
    """
    weights = weights.check()
    if n_jitter < 0 or not 0 <= jitter < 1:
        raise PromptError(f"n_jitter must be >= 0 and jitter in [0, 1); got {n_jitter}, {jitter}")
    if n_jitter == 0 and weights.iou_pred <= 0:
        raise PromptError("with n_jitter=0 stability is off: give iou_pred a weight > 0")
    groups = _group(candidates)
    planes = {key: _plane(images, *key) for key in groups}  # validate everything before decoding
    rng = np.random.default_rng(seed)
    results: list[Suggestion | None] = [None] * len(candidates)
    for done, (key, idx) in enumerate(groups.items(), start=1):
        comps = _score_plane(predictor, previous, planes[key], [candidates[i] for i in idx], n_jitter, jitter, rng,
                             signals, head)
        for i, comp in zip(idx, comps, strict=True):
            c = candidates[i]
            results[i] = Suggestion(c.image_id, c.z, np.asarray(c.box, np.float64), combine(comp, weights),
                                    comp, c.label, i)
        if on_progress is not None:
            on_progress(done, len(groups))
    return results  # type: ignore[return-value]


def rank(suggestions: Sequence[Suggestion], top_k: int | None = None) -> list[Suggestion]:
    """Most uncertain first (ties keep candidate order); the first ``top_k`` (all if None)."""
    order = sorted(suggestions, key=lambda s: (-s.score, s.index))
    return order if top_k is None else order[: max(0, int(top_k))]


def suggest(predictor, images: Mapping[Hashable, Any], candidates: Sequence[Candidate], top_k: int = 10,
            **kwargs) -> list[Suggestion]:
    """The ``top_k`` most uncertain candidates (``score_candidates`` then ``rank``)."""
    return rank(score_candidates(predictor, images, candidates, **kwargs), top_k)


def previous_predictor(current, previous_model):
    """A Predictor of ``previous_model`` sharing ``current``'s cache, intensity and channel, so a
    model with the same encoder_id (decoder-only fine-tune) reuses every embedding."""
    from .predictor import Predictor

    return Predictor(previous_model, cache=current.cache, intensity=current.intensity, channel=current.channel)


def candidates_from_labels(image_id: Hashable, labels: np.ndarray, margin: float = 0.0) -> list[Candidate]:
    """One candidate per label id (per slice of a (Z, H, W) label volume): its bounding box, grown
    by ``margin`` pixels and clipped to the image."""
    from scipy import ndimage

    lab = np.asarray(labels)
    if lab.ndim not in (2, 3) or lab.dtype.kind not in "biu":
        raise PromptError(f"labels must be an integer (H, W) or (Z, H, W) array; got {lab.dtype} {lab.shape}")
    planes = [(None, lab)] if lab.ndim == 2 else list(enumerate(lab))
    out = []
    for z, plane in planes:
        h, w = plane.shape
        for k, sl in enumerate(ndimage.find_objects(plane.astype(np.int64, copy=False)), start=1):
            if sl is None:
                continue
            y0, x0 = max(0, sl[0].start - margin), max(0, sl[1].start - margin)
            y1, x1 = min(h - 1, sl[0].stop - 1 + margin), min(w - 1, sl[1].stop - 1 + margin)
            x1, y1 = max(x1, min(w - 1, x0 + 1)), max(y1, min(h - 1, y0 + 1))
            out.append(Candidate(image_id, (float(x0), float(y0), float(x1), float(y1)), z, k))
    return out


def candidates_from_boxes(image_id: Hashable, boxes, z: int | None = None) -> list[Candidate]:
    """Candidates from (N, 4) XYXY boxes (drawn by the user or from ``auto.detect_boxes``)."""
    arr = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if not np.isfinite(arr).all() or ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])).any():
        raise PromptError("boxes must be finite (N, 4) XYXY with x_max >= x_min and y_max >= y_min")
    return [Candidate(image_id, tuple(float(v) for v in b), z) for b in arr]
