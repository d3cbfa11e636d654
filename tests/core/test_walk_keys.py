"""Key boxes of a 3D walk (walk_keys): the prompt between and past keys, the tip a narrowing key box
implies, and a correction that does not run on past the object's end (synthetic volumes, fake
predictor; one real-model check on cells3d)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import walk_volume
from medsam_core.errors import PromptError
from medsam_core.walk_keys import interpolate, past_key, tip_distance

from .volume_fakes import FakePredictor, bbox, ellipsoid, render

LEGACY = {"key_shape": "linear", "key_past": "hold", "key_move": False, "key_reach": None, "key_extend": True,
          "extent_cap": None}



def _walk_volume_rules(*args, **kw):
    """The per-slice stop rules alone (the orthogonal-plane extent prior off: test_walk_extent.py tests it)."""
    return walk_volume(*args, **{"extent_prior": False, **kw})

def _area(box):
    return float((box[2] - box[0]) * (box[3] - box[1]))


def test_between_a_wide_start_and_a_narrow_key_the_box_follows_an_ellipse():
    keys = {10: np.array([0, 0, 40, 40.0]), 20: np.array([10, 10, 30, 30.0])}
    for z in (12, 15, 18):
        t = (z - 10) / 10
        box = interpolate(keys, z, 10, "ellipse")
        assert _area(box) == pytest.approx(1600 - (1600 - 400) * t**2)  # A(t) = Ai - (Ai - Ao) t^2
        assert _area(box) > _area(interpolate(keys, z, 10, "linear"))  # a linear blend is too small there
        np.testing.assert_allclose((box[:2] + box[2:]) / 2, [20, 20])
    np.testing.assert_array_equal(interpolate(keys, 20, 10, "ellipse"), keys[20])
    np.testing.assert_allclose(interpolate(keys, 15, 10, "linear"), [5, 5, 35, 35])
    assert interpolate(keys, 25, 10, "ellipse") is None
    # a key as large as the start says nothing about a tip: linear blend, no tip
    grow = {10: keys[10], 20: np.array([5, 0, 50, 40.0])}
    np.testing.assert_allclose(interpolate(grow, 15, 10, "ellipse"), interpolate(grow, 15, 10, "linear"))
    assert tip_distance(grow[10], grow[20]) is None
    # the start may be above the key: the blend always starts from the key nearer the start
    down = {30: keys[10], 20: keys[20]}
    np.testing.assert_allclose(interpolate(down, 28, 30, "ellipse"), interpolate(keys, 12, 10, "ellipse"))


def test_past_the_last_key_hold_move_taper_and_the_tip():
    keys = {10: np.array([0, 0, 40, 40.0]), 20: np.array([10, 10, 30, 30.0])}
    tip = tip_distance(keys[10], keys[20])
    assert tip == pytest.approx(np.sqrt(1600 / 1200))  # segments (10 slices) from the start: slice 21.5
    box, beyond = past_key(keys, 10, 21, "hold", reach=1.0)
    np.testing.assert_array_equal(box, keys[20])
    assert not beyond
    assert past_key(keys, 10, 22, "hold", reach=1.0)[1]
    assert not past_key(keys, 10, 22, "hold", reach=1.2)[1] and past_key(keys, 10, 24, "hold", reach=1.2)[1]
    assert not past_key(keys, 10, 40, "hold", reach=None)[1]
    tapered, _ = past_key(keys, 10, 21, "taper")
    assert _area(tapered) == pytest.approx(1600 - 1200 * 1.1**2)
    # move: the centre goes on along the line through the last two keys, at most one segment further
    shifted = {10: np.array([0, 0, 40, 40.0]), 20: np.array([10, 0, 50, 40.0])}
    np.testing.assert_allclose(past_key(shifted, 10, 25, "hold", move=True)[0], [15, 0, 55, 40])
    np.testing.assert_allclose(past_key(shifted, 10, 40, "hold", move=True)[0], [20, 0, 60, 40])
    np.testing.assert_allclose(past_key(shifted, 10, 25, "hold")[0], shifted[20])
    # going down: the same with the keys mirrored
    np.testing.assert_allclose(past_key({10: shifted[10], 0: shifted[20]}, 10, -5 + 0, "hold", move=True)[0],
                               [15, 0, 55, 40])


def _tip_and_tail(tail=True):
    """An ellipsoid (slices 10-30) whose up tip sits on a bright column running on to the end of the
    stack (tissue past the object's end that a box held there keeps finding)."""
    truth = ellipsoid(shape=(60, 64, 80))
    vol = render(truth)
    if tail:
        yy, xx = np.mgrid[:64, :80]
        vol[31:, (yy - 32) ** 2 + (xx - 40) ** 2 <= 16] = 200
    return truth, vol


def test_a_key_box_near_the_tip_stops_the_correction_at_the_end_implied_by_the_keys():
    truth, vol = _tip_and_tail()
    start = bbox(truth[20], 1)
    # (without the extent cap: the planes would end it past slice 38, where they see the column end)
    first = walk_volume(FakePredictor(), vol, start, 20, min_area_ratio=0.0, extent_cap=None)
    assert max(first.slices) == 59  # the one-box walk runs up the column to the end of the stack
    key = {28: bbox(truth[28], 1)}  # the user's correction: a box on the narrow slice near the tip
    old = walk_volume(FakePredictor(), vol, start, 20, key_boxes=key, previous=first, bound_by_keys=False,
                      min_area_ratio=0.0, **LEGACY)
    assert max(old.slices) == 59  # the key box held past slice 28 finds the column on every slice
    fixed = walk_volume(FakePredictor(), vol, start, 20, key_boxes=key, previous=first, bound_by_keys=False,
                        min_area_ratio=0.0)
    tip = 20 + 8 * tip_distance(start, key[28])  # 30.9: the truth ends at 30
    assert 30 <= max(fixed.slices) <= int(1.2 * (tip - 20)) + 20 < 35
    assert fixed.stops["up"].reason in ("tip from key boxes", "area grew")
    assert fixed.stops["down"] is first.stops["down"]  # the other side is kept
    up = [z for z in fixed.slices if 20 < z <= 30]
    for z in up:  # between the start and the key the prompt covers the whole cross-section
        assert fixed.masks[z].sum() == truth[z].sum()
    linear = walk_volume(FakePredictor(), vol, start, 20, key_boxes=key, previous=first, bound_by_keys=False,
                         min_area_ratio=0.0, key_shape="linear")
    cut = [z for z in range(21, 28) if linear.masks[z].sum() < truth[z].sum()]
    assert cut  # ... where the linear blend of the two boxes cuts it off


def test_a_key_inside_the_walked_span_keeps_the_previous_end():
    truth = ellipsoid()
    vol = render(truth)
    vol[24:][truth[24:]] = 150
    pred = FakePredictor(score_fn=lambda im: 0.3 if im.max() == 150 else 0.9)
    kw = {"min_area_ratio": 0.0, "patience": 2, "bound_by_keys": False}
    first = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, **kw)
    assert first.stops["up"].slice == 24 and max(first.slices) == 23
    key = {22: bbox(truth[22], 2)}
    fixed = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, key_boxes=key, previous=first, **kw)
    assert fixed.rewalked == 3 and max(fixed.slices) == 23  # 21-23 re-walked, nothing past the old end
    assert fixed.stops["up"] == first.stops["up"]
    free = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, key_boxes=key, previous=first, key_extend=True, **kw)
    assert free.rewalked > 3  # it decodes past the old end before its own rules stop it
    # a key beyond the old end is walked to, and past
    far = _walk_volume_rules(pred, vol, bbox(truth[20], 2), 20, key_boxes={26: bbox(truth[26], 2)}, previous=first, **kw)
    assert max(far.slices) >= 26


