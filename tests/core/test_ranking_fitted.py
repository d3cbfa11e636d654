"""The ranking weighted by the user's own corrections (fitted_ranking): corrections read from the
provenance, measured with the model that made them, weights fitted, candidates scored with them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medsam_core.active import Candidate, Weights, combine
from medsam_core.errors import PromptError
from medsam_core.fitted_ranking import Correction, corrections_from_provenance, ranking_steps
from medsam_core.provenance import Prompt, Provenance
from medsam_core.signals import MIN_CORRECTIONS, weights_from_corrections


def _model(sha="current"):
    return SimpleNamespace(spec=SimpleNamespace(name="fake"), weights_sha256=sha)


class BoxPredictor:
    """Mask = the box (inclusive pixels); predicted IoU 0.9 for every box (so it ranks nothing)."""

    def __init__(self, sha="current"):
        self.model = _model(sha)
        self.images = 0

    def set_image(self, image):
        self.image = np.asarray(image)
        self.images += 1

    def predict(self, boxes):
        h, w = self.image.shape[:2]
        masks = np.zeros((len(boxes), h, w), bool)
        for m, (x0, y0, x1, y1) in zip(masks, np.asarray(boxes).round().astype(int), strict=True):
            m[y0: y1 + 1, x0: x1 + 1] = True
        return masks, np.full(len(boxes), 0.9)


def _squares(levels, size=12, gap=8):
    """A (H, W) image of squares of intensity ``levels`` on a background of 20, and their boxes."""
    rng = np.random.default_rng(0)
    n = len(levels)
    img = np.full((size + 2 * gap, n * (size + gap) + gap), 20.0)
    boxes = []
    for k, level in enumerate(levels):
        x0 = gap + k * (size + gap)
        img[gap: gap + size, x0: x0 + size] = level
        boxes.append((float(x0), float(gap), float(x0 + size - 1), float(gap + size - 1)))
    return img + rng.normal(0, 3, img.shape), boxes


def test_corrections_from_provenance_2d_and_3d():
    lab = np.zeros((40, 40), np.int32)
    lab[5:15, 5:15] = 1  # kept as the model made it
    lab[20:30, 20:25] = 2  # the person cut the model's 10 x 10 square in half
    lab[30:35, 2:6] = 3  # painted by hand: no model mask
    prov = Provenance()
    prov.record_model_mask(1, lab == 1, [Prompt("box", [4, 4, 15, 15])], _model())
    made = np.zeros_like(lab, bool)
    made[20:30, 20:30] = True
    prov.record_model_mask(2, made, [Prompt("box", [19, 19, 30, 30]), Prompt("point", [22, 22])], _model("old"))
    prov.sync_with_labels(lab)  # records 3 as painted
    prov.record_model_mask(4, lab == 1, [Prompt("point", [8, 8])], _model())  # no box: skipped
    prov.record_model_mask(5, lab == 1, [Prompt("box", [4, 4, 15, 15])], "a-name-only")  # no weights hash
    prov.record_model_mask(6, lab == 1, [Prompt("box", [4, 4, 15, 15])], _model()).model = "automatic:fake"
    got = corrections_from_provenance("img", prov, lab)
    assert [(c.label, c.weights_sha256) for c in got] == [(1, "current"), (2, "old")]
    assert got[0].dice == 1.0 and got[1].dice == pytest.approx(2 * 50 / 150)
    assert got[1].box == (19.0, 19.0, 30.0, 30.0) and got[1].z is None and got[1].image_id == "img"

    vol = np.zeros((3, 20, 20), np.int32)
    vol[1:3, 4:10, 4:10] = 7
    prov3 = Provenance()
    prov3.record_model_mask(7, vol == 7, [Prompt("key_box", [3, 3, 10, 10], z=2)], _model())
    (c,) = corrections_from_provenance("stack", prov3, vol)
    assert c.z == 2 and c.dice == 1.0
    with pytest.raises(PromptError):
        corrections_from_provenance("x", prov, lab.astype(float))


def _run(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_fitted_weights_follow_the_corrections_and_rank_the_candidates():
    # corrections on image "a": the dim squares are the ones the person had to fix
    levels = np.linspace(30, 220, 10)
    img_a, boxes_a = _squares(levels)
    corr = [Correction("a", None, b, float(0.4 + 0.6 * (lv - 30) / 190), k + 1, "current")
            for k, (b, lv) in enumerate(zip(boxes_a, levels, strict=True))]
    # candidates on image "b": one dim square among bright ones, in the middle of the list
    img_b, boxes_b = _squares([200, 210, 190, 35, 205])
    cands = [Candidate("b", b) for b in boxes_b]
    images = {"a": img_a, "b": img_b}
    steps, ranking = _run(ranking_steps(BoxPredictor(), images, cands, corr, signals=("contrast",), n_jitter=0))
    assert steps == [(1, 2), (2, 2)]  # one plane of corrections, one of candidates
    fw = ranking.weights
    assert fw.fitted and fw.n == 10 and fw.weights.contrast > 0.9
    assert "fitted on 10 corrections" in fw.describe() and "contrast" in fw.describe()
    top = ranking.suggestions[0]
    assert top.index == 3  # the dim one; by iou_pred alone (all 0.9) the first candidate would lead
    for s in ranking.suggestions:
        assert s.score == pytest.approx(combine(s.components, fw.weights))
    assert top.score > combine(top.components, Weights()) + 0.05  # not the default weights
    assert set(ranking.measured) == {c.key for c in corr} and ranking.unused == 0


def test_too_few_corrections_default_weights_and_reuse_of_measured_components():
    img, boxes = _squares(np.linspace(30, 220, 10))
    corr = [Correction("a", None, b, 0.5 + 0.05 * k, k + 1, "current") for k, b in enumerate(boxes)]
    few = corr[: MIN_CORRECTIONS - 1]
    _, ranking = _run(ranking_steps(BoxPredictor(), {"a": img}, [Candidate("a", boxes[0])], few,
                                    signals=("contrast",), n_jitter=0))
    assert not ranking.weights.fitted and ranking.weights.weights == Weights()
    assert f"{MIN_CORRECTIONS - 1} of {MIN_CORRECTIONS} corrections" in ranking.weights.describe()

    # the model that made them is gone: components measured earlier are reused, the rest is unused
    _, first = _run(ranking_steps(BoxPredictor(), {"a": img}, [], corr, signals=("contrast",), n_jitter=0))
    gone = [Correction(c.image_id, c.z, c.box, c.dice, c.label, "old") for c in corr]
    measured = {c.key: first.measured[k.key] for c, k in zip(gone, corr, strict=True)}
    pred = BoxPredictor("new")
    steps, again = _run(ranking_steps(pred, {"a": img}, [Candidate("a", boxes[0])], gone[:9], measured,
                                      signals=("contrast",), n_jitter=0))
    assert steps == [(1, 1)] and pred.images == 1  # only the candidates' plane was decoded
    assert again.weights.fitted and again.weights.n == 9 and again.unused == 0
    cur = BoxPredictor()  # measured before by the loaded model: reused, not decoded again
    steps, reused = _run(ranking_steps(cur, {"a": img}, [Candidate("a", boxes[0])], corr, first.measured,
                                       signals=("contrast",), n_jitter=0))
    assert steps == [(1, 1)] and cur.images == 1 and reused.weights.fitted and reused.measured == {}
    _, none = _run(ranking_steps(pred, {"a": img}, [Candidate("a", boxes[0])], gone, None,
                                 signals=("contrast",), n_jitter=0))
    assert none.unused == 10 and not none.weights.fitted

    # a correction made by the previous model is measured with the previous predictor
    prev = BoxPredictor("old")
    _run(ranking_steps(BoxPredictor("new"), {"a": img}, [], gone, previous=prev, signals=("contrast",), n_jitter=0))
    assert prev.images == 1


def test_bad_input_raises_before_decoding():
    pred = BoxPredictor()
    with pytest.raises(PromptError, match="unknown ranking signals"):
        next(ranking_steps(pred, {}, [], [], signals=("nope",)))
    assert pred.images == 0
    with pytest.raises(PromptError, match="one per correction"):
        weights_from_corrections([{"iou_pred": 0.5}], [0.5, 0.6])
    # "head" without a head is dropped rather than failing
    img, boxes = _squares([100])
    _, r = _run(ranking_steps(pred, {"a": img}, [Candidate("a", boxes[0])], signals=("contrast", "head"), n_jitter=0))
    assert r.signals == ("contrast",) and "head" not in r.suggestions[0].components


def test_rank_fitted_runs_the_steps_with_progress():
    from medsam_core.fitted_ranking import rank_fitted

    img, boxes = _squares(np.linspace(30, 220, 10))
    corr = [Correction("a", None, b, 0.4 + 0.06 * k, k + 1, "current") for k, b in enumerate(boxes)]
    seen = []
    r = rank_fitted(BoxPredictor(), {"a": img}, [Candidate("a", b) for b in boxes[:3]], corr,
                    on_progress=lambda d, t: seen.append((d, t)), signals=("contrast",), n_jitter=0, top_k=2)
    assert seen == [(1, 2), (2, 2)] and len(r.suggestions) == 2 and r.weights.fitted
    assert r.suggestions[0].index == 0  # the dimmest square was corrected most
