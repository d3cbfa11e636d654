"""Effort and quality per round from a synthetic provenance + event log; the simulated annotator's
bookkeeping on a tiny synthetic set with a fake model."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam_core.effort import Event, object_seconds, plot_rounds, round_table
from medsam_core.errors import MedSAMError
from medsam_core.provenance import Prompt, Provenance

REPO = Path(__file__).resolve().parents[2]


def _setup():
    """Objects 1, 2 by round 0 (2 edited by the person), 3 by round 1, 4 painted by hand."""
    lab = np.zeros((30, 30), np.int32)
    lab[0:10, 0:10] = 1
    lab[0:10, 20:30] = 2
    lab[20:30, 0:10] = 3
    prov = Provenance()
    box = [Prompt("box", [0, 0, 9, 9])]
    prov.record_model_mask(1, lab == 1, box, "m", round=0)
    model2 = np.zeros_like(lab, bool)
    model2[0:10, 20:25] = True  # the model got half of object 2
    prov.record_model_mask(2, model2, box, "m", round=0)
    prov.record_model_mask(3, lab == 3, box, "m", round=1)
    lab[25:30, 25:30] = 4  # painted by hand
    prov.sync_with_labels(lab)
    events = [
        Event(100.0, "prompt", 1), Event(104.0, "commit", 1),  # 4 s
        Event(110.0, "prompt", 2), Event(111.0, "prompt", 2), Event(112.0, "prompt", 2),
        Event(120.0, "commit", 2),  # 16 s since the last commit
        Event(2000.0, "prompt", 3), Event(2001.0, "commit", 3),  # a long break: capped at 60 s
        Event(2031.0, "commit", 4),  # 30 s
    ]
    return prov, lab, events


def test_object_seconds_and_idle_cap():
    _, _, events = _setup()
    assert object_seconds(events, idle_cap=60) == {1: 4.0, 2: 16.0, 3: 60.0, 4: 30.0}


def test_round_table_exact():
    prov, lab, events = _setup()
    t = round_table(prov, lab, events, idle_cap=60)
    assert [r.round for r in t] == [0, 1, None]
    r0, r1, hand = t
    assert r0.objects == 2 and r0.seconds_per_object == 10.0 and r0.prompts_per_object == 2.0
    assert r0.accepted_share == 0.5 and r0.mean_dice == pytest.approx((1.0 + 2 * 50 / 150) / 2)
    assert r1.objects == 1 and r1.accepted_share == 1.0 and r1.mean_dice == 1.0 and r1.seconds_per_object == 60
    assert hand.objects == 1 and hand.accepted_share == 0.0 and math.isnan(hand.mean_dice)


def test_plot_rounds(tmp_path):
    prov, lab, events = _setup()
    path = plot_rounds(round_table(prov, lab, events), tmp_path / "rounds.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(MedSAMError):
        plot_rounds([], tmp_path / "none.png")


def test_bad_event():
    with pytest.raises(MedSAMError):
        Event(1.0, "click", 1)


# -- the simulated annotator (benchmarks/bench_active_learning.py) on a tiny synthetic set ----------
def _bench():
    spec = importlib.util.spec_from_file_location("bench_al", REPO / "benchmarks" / "bench_active_learning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_al"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


class SquarePredictor:
    """model = a set of object centres the fake 'knows': for those the mask is the true square;
    for the others the mask is the box's top half (Dice ~0.67: needs a correction)."""

    def __init__(self, known, labels):
        self.known, self.labels = set(known), labels

    def set_image(self, image):
        self.k = int(image[0, 0])

    def predict(self, boxes):
        lab = self.labels[self.k]
        masks = []
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            i = int(lab[(y0 + y1) // 2, (x0 + x1) // 2])
            m = lab == i
            if (self.k, i) not in self.known:
                m = m.copy()
                m[(y0 + y1) // 2 + 1:] = False
            masks.append(m)
        return np.array(masks), np.where([(self.k, int(lab[(b[1] + b[3]) // 2, (b[0] + b[2]) // 2])) in self.known
                                          for b in np.round(boxes).astype(int)], 0.9, 0.4)


def test_simulated_annotator_bookkeeping():
    bench = _bench()
    images, labels = [], []
    for k in range(2):
        img = np.full((40, 40), k, np.uint8)
        lab = np.zeros((40, 40), np.int32)
        for j in range(4):
            lab[2 + 10 * j: 8 + 10 * j, 5:15] = j + 1
        images.append(img)
        labels.append(lab)
    pool = bench.make_pool(images, labels, jitter=0.0, min_area=5)
    assert len(pool.objects) == 8
    calls = []

    def train(base, pool_, labelled):  # "learns" exactly the labelled objects
        calls.append(list(labelled))
        return base | {(pool_.objects[i][0], pool_.objects[i][1]) for i in labelled}, 0.5 + len(labelled) / 100

    known0 = frozenset({(0, 1), (0, 2)})  # the base model knows two objects
    rows, summary = bench.simulate(pool, "uncertainty", 2, 3, known0, lambda m: SquarePredictor(m, labels), train,
                                   log=lambda *_: None)
    assert [r["labelled"] for r in rows] == [3, 3] and [r["pool_left"] for r in rows] == [8, 5]
    assert [r["pool_corrections"] for r in rows] == [6, 3]
    # ranking picks unknown (uncertain) objects first: every labelled object needed a correction
    assert [r["corrected"] for r in rows] == [3, 3]
    assert not {pool.objects[i][:2] for r in rows for i in r["chosen"]} & known0
    assert calls[0] == rows[0]["chosen"] and calls[1] == rows[0]["chosen"] + rows[1]["chosen"]
    assert len(set(calls[1])) == 6 and rows[1]["heldout_dice_after"] == pytest.approx(0.56)
    # 6 corrected in the rounds; the 2 objects left are the ones the base model knew: nothing more to correct
    assert summary["corrected_in_rounds"] == 6 and summary["left_after"] == 2
    assert summary["corrections_left_after"] == 0 and summary["total_to_finish"] == 6
    rnd, _ = bench.simulate(pool, "random", 2, 4, known0, lambda m: SquarePredictor(m, labels), train,
                            log=lambda *_: None)
    assert sorted(rnd[0]["chosen"] + rnd[1]["chosen"]) == list(range(8))


def test_events_saved_in_the_provenance_and_read_back():
    from medsam_core.effort import attach_events, saved_events

    prov = Provenance()
    events = [Event(1.0, "prompt", 3), Event(2.0, "commit", 3)]
    assert attach_events(prov, events) is prov and prov.events == [(1.0, "prompt", 3), (2.0, "commit", 3)]
    back = Provenance.from_dict(prov.to_dict())
    assert saved_events(back) == events
    back.events.append((3.0, "paint", 4))  # a kind this version does not know: skipped, not fatal
    assert saved_events(back) == events
