"""ROI mode: crop planning, paste-back geometry at image borders, intensity window, lazy inputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medsam_core.errors import CancelledError, ImageError, PromptError
from medsam_core.preprocess import Intensity
from medsam_core.roi import (
    ROI_MAX_MODEL_PX,
    ROI_MIN_SIDE,
    choose_roi,
    crop_window,
    global_intensity,
    plan_rois,
    segment_large,
)
from medsam_core.segment import paste_masks

from .roi_fakes import BoxFillPredictor, RecordingArray


def box_filled(shape, boxes):
    """Reference labels: box i filled with id i+1, earlier boxes win (segment_boxes' rule)."""
    labels = np.zeros(shape, np.uint32)
    masks = np.zeros((len(boxes), *shape), bool)
    for m, (x0, y0, x1, y1) in zip(masks, np.asarray(boxes, int), strict=True):
        m[y0 : y1 + 1, x0 : x1 + 1] = True
    paste_masks(labels, masks, range(1, len(boxes) + 1))
    return labels


def ramp(shape=(700, 1000)):
    return (np.arange(shape[0] * shape[1]) % 251 + 1).reshape(shape).astype(np.uint16)


def test_crop_window_centred_and_shifted_inside():
    assert crop_window((490, 290, 509, 309), 256, (1000, 1000)) == (172, 428, 372, 628)
    assert crop_window((0, 0, 10, 10), 256, (1000, 1000)) == (0, 256, 0, 256)  # top-left corner
    assert crop_window((990, 980, 999, 999), 256, (1000, 1000)) == (744, 1000, 744, 1000)  # bottom-right
    assert crop_window((10, 10, 20, 20), 256, (100, 1000)) == (0, 100, 0, 256)  # short axis taken whole


BORDER_BOXES = np.array([
    [0, 0, 15, 12],  # top-left corner
    [984, 0, 999, 20],  # top-right corner
    [0, 680, 22, 699],  # bottom-left corner
    [975, 690, 999, 699],  # bottom-right corner
    [500, 0, 530, 9],  # top edge
    [490, 685, 512, 699],  # bottom edge
    [0, 340, 7, 360],  # left edge
    [990, 330, 999, 371],  # right edge
    [480, 330, 510, 361],  # centre
], float)


def test_roi_paste_back_is_exact_at_every_border():
    shape = (700, 1000)
    pred = BoxFillPredictor()
    labels = segment_large(pred, ramp(shape), BORDER_BOXES, mode="roi")
    np.testing.assert_array_equal(labels, box_filled(shape, BORDER_BOXES))
    assert all(s == (ROI_MIN_SIDE, ROI_MIN_SIDE) for s in pred.shapes)  # full squares inside the image
    assert pred.encoder_calls == len(BORDER_BOXES)  # far apart: one crop each


def test_roi_equals_whole_mode_with_exact_predictor():
    shape = (700, 1000)
    image = ramp(shape)
    whole = segment_large(BoxFillPredictor(), image, BORDER_BOXES, mode="whole")
    roi = segment_large(BoxFillPredictor(), image, BORDER_BOXES, mode="roi")
    np.testing.assert_array_equal(roi, whole)


def test_overlapping_boxes_in_different_crops_keep_the_earlier_box():
    shape = (2000, 2000)
    # box 0 is large (own crop); box 1 is small and overlaps it; box 2 is far away
    boxes = np.array([[100, 100, 700, 700], [650, 650, 720, 720], [1800, 1800, 1850, 1850]], float)
    labels = segment_large(BoxFillPredictor(), ramp(shape), boxes, mode="roi")
    np.testing.assert_array_equal(labels, box_filled(shape, boxes))
    boxes_rev = boxes[[1, 0, 2]]
    labels = segment_large(BoxFillPredictor(), ramp(shape), boxes_rev, mode="roi")
    np.testing.assert_array_equal(labels, box_filled(shape, boxes_rev))


def test_crowded_boxes_share_crops():
    rng = np.random.default_rng(0)
    xy = rng.uniform(300, 500, size=(100, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(8, 20, size=(100, 2))], axis=1))
    groups = plan_rois(boxes, (2000, 2000))
    assert sorted(np.concatenate([g.indices for g in groups]).tolist()) == list(range(100))
    assert len(groups) <= 25, len(groups)  # 100 boxes, far fewer encodes
    for g in groups:  # every member lies inside its crop
        y0, y1, x0, x1 = g.window
        b = boxes[g.indices]
        assert (b[:, 0] >= x0).all() and (b[:, 2] < x1).all() and (b[:, 1] >= y0).all() and (b[:, 3] < y1).all()
    pred = BoxFillPredictor()
    labels = segment_large(pred, ramp((2000, 2000)), boxes, mode="roi")
    assert pred.encoder_calls == len(groups)
    np.testing.assert_array_equal(labels, box_filled((2000, 2000), boxes))


