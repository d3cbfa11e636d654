"""Failure-predicting signals for the ranking and weights fitted on the user's corrections."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.active import Candidate, Weights, combine, score_candidates
from medsam_core.errors import PromptError
from medsam_core.signals import MIN_CORRECTIONS, boundary_contrast, fit_weights, head_agreement


def _square(shape=(40, 40), box=(10, 10, 29, 29)):
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    m[y0: y1 + 1, x0: x1 + 1] = True
    return m


def test_boundary_contrast_high_on_the_edge_low_off_it():
    obj = _square()
    img = np.where(obj, 200.0, 20.0) + np.random.default_rng(0).normal(0, 2, obj.shape)
    on = boundary_contrast(img, obj)
    off = boundary_contrast(img, _square(box=(3, 3, 22, 22)))  # shifted: rings mix object and background
    assert on > 0.9 and off < 0.6 and 0 <= off < on <= 1
    assert boundary_contrast(img, np.zeros_like(obj)) == 0.0


def test_head_agreement_is_iou_with_the_best_overlapping_instance():
    inst = np.zeros((40, 40), np.int32)
    inst[_square()] = 3
    half = _square(box=(10, 10, 19, 29))
    assert head_agreement(inst, np.stack([_square(), half, _square(box=(32, 32, 36, 36))])) == \
        pytest.approx([1.0, 0.5, 0.0])


def test_fit_weights_finds_the_signal_that_predicts_failures():
    rng = np.random.default_rng(0)
    n = 40
    contrast = rng.uniform(0, 1, n)
    dice = 0.5 + 0.5 * contrast + rng.normal(0, 0.02, n)  # failures where contrast is low
    comps = [{"iou_pred": float(rng.uniform(0.7, 0.9)), "stability": float(rng.uniform(0.8, 1)),
              "contrast": float(c)} for c in contrast]
    w = fit_weights(comps, dice)
    assert w.contrast > 0.8 and w.iou_pred < 0.2 and w.stability < 0.2
    ranked = np.argsort([-combine(c, w) for c in comps])
    assert set(ranked[:5]) <= set(np.argsort(dice)[:10])  # the most uncertain are among the worst
    assert fit_weights(comps[: MIN_CORRECTIONS - 1], dice[: MIN_CORRECTIONS - 1]) == Weights()


class BoxPredictor:
    """Mask = the box, shrunk by 2 px on the flipped image (so flip agreement < 1)."""

    def set_image(self, image):
        self.image = np.asarray(image)
        self.flipped = getattr(self, "orig", None) is not None and not np.array_equal(self.image, self.orig)
        self.orig = self.orig if getattr(self, "orig", None) is not None else self.image

    def predict(self, boxes):
        h, w = self.image.shape[:2]
        d = 2 if self.flipped else 0
        masks = np.stack([_square((h, w), tuple(int(v) + s * d for v, s in zip(b, (1, 1, -1, -1), strict=True)))
                          for b in np.asarray(boxes)])
        return masks, np.full(len(boxes), 0.9)


def test_score_candidates_with_extra_signals_and_weights():
    img = np.where(_square(), 200.0, 20.0) + np.arange(40)[None, :] * 0.1  # not mirror-symmetric
    cands = [Candidate("a", (10.0, 10.0, 29.0, 29.0))]
    (s,) = score_candidates(BoxPredictor(), {"a": img}, cands, n_jitter=0, signals=("flip", "contrast"))
    c = s.components
    assert c["contrast"] > 0.9 and 0.5 < c["flip"] < 1.0
    assert s.score == pytest.approx(combine(c, Weights()))  # flip/contrast weigh 0 by default
    w = Weights(iou_pred=0.0, stability=0.0, flip=1.0)
    with pytest.raises(PromptError):
        score_candidates(BoxPredictor(), {"a": img}, cands, n_jitter=0, signals=("nope",))
    (s2,) = score_candidates(BoxPredictor(), {"a": img}, cands, n_jitter=0, signals=("flip",),
                             weights=Weights(iou_pred=1e-9, stability=0.0, flip=1.0))
    assert s2.score == pytest.approx(1 - c["flip"], abs=1e-6) and w.flip == 1.0
