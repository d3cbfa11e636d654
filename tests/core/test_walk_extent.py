"""The extent prior read on orthogonal planes (medsam_core.walk_extent)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.errors import PromptError
from medsam_core.walk import Stop
from medsam_core.walk_extent import Extent, deepest_point, estimate_extent, orthogonal_planes

from .volume_fakes import FakePredictor, bbox, ellipsoid, render


def _start(truth, z, pad=3.0):
    return truth[z], bbox(truth[z], pad)


def test_a_generous_box_reads_the_ellipsoids_ends_on_both_planes():
    truth = ellipsoid()  # z 10..30 (radius 10.5 about 20)
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    mask, box = _start(truth, 20)
    pred = FakePredictor()
    ext = estimate_extent(pred, render(truth), mask, box, 20, reach=3.0, iterations=0)
    assert (ext.lo, ext.hi) == (zs[0], zs[-1])
    assert [p.axis for p in ext.planes] == ["x", "y"]
    assert all((p.lo, p.hi) == (zs[0], zs[-1]) for p in ext.planes)
    assert pred.images == 2  # one image per plane: two encodes
    assert ext.depth(20, 1) == zs[-1] - 20 and ext.depth(20, -1) == 20 - zs[0]


def test_re_prompting_grows_a_short_first_box_to_the_ends():
    truth = ellipsoid()
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    mask, box = _start(truth, 20)
    short = estimate_extent(FakePredictor(), render(truth), mask, box, 20, reach=0.2, iterations=0)
    assert short.lo > zs[0] and short.hi < zs[-1]  # the fake fills its box: the box's rows only
    grown = estimate_extent(FakePredictor(), render(truth), mask, box, 20, reach=0.2, iterations=6)
    assert (grown.lo, grown.hi) == (zs[0], zs[-1])


def test_planes_pass_through_the_masks_deepest_point_and_are_resampled_to_square_pixels():
    truth = ellipsoid()
    vol = render(truth)
    assert deepest_point(truth[20]) == (32, 40)
    planes = orthogonal_planes(vol, truth[20], spacing=(2.0, 1.0, 1.0))
    (ax, at, plane, zoom, _), (ay, at_y, plane_y, _, _) = planes
    assert (ax, at, ay, at_y) == ("x", 32, "y", 40)
    assert plane.shape == (80, 80) and zoom == 2.0 and plane_y.shape == (80, 64)
    assert orthogonal_planes(vol, truth[20])[0][2].shape == (40, 80)  # isotropic: the plane as is


def test_thick_slices_map_the_ends_back_to_slice_indices():
    """A 2 mm-slice ellipsoid (radius 5.25 slices = 10.5 mm): the planes are stretched 2x before
    the model sees them, and the ends come back as slice indices."""
    truth = ellipsoid(shape=(20, 64, 80), center=(10, 32, 40), radii=(5.25, 15, 20))
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    mask, box = _start(truth, 10)
    ext = estimate_extent(FakePredictor(), render(truth), mask, box, 10, spacing=(2.0, 1.0, 1.0), reach=3.0)
    assert abs(ext.lo - zs[0]) <= 1 and abs(ext.hi - zs[-1]) <= 1
    assert all(p.zoom == 2.0 for p in ext.planes)


def test_combine_picks_the_shorter_or_longer_plane_per_end():
    """A block with a tail on one side: the x-plane (the row through the deepest point) runs
    through the tail, the y-plane (the column) misses it, so the two planes disagree on the end."""
    truth = np.zeros((30, 40, 40), bool)
    truth[8:20, 10:30, 10:30] = True
    truth[20:25, 10:30, 10:14] = True  # the tail: slices 20-24, only near x = 10..13
    mask, box = _start(truth, 12)
    yc, xc = deepest_point(mask)
    assert truth[22, yc, 11] and not truth[22, :, xc].any()
    ext = {
        c: estimate_extent(FakePredictor(), render(truth), mask, box, 12, combine=c, reach=3.0)
        for c in ("min", "max", "mean")
    }
    assert [(p.axis, p.lo, p.hi) for p in ext["min"].planes] == [("x", 8, 24), ("y", 8, 19)]
    assert (ext["min"].lo, ext["min"].hi) == (8, 19)
    assert (ext["max"].lo, ext["max"].hi) == (8, 24)
    assert (ext["mean"].lo, ext["mean"].hi) == (8, 22)


def test_nothing_found_and_bad_input():
    truth = ellipsoid()
    mask, box = _start(truth, 20)
    blank = np.full(truth.shape, 20, np.uint16)  # nothing bright: the fake finds no mask anywhere
    ext = estimate_extent(FakePredictor(), blank, mask, box, 20)
    assert ext == Extent(None, None, ext.planes) and ext.depth(20, 1) is None
    with pytest.raises(PromptError, match="empty"):
        estimate_extent(FakePredictor(), render(truth), np.zeros_like(mask), box, 20)
    with pytest.raises(PromptError, match="side"):
        estimate_extent(FakePredictor(), render(truth), mask, box, 20, side="diagonal")
    with pytest.raises(PromptError, match="reach"):
        estimate_extent(FakePredictor(), render(truth), mask, box, 20, reach=0)


def _real_start(lite_model, cells3d, nucleus):
    """The bundled LiteMedSAM (torch encoder) on a cells3d nucleus's largest slice: (predictor, volume,
    spacing, window, slice, reference box + 3 px, start mask, the nucleus's slices)."""
    import medsam_core
    from medsam_core import EmbeddingCache, Intensity, Predictor

    vol, labels, spacing = cells3d
    obj = labels == nucleus
    z = int(np.argmax(obj.sum(axis=(1, 2))))
    pred = Predictor(lite_model, cache=EmbeddingCache(max_bytes=2**28), encoder_backend="torch")
    intensity = medsam_core.volume_intensity(vol, Intensity(mode="auto"))
    pred.set_image(vol[z], intensity=intensity)
    box = bbox(obj[z], 3.0)
    mask = pred.predict(boxes=box[None])[0][0]
    return pred, vol, spacing, intensity, z, box, mask, np.flatnonzero(obj.any(axis=(1, 2)))