def test_large_box_gets_a_larger_crop_with_context():
    boxes = np.array([[100, 100, 499, 399]], float)  # 400 px wide
    (group,) = plan_rois(boxes, (2000, 2000))
    y0, y1, x0, x1 = group.window
    assert y1 - y0 == x1 - x0 == 800
    assert x0 <= 100 - 100 and x1 >= 500 + 100 - 100  # 25 % context, clipped at the border


def test_choose_roi_rule():
    small, large = 20, int(np.ceil(ROI_MAX_MODEL_PX * 2048 / 256)) + 1
    boxes = np.array([[0, 0, small - 1, small - 1], [0, 0, large - 1, large - 1]], float)
    # 2048 image: 20 px -> 2.5 model px (roi); the large box stays above the threshold (whole)
    np.testing.assert_array_equal(choose_roi(boxes, (2048, 2048)), [True, False])
    np.testing.assert_array_equal(choose_roi(boxes[:1], (ROI_MIN_SIDE, ROI_MIN_SIDE)), [False])  # one crop
    # the model already sees a <= 256 px image at full resolution: a crop would only upsample
    np.testing.assert_array_equal(choose_roi(boxes[:1], (256, 217)), [False])
    np.testing.assert_array_equal(choose_roi(boxes[:1], (257, 217)), [True])  # 20 px -> 19.9 model px
    np.testing.assert_array_equal(choose_roi(boxes, (2048, 2048), "whole"), [False, False])
    np.testing.assert_array_equal(choose_roi(boxes, (2048, 2048), "roi"), [True, True])
    np.testing.assert_array_equal(choose_roi(boxes, (20000, 20000)), [True, True])  # too big for whole
    with pytest.raises(PromptError, match="auto, whole or roi"):
        choose_roi(boxes, (2048, 2048), "zoom")


def test_crops_use_the_whole_image_intensity_window():
    image = ramp((700, 1000))
    image[:, 800:] = 5000  # a bright region elsewhere sets the window's top
    pred = BoxFillPredictor()
    segment_large(pred, image, BORDER_BOXES[:2], mode="roi")
    lo, hi = np.percentile(image[image > 0].astype(float), [0.5, 99.5])
    for it in pred.intensities:
        assert it.mode == "range"
        np.testing.assert_allclose(it.value_range, (lo, hi))
    u8 = (image % 200).astype(np.uint8)
    lo8, hi8 = np.percentile(u8[u8 > 0].astype(float), [0.5, 99.5])
    np.testing.assert_allclose(global_intensity(u8).value_range, (lo8, hi8))  # uint8 is clipped too
    as_is = Intensity(mode="as_is")
    assert global_intensity(u8, as_is) is as_is  # "already windowed": used unchanged
    ct = Intensity.ct("lung")
    assert global_intensity(image, ct) is ct


def test_pyramid_reads_crops_from_level0_and_window_from_the_coarsest_level():
    level0 = ramp((1024, 1024))
    level1 = np.full((256, 256), 7, np.uint16)
    level1[0, 0] = 1000
    pred = BoxFillPredictor()
    boxes = np.array([[500, 500, 520, 530]], float)
    labels = segment_large(pred, [level0, level1], boxes, mode="roi")
    np.testing.assert_array_equal(labels, box_filled((1024, 1024), boxes))
    lo, hi = pred.intensities[0].value_range
    assert hi <= 1000 and lo >= 7  # from level 1, not level 0 (whose values are 1..251)
    assert hi > 251


def test_lazy_array_is_never_read_whole():
    base = ramp((512, 512))

    def fill(y0, y1, x0, x1):
        yy, xx = np.meshgrid(np.arange(y0, y1) % 512, np.arange(x0, x1) % 512, indexing="ij")
        return base[yy, xx]

    lazy = RecordingArray((4096, 4096), np.uint16, fill)
    boxes = np.array([[100, 100, 120, 125], [4000, 4050, 4030, 4080], [2000, 10, 2040, 40]], float)
    labels = segment_large(BoxFillPredictor(), lazy, boxes, mode="auto")
    np.testing.assert_array_equal(labels, box_filled((4096, 4096), boxes))
    full = [r for r in lazy.reads if r[2] == r[5] == 1]
    assert len(full) == 3 and all((r[1] - r[0]) * (r[4] - r[3]) == ROI_MIN_SIDE**2 for r in full)
    with pytest.raises(AssertionError):
        np.asarray(lazy)  # the recorder does catch a whole read


