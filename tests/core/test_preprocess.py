"""Preprocessing contracts: intensity presets, channel handling, resize geometry, box checks."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.errors import ImageError, PromptError
from medsam_core.preprocess import (
    Intensity,
    area_weights,
    check_boxes,
    check_image,
    intensity_to_255,
    logits_to_mask,
    longest_side_size,
    prepare_image,
    resize_area,
    to_grey_or_rgb,
)
from medsam_core.registry import get_spec

LITE = get_spec("lite_medsam").preprocessing


def test_area_resize_matches_opencv_inter_area():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for (h, w), (nh, nw) in [((512, 512), (256, 256)), ((300, 451), (170, 256)), ((100, 60), (256, 154)),
                             ((1000, 37), (256, 9))]:
        img = rng.random((h, w)).astype(np.float32) * 255
        ours = resize_area(img, nh, nw)
        ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=1e-4)


def test_area_weights_rows_sum_to_one():
    for old, new in [(512, 256), (300, 256), (100, 256), (7, 3)]:
        np.testing.assert_allclose(area_weights(old, new).sum(axis=1), 1.0, atol=1e-12)


def test_longest_side_rounds_half_up():
    assert longest_side_size(512, 512, 256) == (256, 256)
    assert longest_side_size(300, 451, 256) == (170, 256)  # 300 * 256 / 451 = 170.29
    assert longest_side_size(3, 1000, 256) == (1, 256)
    assert longest_side_size(3, 2000, 256) == (1, 256)  # 0.38 rounds to 0: still one row


def test_an_image_over_512_times_longer_than_wide_is_prepared():
    for shape in ((5, 3000), (3000, 3)):
        img = np.zeros(shape, np.uint8)
        img[1000:1600] = 200
        img[:, 1000:1600] = 200
        prep = prepare_image(img, LITE)
        assert tuple(prep.resized_size) == longest_side_size(*shape, 256) and np.isfinite(prep.tensor).all()


def test_prepare_image_pads_bottom_right_and_normalises():
    img = np.zeros((100, 200), np.uint8)
    img[10:20, 10:30] = 255
    img[50, 50] = 7
    prep = prepare_image(img, LITE)
    assert prep.tensor.shape == (3, 256, 256)
    assert prep.resized_size == (128, 256)
    assert prep.scale_xy == (1.28, 1.28)
    t = prep.tensor
    assert t[:, :128].max() == pytest.approx(1.0) and t[:, :128].min() == pytest.approx(0.0)
    assert np.all(t[:, 128:] == 0)  # padding
    np.testing.assert_array_equal(t[0], t[1])  # grey replicated to 3 channels


def test_intensity_auto_clips_uint8_like_training_and_as_is_keeps_it():
    # an 8-bit image using only 40..200 with a few saturated pixels, as 8-bit EM/microscopy often is
    u8 = np.tile(np.linspace(40, 200, 100).astype(np.uint8), (100, 1))
    u8[0, :3] = 255
    lo, hi = np.percentile(u8[u8 > 0].astype(float), [0.5, 99.5])
    expected = (np.clip(u8.astype(float), lo, hi) - lo) * 255 / (hi - lo)  # the training pipeline's rule
    np.testing.assert_allclose(intensity_to_255(u8), expected, atol=1e-3)
    assert intensity_to_255(u8).max() == pytest.approx(255) and intensity_to_255(u8).min() == pytest.approx(0)
    np.testing.assert_allclose(intensity_to_255(u8, Intensity(mode="percentile")), expected, atol=1e-3)
    # "already windowed" 8-bit data: the values are the picture, unchanged
    np.testing.assert_array_equal(intensity_to_255(u8, Intensity(mode="as_is")), u8.astype(np.float32))
    with pytest.raises(ImageError, match="as_is.*0..255"):
        intensity_to_255(np.array([[0, 300]], np.uint16), Intensity(mode="as_is"))
    assert Intensity(mode="as_is") != Intensity()  # different cache keys


def test_intensity_auto_clips_uint16_percentiles():
    u16 = np.zeros((100, 100), np.uint16)
    u16[:50] = 1000
    u16[50:] = 2000
    u16[0, 0] = 60000  # one hot pixel must not squash the rest
    out = intensity_to_255(u16)
    assert out.max() == pytest.approx(255.0)
    assert out[10, 10] == pytest.approx(0.0) and out[60, 60] == pytest.approx(255.0)


def test_ct_window_maps_hounsfield_units():
    ct = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    out = intensity_to_255(ct, Intensity.ct("soft_tissue"))  # level 40, width 400
    np.testing.assert_allclose(out[0], [0, 0, 127.5, 255, 255])
    lung = intensity_to_255(ct, Intensity.ct("lung"))  # level -600, width 1500: [-1350, 150]
    assert lung[0, 0] == pytest.approx((350 / 1500) * 255)


def test_range_and_minmax_modes():
    img = np.linspace(-5, 5, 100, dtype=np.float32).reshape(10, 10)
    r = intensity_to_255(img, Intensity(mode="range", value_range=(0, 5)))
    assert r.min() == 0 and r.max() == pytest.approx(255)
    m = intensity_to_255(img, Intensity(mode="minmax"))
    assert m[0, 0] == 0 and m[-1, -1] == pytest.approx(255)
    with pytest.raises(ImageError, match="range"):
        Intensity(mode="range", value_range=(3, 3))
    with pytest.raises(ImageError, match="unknown CT window"):
        Intensity.ct("kidney-ish")


@pytest.mark.parametrize("factor", [1e300, 1e-300, 1.0])
def test_float64_images_beyond_float32_are_scaled_not_nan(factor):
    """A float64 image of values beyond float32 (x 1e300, or x 1e-300) gave NaN (a NaN score and an
    empty mask, with only RuntimeWarnings): it was cast to float32 before scaling."""
    base = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    with np.errstate(all="raise"):
        out = intensity_to_255(base * factor, Intensity(mode="minmax"))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, intensity_to_255(base, Intensity(mode="minmax")), atol=1e-3)


def test_channels():
    rgb = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert to_grey_or_rgb(rgb).shape == (8, 8, 3)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_grey_or_rgb(rgba), rgb)
    multi = np.random.default_rng(2).random((8, 8, 5)).astype(np.float32)
    np.testing.assert_allclose(to_grey_or_rgb(multi), multi.mean(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(to_grey_or_rgb(multi, "max"), multi.max(axis=2))
    np.testing.assert_array_equal(to_grey_or_rgb(multi, 3), multi[:, :, 3])
    with pytest.raises(ImageError, match="channel 7 does not exist"):
        to_grey_or_rgb(multi, 7)
    with pytest.raises(ImageError, match="rgb"):
        to_grey_or_rgb(multi, "rgb")


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((5, 5, 5, 5)), "2D"),
        (np.full((10, 10), 3.0), "constant"),
        (np.array([[1.0, np.nan], [2.0, 3.0]] * 2), "NaN"),
        (np.zeros((40, 40, 40)), "stack"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
    ],
)
def test_bad_images_are_refused(image, match):
    with pytest.raises(ImageError, match=match):
        check_image(image)


def test_check_boxes_clips_and_refuses_bad_boxes():
    out = check_boxes([[-5, -5, 20, 20]], (100, 100))
    np.testing.assert_array_equal(out, [[0, 0, 20, 20]])
    with pytest.raises(PromptError, match="reversed"):
        check_boxes([[20, 20, 10, 30]], (100, 100))
    with pytest.raises(PromptError, match="outside"):
        check_boxes([[150, 10, 170, 30]], (100, 100))
    with pytest.raises(PromptError, match="thinner than one pixel"):
        check_boxes([[10, 10, 10.5, 30]], (100, 100))
    with pytest.raises(PromptError, match=r"\(N, 4\)"):
        check_boxes([[1, 2, 3]], (100, 100))
    with pytest.raises(PromptError, match="NaN"):
        check_boxes([[1, 2, np.nan, 4]], (100, 100))


def test_windowed_logit_upsampling_equals_full_interpolation():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    for (h, w), out in [((256, 256), (512, 512)), ((170, 256), (300, 451)), ((256, 9), (1000, 37))]:
        logits = rng.normal(-3, 1, (h, w)).astype(np.float32)
        logits[h // 3 : h // 3 + 5, w // 4 : w // 4 + 3] += 6  # a small positive blob
        ref = F.interpolate(torch.from_numpy(logits)[None, None], size=out, mode="bilinear",
                            align_corners=False)[0, 0].numpy() > 0
        np.testing.assert_array_equal(logits_to_mask(logits, out), ref)
    assert not logits_to_mask(np.full((64, 64), -1, np.float32), (100, 100)).any()


def test_odd_prompts_and_images_get_our_errors_in_plain_numbers():
    with pytest.raises(PromptError, match="boxes must be numbers"):
        check_boxes([["a", "b", "c", "d"]], (100, 100))
    with pytest.raises(PromptError, match="boxes must be numbers"):
        check_boxes([[1, 2, 3, 4], [1, 2]], (100, 100))
    with pytest.raises(PromptError, match=r"box 0 \(30, 30, 30, 60\) is empty"):  # not np.float64(30.0)
        check_boxes(np.array([[30, 30, 30, 60]], np.float64), (100, 100))
    with pytest.raises(ImageError, match="has no channels"):
        check_image(np.zeros((10, 10, 0)))