@pytest.mark.slow
def test_real_model_reads_a_cells3d_nucleus_extent(lite_model, cells3d):
    """Bundled LiteMedSAM on a cells3d nucleus: the two planes put both ends within a few slices of
    the reference, for two encodes (a second estimate through the same planes encodes nothing)."""
    pred, vol, spacing, intensity, z, box, mask, zs = _real_start(lite_model, cells3d, 3)
    before = pred.encoder_calls
    ext = estimate_extent(pred, vol, mask, box, z, spacing, intensity)
    assert pred.encoder_calls - before == 2
    assert abs(ext.lo - zs[0]) <= 4 and abs(ext.hi - zs[-1]) <= 4, (ext, zs[0], zs[-1])
    estimate_extent(pred, vol, mask, box, z, spacing, intensity, reach=3.0)
    assert pred.encoder_calls - before == 2


@pytest.mark.slow
def test_real_planes_agree_on_the_end_a_one_box_walk_overran(lite_model, cells3d):
    """cells3d nucleus 9 (slices 20-47): the walk without the cap followed out-of-focus light below it
    to slice 0. Both real planes see its lower end inside their boxes and agree, so the cap ends the
    walk a few slices past the nucleus."""
    pred, vol, spacing, intensity, z, box, mask, zs = _real_start(lite_model, cells3d, 9)
    ext = estimate_extent(pred, vol, mask, box, z, spacing, intensity)
    assert not any(p.at_box_edge(-1) for p in ext.planes)
    cap = ext.cap(z, -1)
    assert cap is not None and zs[0] - 8 <= z - cap <= zs[0], (cap, z, zs[0])


