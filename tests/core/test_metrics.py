"""Dice / IoU / NSD on tiny masks whose values are computed by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.errors import ImageError
from medsam_core.metrics import boundary, dice, iou, nsd


def square(shape=(20, 24), top=5, left=5, size=10):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_identical_masks_score_one():
    a = square()
    assert dice(a, a) == 1.0
    assert iou(a, a) == 1.0
    assert nsd(a, a, tolerance=0) == 1.0


def test_disjoint_masks_score_zero():
    a = square(left=0, size=5)
    b = square(left=15, size=5)
    assert dice(a, b) == 0.0
    assert iou(a, b) == 0.0
    # Boundaries 10 px apart: nothing within 2 px.
    assert nsd(a, b, tolerance=2) == 0.0


def test_dice_and_iou_hand_values():
    a = square(size=10)  # 100 px
    b = square(left=7, size=10)  # shifted 2 px in x: overlap 10 x 8 = 80
    assert dice(a, b) == pytest.approx(2 * 80 / 200)
    assert iou(a, b) == pytest.approx(80 / 120)


def test_empty_conventions():
    empty = np.zeros((8, 8), bool)
    full = square((8, 8), 2, 2, 3)
    assert dice(empty, empty) == iou(empty, empty) == nsd(empty, empty) == 1.0
    assert dice(full, empty) == iou(empty, full) == 0.0
    assert nsd(full, empty) == nsd(empty, full) == 0.0


def test_boundary_of_square_is_its_outline():
    b = boundary(square(size=10))
    assert b.sum() == 36  # 4 * 10 - 4 corners
    assert not b[6:14, 6:14].any()  # interior removed


def test_nsd_square_shifted_two_pixels_vs_tolerance():
    # A: rows 5-14, cols 5-14; B: same rows, cols 7-16. Each outline has 36 px.
    a, b = square(left=5), square(left=7)
    # tol 0: only the top/bottom rows where they overlap coincide (cols 7-14: 8 px each, 16 per
    # mask) -> 32 / 72.
    assert nsd(a, b, tolerance=0) == pytest.approx(32 / 72)
    # tol 1: top/bottom rows cols 6-14 of A (9 each = 18) plus A's right column at rows 6 and 13
    # (1 px from B's corner rows) = 20 per mask, symmetric -> 40 / 72.
    assert nsd(a, b, tolerance=1) == pytest.approx(40 / 72)
    # tol 2: every outline pixel is at most 2 px from the other outline.
    assert nsd(a, b, tolerance=2) == pytest.approx(1.0)


def test_nsd_one_pixel_shift_within_one_pixel_tolerance():
    a, b = square(left=5), square(left=6)
    assert nsd(a, b, tolerance=0) < 1.0
    assert nsd(a, b, tolerance=1) == pytest.approx(1.0)


def test_anisotropic_spacing_changes_the_answer():
    a, b = square(left=5), square(left=7)
    # x pixels 0.5 units wide: the 2 px shift is 1 unit, within a tolerance of 1.
    assert nsd(a, b, tolerance=1, spacing=(1.0, 0.5)) == pytest.approx(1.0)
    # x pixels 2 units wide: the shift is 4 units. Within 2 units of B's outline: A's top/bottom
    # rows at cols 6-14 (col 6 is 1 px = 2 units from col 7; 18 px) and A's right column at rows
    # 6, 7, 12, 13 (1 or 2 units below/above B's top/bottom row; 4 px) = 22 per mask -> 44 / 72.
    assert nsd(a, b, tolerance=2, spacing=(1.0, 2.0)) == pytest.approx(44 / 72)
    # The same tolerance in isotropic pixels covers everything.
    assert nsd(a, b, tolerance=2, spacing=(1.0, 1.0)) == pytest.approx(1.0)


def test_nsd_3d_shift_along_z_with_spacing():
    a = np.zeros((12, 12, 12), bool)
    a[3:8, 3:8, 3:8] = True
    b = np.roll(a, 1, axis=0)
    assert nsd(a, a, tolerance=0) == 1.0
    assert nsd(a, b, tolerance=1) == pytest.approx(1.0)  # 1 px apart in z
    assert nsd(a, b, tolerance=1, spacing=(3.0, 1.0, 1.0)) < 1.0  # 3 units apart in z
    assert nsd(a, b, tolerance=3, spacing=(3.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert dice(a, b) == pytest.approx(2 * 100 / 250)  # overlap 4 slices of 25 px


def test_mismatched_shapes_and_bad_arguments_raise():
    with pytest.raises(ImageError, match="same shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ImageError, match="spacing"):
        nsd(square(), square(), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ImageError, match="tolerance"):
        nsd(square(), square(), tolerance=-1)
    with pytest.raises(ImageError, match="2D"):
        dice(np.zeros(5), np.zeros(5))


def test_label_values_count_as_foreground():
    a = square().astype(np.int32) * 7
    assert dice(a, square()) == 1.0