def test_cancel_and_bad_out():
    pred = BoxFillPredictor()
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        segment_large(pred, ramp(), BORDER_BOXES, mode="roi", cancel=ev)
    assert pred.encoder_calls == 0
    with pytest.raises(ImageError, match="out has shape"):
        segment_large(pred, ramp(), BORDER_BOXES, mode="roi", out=np.zeros((5, 5), np.uint32))
    with pytest.raises(PromptError):
        segment_large(pred, ramp(), [[10, 10, 5, 20]], mode="roi")


# -- real weights --------------------------------------------------------------------------------
def tiled(image, labels, n=4):
    big = np.tile(image, (n, n))
    step = int(labels.max())
    tiles = [[np.where(labels > 0, labels + step * (i * n + j), 0) for j in range(n)] for i in range(n)]
    return big, np.block(tiles).astype(np.int64)


def bbox(labels, ids):
    from scipy import ndimage

    sl = ndimage.find_objects(labels)
    return np.array([[sl[i - 1][1].start, sl[i - 1][0].start, sl[i - 1][1].stop - 1, sl[i - 1][0].stop - 1]
                     for i in ids], float)


@pytest.mark.slow
def test_roi_beats_whole_mode_on_small_nuclei_in_a_large_image(lite_model, dsb2018):
    from medsam_core import Predictor
    from medsam_core.metrics import dice

    big, gt = tiled(*dsb2018)
    ids = np.unique(gt)[1:][:: max(1, gt.max() // 12)][:12]
    boxes = bbox(gt, ids)
    pred = Predictor(lite_model)
    whole = segment_large(pred, big, boxes, mode="whole")
    calls = pred.encoder_calls
    roi = segment_large(pred, big, boxes, mode="auto")  # auto picks ROI for 20 px nuclei in 2048 px
    assert pred.encoder_calls - calls <= len(boxes)
    d_whole = np.mean([dice(whole == k + 1, gt == i) for k, i in enumerate(ids)])
    d_roi = np.mean([dice(roi == k + 1, gt == i) for k, i in enumerate(ids)])
    assert d_roi > 0.75, d_roi
    assert d_roi > d_whole + 0.2, (d_roi, d_whole)


@pytest.mark.slow
def test_lazy_4096_image_with_real_model_reads_only_crops(lite_model):
    from medsam_core import Predictor
    from medsam_core.metrics import dice
    from medsam_core.samples import nuclei

    s = nuclei()
    base, base_labels = s.image, s.labels.astype(np.int64)
    n = 4096 // base.shape[0]

    def fill(y0, y1, x0, x1):
        yy, xx = np.meshgrid(np.arange(y0, y1) % base.shape[0], np.arange(x0, x1) % base.shape[1], indexing="ij")
        return base[yy, xx]

    lazy = RecordingArray((4096, 4096), base.dtype, fill)
    off = np.array([base.shape[1] * (n - 1), base.shape[0] * (n - 1)] * 2, float)  # bottom-right tile
    boxes = s.boxes[:4] + off
    labels = segment_large(Predictor(lite_model), lazy, boxes, mode="auto")
    assert max((r[1] - r[0]) * (r[4] - r[3]) for r in lazy.reads if r[2] == r[5] == 1) <= ROI_MIN_SIDE**2
    tile = labels[-base.shape[0]:, -base.shape[1]:]
    d = [dice(tile == k + 1, base_labels == k + 1) for k in range(4)]
    assert np.mean(d) > 0.75, d
    assert labels[: -base.shape[0]].max() == 0  # nothing pasted outside the tile


def test_progress_counts_every_encode_and_iter_box_masks_gives_tight_windows():
    from medsam_core.roi import count_encodes, iter_box_masks

    shape = (700, 1000)
    boxes = np.vstack([BORDER_BOXES, [[100, 100, 699, 499]]])  # a large box: whole-image mode in auto
    seen = []
    pred = BoxFillPredictor()
    segment_large(pred, ramp(shape), boxes, mode="auto", progress=lambda d, t: seen.append((d, t)))
    n = count_encodes(boxes, shape)
    assert seen == [(k, n) for k in range(1, n + 1)] and pred.encoder_calls == n
    items = list(iter_box_masks(BoxFillPredictor(), ramp(shape), boxes, mode="auto"))
    assert len(items) == n and items[0][0].tolist() == [9] and not items[0][1][0].roi
    for idx, results in items:
        for i, r in zip(idx, results, strict=True):
            y0, y1, x0, x1 = r.window
            assert r.mask.shape == (y1 - y0, x1 - x0)
            np.testing.assert_array_equal(r.full(shape), box_filled(shape, boxes[i : i + 1]) > 0)
            bx0, by0, bx1, by1 = boxes[i]
            m = 1000 * 5 / 256 + 1 if not r.roi else ROI_MIN_SIDE * 5 / 256 + 1  # margin of the encoded image
            assert bx0 - m <= x0 <= bx0 and by0 - m <= y0 <= by0 and bx1 < x1 <= bx1 + m + 1 and by1 < y1 <= by1 + m + 1


def test_intensity_sample_falls_back_to_rows_when_strided_reads_fail():
    image = ramp((3000, 600))

    class NoStep:
        shape, dtype, ndim = image.shape, image.dtype, 2

        def __getitem__(self, key):
            if any(k.step not in (None, 1) for k in key):
                raise IndexError("only step 1 is supported")
            return image[key]

    lo, hi = global_intensity(NoStep()).value_range
    sample = image[::2, ::2]  # step = ceil(3000 / 2048) = 2
    np.testing.assert_allclose((lo, hi), np.percentile(sample[sample > 0].astype(float), [0.5, 99.5]))


# -- predict_boxes: the one entry point -------------------------------------------------------------
def test_predict_boxes_auto_decodes_big_boxes_on_the_whole_image_and_zooms_small_ones():
    from medsam_core.roi import predict_boxes

    shape = (1000, 1000)
    boxes = np.array([[100, 100, 499, 399], [700, 700, 715, 712], [600, 100, 899, 399]], float)  # big, small, big
    pred = BoxFillPredictor()
    res = predict_boxes(pred, ramp(shape), boxes)  # mode="auto"
    assert [r.roi for r in res] == [False, True, False]
    assert pred.shapes == [shape, (ROI_MIN_SIDE, ROI_MIN_SIDE)]  # one whole-image encode, one crop
    assert len(pred.boxes[0]) == 2  # both big boxes decoded on the one whole-image embedding
    for r, b in zip(res, boxes, strict=True):
        np.testing.assert_array_equal(r.full(shape), box_filled(shape, b[None]) > 0)
        assert r.score == 1.0 and r.clipped == 0
    whole = predict_boxes(BoxFillPredictor(), ramp(shape), boxes, mode="whole")
    roi = predict_boxes(BoxFillPredictor(), ramp(shape), boxes, mode="roi")
    assert not any(r.roi for r in whole) and all(r.roi for r in roi)
    assert predict_boxes(BoxFillPredictor(), ramp(shape), np.zeros((0, 4))) == []
    with pytest.raises(PromptError, match="unknown ROI mode"):
        predict_boxes(BoxFillPredictor(), ramp(shape), boxes, mode="zoom")


def test_predict_boxes_clips_masks_to_box_plus_training_margin():
    from medsam_core.roi import BOX_SHIFT_FRACTION, predict_boxes

    shape = (512, 512)
    box = np.array([[200, 200, 299, 259]], float)
    margin = BOX_SHIFT_FRACTION * 512  # 10 px: 5 of the model's 256 pixels
    (r,) = predict_boxes(BoxFillPredictor(bleed=40), ramp(shape), box, mode="whole")
    full = r.full(shape)
    ys, xs = np.nonzero(full)
    assert xs.min() == 200 - int(margin) and xs.max() == 299 + int(margin)  # cut at the margin
    assert ys.min() == 200 - int(margin) and ys.max() == 259 + int(margin)
    assert r.clipped == 180 * 140 - full.sum() > 0  # the 40 px bleed beyond the 10 px margin
    (raw,) = predict_boxes(BoxFillPredictor(bleed=40), ramp(shape), box, mode="whole", clip_to_box=False)
    assert raw.clipped == 0 and raw.window == (160, 300, 160, 340) and raw.mask.all()  # grown to the raw mask
    # a mask inside box + margin is untouched
    (ok,) = predict_boxes(BoxFillPredictor(bleed=5), ramp(shape), box, mode="whole")
    assert ok.clipped == 0 and ok.mask.sum() == 110 * 70


def test_predict_boxes_same_crop_twice_hits_the_cache_once_encoded():
    from medsam_core.embeddings import EmbeddingCache
    from medsam_core.roi import predict_boxes

    class CountingPredictor(BoxFillPredictor):
        """A cache in front of the fake encoder, keyed like Predictor (content + intensity)."""

        def __init__(self):
            super().__init__()
            self.cache = EmbeddingCache()
            self.keys = set()

        def set_image(self, image, intensity=None, channel=None):
            from medsam_core.embeddings import content_hash

            key = (content_hash(np.asarray(image)), repr(intensity))
            hit = key in self.keys
            self.keys.add(key)
            if not hit:
                super().set_image(image, intensity, channel)
            self.shape = np.asarray(image).shape[:2]
            return hit

    pred = CountingPredictor()
    image = ramp((1000, 1000))
    box = np.array([[700, 700, 715, 712]], float)
    first = predict_boxes(pred, image, box, mode="roi")
    again = predict_boxes(pred, image, box, mode="roi")
    assert pred.encoder_calls == 1 and first[0].window == again[0].window


def test_segment_boxes_routes_through_predict_boxes_with_roi_option():
    from medsam_core.segment import segment_boxes

    shape = (2048, 2048)
    boxes = np.array([[1000, 1000, 1019, 1019], [10, 2000, 40, 2040]], float)
    pred = BoxFillPredictor(bleed=30)
    labels = segment_boxes(pred, ramp(shape), boxes)  # default roi="auto": 20 px boxes are zoomed
    assert pred.shapes == [(ROI_MIN_SIDE, ROI_MIN_SIDE)] * 2
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        ys, xs = np.nonzero(labels == k + 1)
        m = int(ROI_MIN_SIDE * 5 / 256)  # crop margin: 2.5 px
        assert xs.min() >= x0 - m and xs.max() <= x1 + m and ys.min() >= y0 - m and ys.max() <= y1 + m
    whole = segment_boxes(BoxFillPredictor(bleed=30), ramp(shape), boxes, roi="whole", clip_to_box=False)
    assert (whole == 1).sum() == 80 * 80  # the raw (bled) mask, kept on request


def test_a_box_on_blank_padding_or_an_empty_slice_gets_an_empty_mask_and_a_note():
    """Zero padding around a real image, or an empty slice of a stack, is not "a constant image": the
    boxes there get empty masks and a warning; every other box is segmented as before."""
    from medsam_core.segment import segment_boxes

    image = np.zeros((1024, 1024), np.uint16)
    image[:512, :512] = ramp((512, 512))
    boxes = np.array([[100, 100, 119, 119], [300, 300, 330, 330], [800, 800, 830, 830]], float)
    pred = BoxFillPredictor()
    with pytest.warns(UserWarning, match=r"1 box\(es\) lie on a blank area \(every pixel = 0"):
        labels = segment_boxes(pred, image, boxes)
    assert [int((labels == k).sum()) for k in (1, 2, 3)] == [20 * 20, 31 * 31, 0]
    assert len(pred.shapes) == 2  # the blank crop was never encoded
    stack = np.stack([np.zeros((64, 64), np.uint16), ramp((64, 64))])
    with pytest.warns(UserWarning, match="blank area"):
        labels = segment_boxes(BoxFillPredictor(), stack, np.array([[10, 10, 40, 40]] * 2, float), z=[0, 1])
    assert not labels[0].any() and (labels[1] == 2).sum() == 31 * 31


@pytest.mark.slow
def test_predict_boxes_real_model_caches_whole_image_and_crops(lite_model, dsb2018):
    from medsam_core import Predictor, predict_boxes
    from medsam_core.metrics import dice

    image, gt = dsb2018
    ids = np.unique(gt)[1:][::25][:5]
    boxes = bbox(gt, ids) + np.array([-3, -3, 3, 3])
    big = np.array([[0, 0, 400, 300]], float)  # shown at 200 model px: decoded on the whole image
    pred = Predictor(lite_model)
    res = predict_boxes(pred, image, np.vstack([boxes, big]))
    assert [r.roi for r in res] == [True] * len(ids) + [False]
    first = pred.encoder_calls
    assert first <= len(ids) + 1
    again = predict_boxes(pred, image, np.vstack([boxes, big]))  # every crop and the image: cache hits
    assert pred.encoder_calls == first
    for r, s in zip(res, again, strict=True):
        assert r.window == s.window and np.array_equal(r.mask, s.mask)
    d = [dice(r.full(gt.shape), gt == i) for r, i in zip(res, ids, strict=False)]
    assert np.mean(d) > 0.75, d