def test_without_keys_the_walk_is_what_it_was():
    truth, vol = _tip_and_tail(tail=False)
    box = bbox(truth[20], 2)
    new = walk_volume(FakePredictor(), vol, box, 20)
    old = walk_volume(FakePredictor(), vol, box, 20, **LEGACY)
    assert new.stops == old.stops and sorted(new.masks) == sorted(old.masks)
    for z in new.masks:
        np.testing.assert_array_equal(new.masks[z], old.masks[z])
        np.testing.assert_array_equal(new.boxes[z], old.boxes[z])


@pytest.mark.parametrize("bad", [{"key_shape": "spline"}, {"key_past": "grow"}, {"key_reach": 0.5},
                                 {"key_reach": "far"}])
def test_bad_key_options_are_refused(bad):
    truth = ellipsoid()
    with pytest.raises(PromptError):
        walk_volume(FakePredictor(), render(truth), bbox(truth[20], 2), 20, **bad)


@pytest.mark.slow
def test_real_model_correction_at_a_nucleus_tip(lite_model, cells3d):
    """cells3d nucleus 8: the one-box walk runs up to the end of the stack; a key box on its last
    slice (as bench_3d's correction) ends the up side there instead of running on (bench, whole
    stack: 0.506 -> 0.613 Dice; the linear blend + held key box reached 0.587)."""
    from medsam_core import Predictor
    from medsam_core.metrics import dice

    image, labels, spacing = cells3d
    image, obj = image[25:], labels[25:] == 8  # slices 25-59: the nucleus's up side and 8 slices below its start
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    z0 = int(np.argmax(obj.sum(axis=(1, 2))))
    pred = Predictor(lite_model)
    # the key-box rules alone: with the extent prior (default) this nucleus no longer overruns at all
    first = walk_volume(pred, image, bbox(obj[z0], 3), z0, spacing=spacing, extent_prior=False)
    key = {int(zs[-1]): bbox(obj[zs[-1]], 3)}
    fixed = walk_volume(pred, image, bbox(obj[z0], 3), z0, spacing=spacing, key_boxes=key, previous=first,
                        bound_by_keys=False, extent_prior=False)
    assert max(first.slices) > zs[-1] + 5
    assert max(fixed.slices) <= zs[-1] + 2
    assert dice(fixed.volume(), obj) >= dice(first.volume(), obj) + 0.08


