"""Extra confidence signals for the active-learning ranking, and weights fitted on the user's corrections.

Each signal is a confidence in [0, 1] for one (box, mask) pair on one (H, W[, C]) plane:

* ``flip``: IoU between the mask and the mask of the same box on the left-right flipped image (one
  more encode per plane, cached), flipped back: test-time augmentation disagreement;
* ``contrast``: how well the mask's border sits on an intensity edge:
  ``|mean(inner ring) - mean(outer ring)| / (|difference| + pooled std of the rings)`` (rings 2 px);
* ``head``: IoU between the mask and the automatic head's best-overlapping instance on the plane
  (``autoseg.head_instances``; only with a trained head).

``fit_weights(components, dice)`` fits non-negative weights so that ``1 - weighted mean confidence``
follows the corrections the user made so far (``1 - Dice`` between the model's mask and the kept
one): non-negative least squares on centred values; too few corrections -> the default weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .active import Weights

SIGNALS = ("flip", "contrast", "head")
MIN_CORRECTIONS = 8


def _grey(plane) -> np.ndarray:
    img = np.asarray(plane, np.float64)
    return img[..., :3].mean(-1) if img.ndim == 3 else img


def boundary_contrast(grey: np.ndarray, mask: np.ndarray, width: int = 2) -> float:
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any() or mask.all():
        return 0.0
    inner = mask & ~ndimage.binary_erosion(mask, iterations=width)
    outer = ndimage.binary_dilation(mask, iterations=width) & ~mask
    if not inner.any() or not outer.any():
        return 0.0
    a, b = grey[inner], grey[outer]
    diff = abs(float(a.mean()) - float(b.mean()))
    spread = float(np.sqrt((a.var() + b.var()) / 2))
    return diff / (diff + spread) if diff + spread > 0 else 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def flip_agreement(predictor, plane, boxes: np.ndarray, masks: np.ndarray) -> list[float]:
    """IoU of each mask with the mask of its box decoded on the left-right flipped plane."""
    w = np.shape(plane)[1]
    predictor.set_image(np.ascontiguousarray(np.asarray(plane)[:, ::-1]))
    fb = np.asarray(boxes, np.float64).copy()
    fb[:, [0, 2]] = (w - 1) - fb[:, [2, 0]]
    flipped = np.asarray(predictor.predict(boxes=fb)[0], bool)[:, :, ::-1]
    return [_iou(m, f) for m, f in zip(masks, flipped, strict=True)]


def head_agreement(instances: np.ndarray, masks: np.ndarray) -> list[float]:
    """Per mask: IoU with the head instance it overlaps most (0 when it overlaps none)."""
    out = []
    for m in masks:
        ids, counts = np.unique(instances[m], return_counts=True)
        keep = ids != 0
        if not keep.any():
            out.append(0.0)
            continue
        best = ids[keep][np.argmax(counts[keep])]
        out.append(_iou(m, instances == best))
    return out


def extra_signals(predictor, plane, boxes: np.ndarray, masks: np.ndarray, which: Sequence[str],
                  head=None) -> list[dict[str, float]]:
    """Signals ``which`` (subset of SIGNALS) for N boxes and their (N, H, W) masks on one plane.
    Leaves ``predictor`` on the flipped plane when "flip" is asked: set the image again before use."""
    unknown = set(which) - set(SIGNALS)
    if unknown:
        from .errors import PromptError

        raise PromptError(f"unknown ranking signals {sorted(unknown)}; use {', '.join(SIGNALS)}")
    out: list[dict[str, float]] = [{} for _ in range(len(masks))]
    if "contrast" in which:
        grey = _grey(plane)
        for d, m in zip(out, masks, strict=True):
            d["contrast"] = boundary_contrast(grey, m)
    if "head" in which and head is not None:
        from .autoseg import head_instances

        for d, v in zip(out, head_agreement(head_instances(predictor, head, plane), masks), strict=True):
            d["head"] = v
    if "flip" in which and len(masks):
        for d, v in zip(out, flip_agreement(predictor, plane, boxes, masks), strict=True):
            d["flip"] = v
    return out


def _nnls_weights(components, dice, names):
    """Normalised NNLS weights per name of ``names``, or None when they explain nothing."""
    from scipy.optimize import nnls

    x = 1.0 - np.array([[float(c[n]) for n in names] for c in components])
    y = 1.0 - np.asarray(dice, np.float64)
    w, _ = nnls(x - x.mean(0), y - y.mean())
    if not np.isfinite(w).all() or w.sum() <= 0:
        return None
    return w / w.sum()


def fit_weights(components: Sequence[Mapping[str, float]], dice: Sequence[float], names: Sequence[str] | None = None):
    """Non-negative weights (an ``active.Weights``) from the corrections so far: ``components`` of
    each corrected/accepted object and the Dice between the model's mask and the mask kept."""
    return weights_from_corrections(components, dice, names).weights


@dataclass(frozen=True)
class FittedWeights:
    """The weights a ranking used: ``fitted`` on ``n`` corrections, or the defaults (too few, or
    the corrections did not single out any component)."""

    weights: Weights
    n: int
    fitted: bool

    def describe(self) -> str:
        """One line for the GUI / a log, e.g. "fitted on 12 corrections: flip 0.49, iou_pred 0.35"."""
        if self.fitted:
            parts = sorted(((v, k) for k, v in vars(self.weights).items() if v > 0.005), reverse=True)
            return f"fitted on {self.n} corrections: " + ", ".join(f"{k} {v:.2f}" for v, k in parts)
        why = (f"{self.n} of {MIN_CORRECTIONS} corrections needed to fit" if self.n < MIN_CORRECTIONS
               else f"{self.n} corrections did not single out a signal")
        return f"default weights (iou_pred, stability, agreement): {why}"


def weights_from_corrections(components: Sequence[Mapping[str, float]], dice: Sequence[float],
                             names: Sequence[str] | None = None) -> FittedWeights:
    """``FittedWeights`` from the corrections so far (see ``fit_weights``): only the components
    every correction has (of ``names``, all by default) are fitted; fewer than ``MIN_CORRECTIONS``
    corrections, or a fit that weights nothing, give the default ``Weights()``."""
    from .active import COMPONENTS

    if len(components) != len(dice):
        from .errors import PromptError

        raise PromptError(f"{len(components)} component sets but {len(dice)} Dice values: give one per correction")
    n = len(components)
    names = [k for k in (names or COMPONENTS) if components and all(k in c for c in components)]
    w = _nnls_weights(components, dice, names) if n >= MIN_CORRECTIONS and names else None
    if w is None:
        return FittedWeights(Weights(), n, False)
    vals = dict.fromkeys(COMPONENTS, 0.0) | dict(zip(names, (float(v) for v in w), strict=True))
    if vals["iou_pred"] + vals["stability"] <= 0:  # Weights needs one of them: a token share
        vals["iou_pred"] = 1e-3
    return FittedWeights(Weights(**vals), n, True)
