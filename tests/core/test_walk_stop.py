"""The evidence count that cuts a walk's direction, and the choice among the decoder's outputs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsam_core import walk_volume
from medsam_core.walk_stop import Evidence, Stop, StopRules

from .volume_fakes import FakePredictor, bbox, ellipsoid, render


def _walk_volume_rules(*args, **kw):
    """The per-slice stop rules alone (the orthogonal-plane extent prior off: test_walk_extent.py tests it)."""
    return walk_volume(*args, **{"extent_prior": False, **kw})

def _feed(rules, verdicts, start=1):
    ev, kept = Evidence(rules), []
    for i, why in enumerate(verdicts):
        got, stop = ev.add(start + i, why, empty=why == "vanished")
        kept += got
        if stop is not None:
            return kept, stop
    return kept, ev.finish()


def test_two_trips_in_a_row_end_the_walk_at_the_first_with_patience_2():
    kept, stop = _feed(StopRules(patience=2), [None, "a", None, "b", "c", None])
    assert kept == [1, 2, 3] and stop == Stop("b", 4)


def test_good_slices_after_bad_ones_win_them_back():
    """Patience 3 (default): two bad slices then two good ones are all kept; the direction ends
    once the count is 3 below its maximum, cut just after the maximum."""
    kept, stop = _feed(StopRules(), [None, "a", "b", None, None, "c", "d", "e", None])
    assert kept == [1, 2, 3, 4, 5] and stop == Stop("c", 6)


def test_trip_weight_and_an_empty_mask():
    kept, stop = _feed(StopRules(patience=2, trip_weight=2.0), [None, "a", None, None])
    assert kept == [1] and stop == Stop("a", 2)  # one bad slice costs 2: it ends the walk at once
    kept, stop = _feed(StopRules(), [None, "a", "vanished"])
    assert kept == [1] and stop == Stop("a", 2)  # an empty mask ends at once; the held slice goes too
    kept, stop = _feed(StopRules(), [None, None])
    assert kept == [1, 2] and stop is None


def test_walk_keeps_a_short_dip_and_drops_the_tail():
    truth = ellipsoid()
    vol = render(truth)
    vol[23:25][truth[23:25]] = 150  # two slices the model is unsure of, then good ones again
    pred = FakePredictor(score_fn=lambda im: 0.2 if im.max() == 150 else 0.9)
    res = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, min_area_ratio=0.0)
    assert {23, 24} <= set(res.slices) and res.stops["up"].reason == "vanished"
    vol[23:][truth[23:]] = 150  # unsure to the end: cut before the first unsure slice
    res = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, min_area_ratio=0.0)
    assert res.stops["up"] == Stop("IoU fell to 0.20", 23) and max(res.slices) == 22
    assert all(z not in res.masks for z in (23, 24, 25))


def test_output_anchor_keeps_the_multimask_output_most_like_the_start_slice():
    """The one-mask output takes a bright decoy inside the box with the object; one of the
    multimask outputs is the object alone. ``output="anchor"`` keeps that one (it is most like the
    start slice's mask); the rules still see the one-mask output. ``output="single"`` keeps the
    decoy."""
    truth = ellipsoid()
    box = bbox(truth[20], 2)
    vol = render(truth)
    x0, y0 = int(box[0]), int(box[1])
    vol[22:27, y0 : y0 + 4, x0 : x0 + 4] = 200

    def parts(mask):
        lab, n = ndimage.label(mask)
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        return [lab == 1 + int(np.argmax(sizes)), mask, np.zeros_like(mask)]

    kw = dict(min_area_ratio=0.0, max_growth=None, min_agree=0.0)
    res = walk_volume(FakePredictor(multimask_fn=parts), vol, box, 20, output="anchor", **kw)
    assert all(np.array_equal(res.masks[z], truth[z]) for z in range(22, 27))
    assert res.features[24]["area"] == truth[24].sum() + 16  # the rules saw the one-mask output
    single = walk_volume(FakePredictor(multimask_fn=parts), vol, box, 20, output="single", **kw)
    assert single.masks[24].sum() == truth[24].sum() + 16