def test_a_box_carried_past_a_key_at_the_image_edge_stays_a_valid_prompt():
    """A small key box at the image's edge: past it the centre is carried on along the line of the
    keys, out of the image, and the tapered box shrinks under a pixel. The walk moves such a box
    back inside (at least 2 px a side) instead of failing with the predictor's PromptError."""
    truth = np.zeros((40, 64, 64), bool)
    truth[10:21, 28:36, 36:44] = True
    truth[21, 28:36, 46:54] = True  # the object swings right, into the image's edge
    truth[22:30, 28:36, 56:64] = True
    vol = render(truth)
    start = bbox(truth[20], 1)
    key = {22: bbox(truth[22], 1)}  # at the right edge: the line of the keys runs out of the image
    box, _ = past_key({20: start, **key}, 20, 24, "taper", move=True)
    assert box[0] > 63  # the carried-on box lies wholly outside the image
    from medsam_core.preprocess import check_boxes

    class Checking(FakePredictor):  # refuses boxes as the real Predictor does
        def predict(self, boxes, **kw):
            check_boxes(boxes, self.image.shape)
            return super().predict(boxes, **kw)

    res = walk_volume(Checking(), vol, start, 20, key_boxes=key, bound_by_keys=False, key_past="taper",
                      min_area_ratio=0.0, extent_prior=False)
    assert max(res.slices) >= 23  # followed on along the edge, past the key
    for b in res.boxes.values():  # every prompt is one the predictor takes: >= 1 px a side once clipped
        clipped = np.clip(b, 0, 63)
        assert np.all(clipped[2:] - clipped[:2] >= 1), b
    from medsam_core.prompts import fit_box as _fit_box

    np.testing.assert_array_equal(_fit_box([254.3, 23.2, 255.3, 29.2], (256, 256)), [253.0, 23.2, 255.0, 29.2])
    np.testing.assert_array_equal(_fit_box([-5.0, 10, 100, 50], (256, 256)), [-5.0, 10, 100, 50])  # as it was


def test_the_cross_check_box_at_the_image_edge_stays_a_valid_prompt():
    """A structure cut by the image's right edge that thins to one column there, started with a
    tight box (half a pixel of slack): the cross-check walk's box (its mask's box + that slack) is
    under a pixel wide once clipped, which the real Predictor refuses. The walk must fit it as it
    fits its own boxes, not end with a PromptError (found on cells3d with a 1-px box padding)."""
    from medsam_core.preprocess import check_boxes

    truth = np.zeros((40, 64, 64), bool)
    for z in range(8, 33):
        w = max(1, 10 - 2 * abs(z - 20))  # 10 columns wide at slice 20, one column from 5 slices away
        truth[z, 20:31, 64 - w:] = True
    vol = render(truth)

    class Checking(FakePredictor):  # refuses boxes as the real Predictor does
        def predict(self, boxes, **kw):
            check_boxes(boxes, self.image.shape)
            return super().predict(boxes, **kw)

    res = walk_volume(Checking(), vol, bbox(truth[20], 0.5), 20, min_area_ratio=0.0, extent_prior=False)
    assert min(res.slices) <= 14 and max(res.slices) >= 26  # walked on into the one-column slices
    assert res.volume()[20].sum() == truth[20].sum()