def test_guard_passes_the_slices_inside_half_the_depth_and_makes_lost_track_relative():
    from medsam_core.walk_extent import ExtentGuard

    g = ExtentGuard(depth=4)  # guards slices 1-2, calibrates on them
    assert (g.inside, g.window) == (2, 2)
    seq = [(0.99, None), (0.95, "contrast faded"), (0.48, None), (0.70, None), (0.70, "area grew")]
    got = [g.verdict(k, {"agree": a, "area": 10}, why) for k, (a, why) in enumerate(seq, 1)]
    # inside: a tripping rule is overruled; past it: under 0.6 x median(0.99, 0.95) = 0.58 trips
    assert got == [None, None, "lost track (0.48)", None, "area grew"]
    assert g.verdict(6, {"agree": 0.2, "area": 0}, "vanished") == "vanished"
    inside = ExtentGuard(depth=10)
    assert (
        inside.verdict(1, {"agree": 0.5, "area": 0}, "vanished") == "vanished"
    )  # an empty mask still ends it


def test_guard_without_an_estimate_calibrates_on_the_first_slices_only():
    from medsam_core.walk_extent import ExtentGuard

    g = ExtentGuard(depth=None, window=3)
    assert (g.inside, g.window) == (0, 3)
    got = [g.verdict(k, {"agree": a, "area": 10}, None) for k, a in enumerate([0.9, 0.5, 0.8, 0.45, 0.2], 1)]
    # the slice itself counts while the window fills: 0.6 x median(0.9, 0.5) = 0.42 (0.5 passes);
    # from the 4th slice on, 0.6 x median(0.9, 0.5, 0.8) = 0.48
    assert got == [None, None, None, "lost track (0.45)", "lost track (0.20)"]


def test_walk_with_the_extent_prior_reads_the_planes_and_finds_the_ends():
    """walk_volume(..., extent_prior=True): two more images (the planes), the estimate on the
    result, and the ellipsoid's exact extent (the guard does not keep slices past the end)."""
    from medsam_core import walk_volume

    truth = ellipsoid()
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    mask, box = _start(truth, 20)
    plain, prior = FakePredictor(), FakePredictor()
    a = walk_volume(plain, render(truth), box, 20, extent_prior=False)
    b = walk_volume(prior, render(truth), box, 20)  # the default
    assert prior.images == plain.images + 2
    assert (b.extent.lo, b.extent.hi) == (zs[0], zs[-1])
    assert b.slices == a.slices == list(range(zs[0], zs[-1] + 1))


def test_the_planes_are_progress_steps_counted_in_the_total():
    """propagate yields the start slice, then one "plane" step per orthogonal plane (each an encode),
    then the walked slices; every step's total counts the planes, so a bar does not hold while the
    planes are encoded."""
    from medsam_core import propagate

    truth = ellipsoid()
    mask, box = _start(truth, 20)
    pred = FakePredictor()
    gen = propagate(pred, render(truth), box, 20)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    stages = [s.stage for s in steps]
    assert stages[:3] == ["slice", "plane", "plane"] and set(stages[3:]) == {"slice"}
    assert [s.z for s in steps[:3]] == [20, 20, 20] and all(s.mask is steps[0].mask for s in steps[:3])
    assert all(s.total >= 3 for s in steps[:3]) and steps[-1].total >= len(steps)
    assert len(steps) == len(result.slices) + 2  # every kept slice once, and the two planes
    plain = list(propagate(FakePredictor(), render(truth), box, 20, extent_prior=False))
    assert {s.stage for s in plain} == {"slice"} and len(plain) == len(result.slices)


def test_cancel_between_the_planes_stops_before_the_second_encode():
    from medsam_core import propagate
    from medsam_core.errors import CancelledError

    truth = ellipsoid()
    mask, box = _start(truth, 20)
    pred = FakePredictor()
    flag = {"stop": False}
    gen = propagate(pred, render(truth), box, 20, cancel=lambda: flag["stop"])
    assert next(gen).stage == "slice" and next(gen).stage == "plane"
    images = pred.images  # the start slice and the first plane
    flag["stop"] = True
    with pytest.raises(CancelledError):
        next(gen)
    assert pred.images == images  # the second plane was not encoded


