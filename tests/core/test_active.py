"""Uncertainty ranking: exact order on a fake predictor with known uncertainties; real model (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.active import (
    Candidate,
    Weights,
    candidates_from_boxes,
    candidates_from_labels,
    combine,
    jitter_box_set,
    previous_predictor,
    rank,
    score_candidates,
    suggest,
)
from medsam_core.errors import MedSAMError, PromptError

# Four objects on a 100 x 100 image, boxes XYXY.
BOXES = {
    "A": (10.0, 10.0, 30.0, 30.0),  # iou 0.9, mask ignores the box (stability 1)
    "B": (60.0, 10.0, 80.0, 30.0),  # iou 0.5, stable
    "C": (10.0, 60.0, 30.0, 80.0),  # iou 0.9, mask = the box itself (stability < 1)
    "D": (60.0, 60.0, 80.0, 80.0),  # iou 0.8, jittered boxes give empty masks (stability 0)
}
IOU = {"A": 0.9, "B": 0.5, "C": 0.9, "D": 0.8}


def _rect(shape, box):
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = np.round(box).astype(int)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


class FakePredictor:
    """Decodes a box by the object whose canonical box overlaps it most; behaviour per object above.
    ``disagree``: objects whose mask this (previous) model gets entirely wrong (empty)."""

    def __init__(self, disagree=()):
        self.disagree = set(disagree)
        self.set_calls = 0
        self.predict_calls = 0
        self.n_boxes = []

    def set_image(self, image):
        self.shape = np.asarray(image).shape[:2]
        self.set_calls += 1
        return False

    def _which(self, box):
        def overlap(b):
            return _rect(self.shape, b).__and__(_rect(self.shape, box)).sum()

        return max(BOXES, key=lambda k: overlap(BOXES[k]))

    def predict(self, boxes):
        self.predict_calls += 1
        self.n_boxes.append(len(boxes))
        masks, scores = [], []
        for box in np.asarray(boxes):
            k = self._which(box)
            canonical = np.allclose(box, BOXES[k])
            if k in self.disagree or (k == "D" and not canonical):
                m = np.zeros(self.shape, bool)
            elif k == "C":
                m = _rect(self.shape, box)
            else:
                m = _rect(self.shape, BOXES[k])
            masks.append(m)
            scores.append(IOU[k])
        return np.array(masks), np.array(scores, np.float32)


def _cands(image_id="img"):
    return [Candidate(image_id, BOXES[k], label=i + 1) for i, k in enumerate("ABCD")]


IMAGES = {"img": np.zeros((100, 100), np.uint8)}


def test_ranking_order_and_components_exact():
    fake = FakePredictor()
    sugg = score_candidates(fake, IMAGES, _cands(), n_jitter=6, jitter=0.1)
    comp = {s.label: s.components for s in sugg}
    assert comp[1]["stability"] == 1.0 and comp[2]["stability"] == 1.0 and comp[4]["stability"] == 0.0
    assert 0.6 < comp[3]["stability"] < 1.0
    assert comp[2]["iou_pred"] == pytest.approx(0.5)
    assert "agreement" not in comp[1]
    assert [s.label for s in rank(sugg)] == [4, 2, 3, 1]  # D, B, C, A
    assert sugg[0].score == pytest.approx(1 - (0.9 + 1.0) / 2)
    assert sugg[3].score == pytest.approx(1 - (0.8 + 0.0) / 2)
    # all jitters of all candidates of one image decoded in one predict call
    assert fake.set_calls == 1 and fake.predict_calls == 1 and fake.n_boxes == [4 * 7]


def test_previous_model_disagreement_changes_order():
    prev = FakePredictor(disagree={"A"})
    sugg = score_candidates(FakePredictor(), IMAGES, _cands(), previous=prev, n_jitter=6)
    comp = {s.label: s.components for s in sugg}
    assert comp[1]["agreement"] == 0.0 and comp[2]["agreement"] == 1.0
    assert [s.label for s in rank(sugg)] == [4, 1, 2, 3]  # D, A, B, C
    assert prev.predict_calls == 1 and prev.n_boxes == [4]


def test_top_k_weights_and_iou_only():
    top = suggest(FakePredictor(), IMAGES, _cands(), top_k=2, n_jitter=0)
    assert [s.label for s in top] == [2, 4]  # by predicted IoU only: B (0.5), D (0.8)
    w = Weights(iou_pred=0.0, stability=1.0)
    order = rank(score_candidates(FakePredictor(), IMAGES, _cands(), weights=w))
    assert order[0].label == 4 and order[-1].score == pytest.approx(0.0)
    assert combine({"iou_pred": 1.0, "stability": 0.0, "agreement": 0.5}) == pytest.approx(0.5)


def test_several_images_and_slices_grouped():
    vol = np.zeros((3, 100, 100), np.uint8)
    cands = _cands("a") + [Candidate("v", BOXES["B"], z=2, label=9)]
    fake = FakePredictor()
    sugg = score_candidates(fake, {"a": IMAGES["img"], "v": vol}, cands, n_jitter=2)
    assert fake.set_calls == 2 and [s.index for s in sugg] == [0, 1, 2, 3, 4]
    assert sugg[4].z == 2 and sugg[4].image_id == "v"


@pytest.mark.parametrize("kwargs", [dict(n_jitter=-1), dict(jitter=1.5), dict(weights=Weights(-1.0))])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(PromptError):
        score_candidates(FakePredictor(), IMAGES, _cands(), **kwargs)


def test_unknown_image_or_slice_raises_before_decoding():
    fake = FakePredictor()
    with pytest.raises(MedSAMError, match="not among the images"):
        score_candidates(fake, IMAGES, _cands() + [Candidate("other", BOXES["A"])])
    with pytest.raises(MedSAMError, match="outside image"):
        score_candidates(fake, {"v": np.zeros((2, 100, 100))}, [Candidate("v", BOXES["A"], z=5)])
    assert fake.predict_calls == 0


def test_candidate_sources():
    lab = np.zeros((50, 60), np.int32)
    lab[5:10, 20:30] = 3
    lab[40:50, 0:4] = 7
    c = candidates_from_labels("x", lab, margin=2)
    assert [(k.label, k.box) for k in c] == [(3, (18.0, 3.0, 31.0, 11.0)), (7, (0.0, 38.0, 5.0, 49.0))]
    vol = np.stack([lab, np.zeros_like(lab)])
    assert [k.z for k in candidates_from_labels("v", vol)] == [0, 0]
    assert candidates_from_boxes("x", np.array([[1, 2, 3, 4]]))[0].box == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(PromptError):
        candidates_from_boxes("x", [[5, 5, 1, 1]])


def test_jitter_box_set_bounds():
    rng = np.random.default_rng(0)
    j = jitter_box_set((0, 0, 9, 9), 50, 0.2, (10, 10), rng)
    assert j.shape == (50, 4) and j.min() >= 0 and j.max() <= 9
    assert (j[:, 2] - j[:, 0] >= 1).all() and not np.allclose(j, (0, 0, 9, 9))


@pytest.mark.slow
def test_real_model_ranks_a_bad_box_first_and_shares_cache(lite_model, dsb2018):
    from medsam_core import Predictor

    image, labels = dsb2018
    img, lab = image[:256, :256], labels[:256, :256]
    cands = candidates_from_labels("q", lab, margin=2)[:12]
    bad = Candidate("q", (100.0, 100.0, 200.0, 110.0))  # a thin strip across the image
    pred = Predictor(lite_model)
    sugg = score_candidates(pred, {"q": img}, cands + [bad], n_jitter=4)
    assert pred.encoder_calls == 1
    assert all(0 <= s.components[k] <= 1 for s in sugg for k in ("iou_pred", "stability"))
    assert len(cands) in [s.index for s in rank(sugg, 2)]  # the strip is among the two least sure
    prev = previous_predictor(pred, lite_model)
    again = score_candidates(pred, {"q": img}, cands, previous=prev, n_jitter=0)
    assert prev.encoder_calls == 0 and all(s.components["agreement"] == 1.0 for s in again)
