"""Box prompts from masks and RECIST lines: hand-computed boxes."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import box_from_mask, box_from_recist
from medsam_core.errors import PromptError
from medsam_core.prompts import RECIST_SHORT_RATIO


def test_box_from_mask_margin_and_clip():
    m = np.zeros((20, 30), bool)
    m[5:9, 10:21] = True
    np.testing.assert_array_equal(box_from_mask(m), [10, 5, 20, 8])
    np.testing.assert_array_equal(box_from_mask(m, 2), [8, 3, 22, 10])
    np.testing.assert_array_equal(box_from_mask(m, (1, 3)), [9, 2, 21, 11])
    np.testing.assert_array_equal(box_from_mask(m, 50), [0, 0, 29, 19])
    single = np.zeros((5, 5), np.uint8)
    single[2, 3] = 1
    np.testing.assert_array_equal(box_from_mask(single), [3, 2, 3, 2])


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.ones((2, 2, 2))])
def test_box_from_mask_refuses_empty_or_3d(bad):
    with pytest.raises(PromptError):
        box_from_mask(bad)
    with pytest.raises(PromptError):
        box_from_mask(np.ones((3, 3)), margin=-1)


def test_recist_long_axis_only_horizontal_and_vertical():
    # horizontal 40 px line: the box is 40 long and 0.8 * 40 = 32 wide, centred on the line
    np.testing.assert_allclose(box_from_recist(((10, 50), (50, 50)), margin=0), [10, 34, 50, 66])
    np.testing.assert_allclose(box_from_recist(((30, 10), (30, 30)), margin=1), [21, 9, 39, 31])
    assert RECIST_SHORT_RATIO == 0.8


def test_recist_diagonal_is_the_ellipse_bounding_box():
    # 45 degrees, length L = 40: semi-axes a = 20, b = 16; half extent = sqrt((a^2 + b^2) / 2)
    L = 40.0
    d = L / np.sqrt(2)
    box = box_from_recist(((0.0 + 100, 100.0), (100 + d, 100 + d)), margin=0)
    h = np.sqrt((20.0**2 + 16.0**2) / 2)
    c = 100 + d / 2
    np.testing.assert_allclose(box, [c - h, c - h, c + h, c + h])
    # reversing the line's direction gives the same box
    np.testing.assert_allclose(box_from_recist(((100 + d, 100 + d), (100.0, 100.0)), margin=0), box)


def test_recist_with_short_axis_covers_both_lines():
    long_axis = ((10, 50), (50, 50))
    short = ((30, 45), (30, 55))  # 10 px: a flat lesion, narrower than the 0.8 default
    np.testing.assert_allclose(box_from_recist(long_axis, short, margin=0), [10, 45, 50, 55])
    off_centre = ((20, 40), (20, 70))  # perpendicular but not through the middle: endpoints still covered
    box = box_from_recist(long_axis, off_centre, margin=0)
    assert box[1] <= 40 and box[3] >= 70 and box[0] == 10 and box[2] == 50


def test_recist_clips_to_image_and_refuses_bad_lines():
    np.testing.assert_allclose(box_from_recist(((0, 5), (20, 5)), image_size=(30, 25), margin=2),
                               [0, 0, 22, 15])
    for bad in [((5, 5), (5.2, 5.3)), ((0, 0), (np.nan, 3)), ((1, 2, 3), (4, 5, 6))]:
        with pytest.raises(PromptError):
            box_from_recist(bad)
    with pytest.raises(PromptError):
        box_from_recist(((10, 10), (20, 20)), short_axis=((3, 3), (3, 3)))
    with pytest.raises(PromptError):
        box_from_recist(((500, 500), (600, 500)), image_size=(100, 100), margin=0)