def _tailed():
    """The ellipsoid (z 10..30) with a bright tail below it (z 0..12) off both planes' lines: the
    walk's anchored box keeps finding the tail, the planes see the ellipsoid's ends."""
    truth = ellipsoid()
    zz, yy, xx = np.ogrid[:40, :64, :80]
    tail = (zz <= 12) & (((yy - 22) ** 2 + (xx - 30) ** 2) <= 36)
    return truth, render(truth | tail)


def test_a_walk_ends_past_an_end_both_planes_agree_on():
    from medsam_core import walk_volume

    truth, vol = _tailed()
    box = bbox(truth[20], 3)
    free = walk_volume(FakePredictor(), vol, box, 20, extent_cap=None)
    assert free.slices[0] == 0 and free.stops["down"].reason == "end of volume"  # the tail, to the end
    capped = walk_volume(FakePredictor(), vol, box, 20)  # the default: extent_cap=0.5
    assert (capped.extent.lo, capped.extent.hi) == (10, 30)
    # 10 slices to the agreed end, then max(0.5 x 10, 3) = 5 more: slices 5..30 kept
    assert capped.stops["down"] == Stop("past the estimated end", 4) and capped.slices[0] == 5
    assert capped.stops["up"] == free.stops["up"] and capped.slices[-1] == free.slices[-1] == 30
    # a key box past the estimated end says the object is there: no cap on that side
    keyed = walk_volume(FakePredictor(), vol, box, 20, key_boxes={2: bbox(vol[2] > 100, 2)}, bound_by_keys=False)
    assert keyed.slices[0] == 0


def test_the_cap_needs_both_planes_to_agree():
    from medsam_core.walk_extent import PlaneEstimate

    def extent(lo, hi, *ends):  # the combined ends, then each plane's
        planes = [PlaneEstimate(a, 0, e0, e1, 0.9, 1.0, ((0.0, 0.0, 9.0, 39.0),))  # ends inside the box
                  for a, (e0, e1) in zip("xy", ends, strict=False)]
        return Extent(lo, hi, tuple(planes))

    agree = extent(10, 30, (10, 30), (11, 31))
    assert agree.cap(20, 1) == 10 + 5 and agree.cap(20, -1) == 10 + 5  # depth 10, then max(0.5 x 10, 3)
    assert extent(10, 26, (10, 30), (10, 21)).cap(20, 1) is None  # the planes disagree on the upper end
    assert extent(10, 26, (10, 30), (10, 21)).cap(20, -1) == 10 + 5  # ... not on the lower one
    assert extent(18, 22, (18, 22), (18, 22)).cap(20, 1) == 2 + 3  # at least 3 slices past a near end
    edge = Extent(10, 30, tuple(PlaneEstimate(a, 0, 10, 30, 0.9, 1.0, ((0.0, 5.0, 9.0, 30.0),)) for a in "xy"))
    assert edge.cap(20, 1) is None and edge.cap(20, -1) == 15  # the upper end is where the box ended
    assert extent(10, 30, (10, 30)).cap(20, 1) is None  # one plane alone is no agreement
    assert extent(10, 30, (None, None), (10, 30)).cap(20, 1) is None


@pytest.mark.parametrize("last", [False, True])
def test_a_small_structure_on_the_first_or_last_slice_gets_valid_plane_boxes(last):
    """Slices much thinner than the pixels (0.5 mm at 2.5 mm) and a 2 x 2 px structure on the
    volume's first or last slice: the extent plane's box is then under a pixel high once clipped,
    which the real Predictor refuses. The walk must fit it (found by fuzzing walk_volume)."""
    from medsam_core import walk_volume
    from medsam_core.preprocess import check_boxes

    class Checking(FakePredictor):  # refuses boxes as the real Predictor does
        def predict(self, boxes, **kw):
            check_boxes(boxes, self.image.shape)
            return super().predict(boxes, **kw)

    z = 19 if last else 0
    truth = np.zeros((20, 32, 32), bool)
    truth[z, 10:12, 10:12] = True
    res = walk_volume(Checking(), render(truth), bbox(truth[z], 1), z, spacing=(0.5, 2.5, 2.5))
    assert res.slices == [z] and res.extent is not None
    assert np.array_equal(res.volume(), truth)
