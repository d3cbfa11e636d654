"""The walk's box moves with the image under it (walk_follow.py): block matching on synthetic slices,
and a walk through an object that slides across the slices."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import walk_volume
from medsam_core.errors import PromptError
from medsam_core.walk_follow import follow_radius, image_shift

from .volume_fakes import FakePredictor


def _texture(shape=(80, 90), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(100, 20, shape).astype(np.float32)


def _moved(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """b with b[y + dy, x + dx] = a[y, x] (the image content moved by (dx, dy))."""
    return np.roll(a, (dy, dx), axis=(0, 1))


@pytest.mark.parametrize("dx, dy", [(2, -1), (0, 3), (-3, -3), (1, 0)])
def test_a_moved_texture_is_found_at_its_shift(dx, dy):
    a = _texture()
    assert image_shift(a, _moved(a, dx, dy), (30, 25, 60, 55), radius=3) == (dx, dy)


def test_brightness_and_contrast_changes_do_not_count_as_motion():
    a = _texture()
    b = 2.5 * _moved(a, -2, 1) + 40  # a brighter, higher-contrast slice, moved
    assert image_shift(a, b, (30, 25, 60, 55), radius=3) == (-2, 1)
    assert image_shift(a, 2.5 * a + 40, (30, 25, 60, 55), radius=3) == (0, 0)


def test_a_still_image_with_noise_keeps_its_box():
    a = _texture()
    b = a + np.random.default_rng(5).normal(0, 2, a.shape).astype(np.float32)
    assert image_shift(a, b, (30, 25, 60, 55), radius=3) == (0, 0)


def test_a_shift_beyond_the_radius_or_a_flat_or_tiny_region_gives_no_shift():
    a = _texture()
    flat = np.full_like(a, 7.0)
    assert image_shift(flat, flat, (30, 25, 60, 55), radius=3) == (0, 0)
    blank = np.zeros_like(a)  # the next slice is blank under the box, its surroundings are not
    blank[:, :30] = a[:, :30]  # shifted left, the window would take in texture
    assert image_shift(a, blank, (30, 25, 60, 55), radius=3) == (0, 0)
    assert image_shift(a, _moved(a, 1, 1), (30, 25, 33, 28), radius=3) == (0, 0)  # under 5 px a side
    found = image_shift(a, _moved(a, 6, 0), (30, 25, 60, 55), radius=3)
    assert found != (6, 0) and max(abs(v) for v in found) <= 3


def test_a_large_box_is_matched_on_a_sampled_grid():
    a = _texture((600, 640), seed=2)  # a 510 x 480 px box: every 6th pixel is matched
    assert image_shift(a, _moved(a, 2, -1), (50, 40, 560, 520), radius=3) == (2, -1)


def test_the_radius_scales_with_the_slice_thickness():
    assert follow_radius(3, (1, 1, 1)) == 3
    assert follow_radius(3, (2, 1, 1)) == 6  # 2 mm slices, 1 mm pixels: twice as far between neighbours
    assert follow_radius(3, (0.5, 1, 1)) == 2
    assert follow_radius(0.1, (1, 1, 1)) == 1


def _sliding_disk(n=21, step=2, radius=7, shape=(64, 96)):
    """A bright disk that moves ``step`` px right per slice, on a textured background; truth (Z, Y, X)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    vol, truth = np.empty((n, *shape), np.uint16), np.zeros((n, *shape), bool)
    background = rng.integers(10, 60, shape)
    for z in range(n):
        cx = 20 + step * z
        disk = (yy - 32) ** 2 + (xx - cx) ** 2 <= radius**2
        vol[z] = np.where(disk, 200, np.roll(background, step * z, axis=1))
        truth[z] = disk
    return vol, truth


def test_a_sliding_object_is_followed_where_a_held_box_loses_it():
    vol, truth = _sliding_disk()
    box = np.array([10.0, 22.0, 30.0, 42.0])  # the disk on slice 0, +3 px
    opts = {"extent_prior": False, "vote": None}
    held = walk_volume(FakePredictor(), vol, box, 0, follow=None, **opts)
    followed = walk_volume(FakePredictor(), vol, box, 0, **opts)  # follow=3 px per slice (default)
    # held: the disk leaves the box after a few slices; followed: the box moves with it to the end
    assert max(held.masks) < 8
    assert max(followed.masks) == len(vol) - 1 and followed.stops["up"].reason == "end of volume"
    got = followed.volume()
    inter = (got & truth).sum()
    assert 2 * inter / (got.sum() + truth.sum()) > 0.95
    moved = [followed.boxes[z][0] - box[0] for z in (5, 10, 15)]
    assert moved == [10, 20, 30]  # 2 px per slice, read from the image alone


def test_follow_off_or_zero_is_the_held_box_and_bad_values_are_refused():
    vol, _ = _sliding_disk(n=8)
    box = np.array([13.0, 25.0, 27.0, 39.0])
    opts = {"extent_prior": False, "vote": None}
    off = walk_volume(FakePredictor(), vol, box, 0, follow=None, **opts)
    zero = walk_volume(FakePredictor(), vol, box, 0, follow=0, **opts)
    assert all(np.array_equal(off.boxes[z], box) for z in off.boxes)
    assert sorted(off.masks) == sorted(zero.masks)
    for bad in (-1, "3", True):
        with pytest.raises(PromptError, match="follow"):
            walk_volume(FakePredictor(), vol, box, 0, follow=bad, **opts)


def _drifting_blob(n=25, step=0.5, shape=(64, 96)):
    """A bright blob on a smooth texture, the whole image moving ``step`` px right per slice (sub-pixel,
    cubic interpolation): neighbours differ by less than the one-pixel shifts block matching tries."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 40 + 15 * texture / texture.std() + 160 * np.exp(-((yy - 32) ** 2 + (xx - 20) ** 2) / 50.0)
    vol = np.stack([ndimage.shift(base, (0, step * z), order=3, mode="nearest") for z in range(n)])
    return np.clip(vol, 0, 255).astype(np.uint16)


def test_motion_under_a_pixel_per_slice_adds_up_against_the_last_slice_the_box_moved_on():
    vol = _drifting_blob()
    box = np.array([10.0, 22.0, 30.0, 42.0])  # the blob on slice 0
    opts = {"extent_prior": False, "vote": None}
    neighbour = walk_volume(FakePredictor(), vol, box, 0, **opts)  # follow_frames=1 (default)
    framed = walk_volume(FakePredictor(), vol, box, 0, follow_frames=3, **opts)
    # matched neighbour to neighbour, half a pixel per slice is never a whole-pixel shift: the box stays
    assert all(neighbour.boxes[z][0] == box[0] for z in neighbour.boxes)
    # matched against the last slice where the box moved, it moves 1 px every 2 slices, as the image does
    assert [framed.boxes[z][0] - box[0] for z in (4, 8, 12, 16, 20)] == [2, 4, 6, 8, 10]
    assert framed.stops["up"].reason == "end of volume"
    for bad in (0, 1.5, True, "3"):
        with pytest.raises(PromptError, match="follow_frames"):
            walk_volume(FakePredictor(), vol, box, 0, follow_frames=bad, **opts)
