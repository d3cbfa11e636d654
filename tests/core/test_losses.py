"""DiceCELoss and the IoU-head regression on tiny tensors whose values are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medsam_core.errors import TrainingError
from medsam_core.losses import DiceCELoss, IoURegressionLoss, mask_iou

LN2 = math.log(2.0)


def one_pixel_target():
    """(1, 1, 2, 2) target with one foreground pixel out of four."""
    return torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])


def test_zero_logits_give_hand_computed_dice_and_ce():
    # p = sigmoid(0) = 0.5 everywhere; sum(p * t) = 0.5, sum(p) = 2, sum(t) = 1
    # Dice loss = 1 - (2 * 0.5) / (2 + 1) = 2/3 (smooth = 0); BCE = ln 2 at every pixel.
    logits = torch.zeros(1, 1, 2, 2)
    loss = DiceCELoss(smooth=0.0)(logits, one_pixel_target())
    assert loss.item() == pytest.approx(2 / 3 + LN2, abs=1e-6)


def test_weights_select_the_terms():
    logits, target = torch.zeros(1, 1, 2, 2), one_pixel_target()
    assert DiceCELoss(dice_weight=0.0, smooth=0.0)(logits, target).item() == pytest.approx(LN2, abs=1e-6)
    assert DiceCELoss(ce_weight=0.0, smooth=0.0)(logits, target).item() == pytest.approx(2 / 3, abs=1e-6)
    assert DiceCELoss(dice_weight=2.0, ce_weight=0.5, smooth=0.0)(logits, target).item() == pytest.approx(
        4 / 3 + 0.5 * LN2, abs=1e-6
    )


def test_smooth_term_enters_numerator_and_denominator():
    # (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5 -> Dice loss 0.5
    loss = DiceCELoss(ce_weight=0.0, smooth=1.0)(torch.zeros(1, 1, 2, 2), one_pixel_target())
    assert loss.item() == pytest.approx(0.5, abs=1e-6)


def test_confident_correct_prediction_is_near_zero_and_wrong_is_large():
    target = one_pixel_target()
    good = (target * 2 - 1) * 20  # +20 on the object, -20 elsewhere
    assert DiceCELoss()(good, target).item() < 1e-6
    assert DiceCELoss()(-good, target).item() > 10


def test_empty_target_and_empty_prediction_is_zero_thanks_to_smooth():
    loss = DiceCELoss()(torch.full((1, 1, 2, 2), -30.0), torch.zeros(1, 1, 2, 2))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_reductions_over_objects():
    logits = torch.stack([torch.zeros(1, 2, 2), (one_pixel_target()[0] * 2 - 1) * 20])
    target = one_pixel_target().repeat(2, 1, 1, 1)
    per = DiceCELoss(smooth=0.0, reduction="none")(logits, target)
    assert per.shape == (2,)
    assert per[0].item() == pytest.approx(2 / 3 + LN2, abs=1e-6)
    assert per[1].item() < 1e-6
    assert DiceCELoss(smooth=0.0, reduction="sum")(logits, target).item() == pytest.approx(per.sum().item())
    assert DiceCELoss(smooth=0.0)(logits, target).item() == pytest.approx(per.mean().item())


def test_three_dim_input_equals_four_dim():
    logits, target = torch.randn(3, 1, 4, 4), (torch.rand(3, 1, 4, 4) > 0.5).float()
    assert DiceCELoss()(logits[:, 0], target[:, 0]).item() == pytest.approx(DiceCELoss()(logits, target).item())


def test_gradient_is_finite_and_points_toward_the_target():
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    DiceCELoss()(logits, one_pixel_target()).backward()
    g = logits.grad[0, 0]
    assert torch.isfinite(g).all()
    assert g[0, 0] < 0 and (g.flatten()[1:] > 0).all()  # raise the object's logit, lower the others


@pytest.mark.parametrize(
    "logits, target, match",
    [
        (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), "shape"),
        (torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2), "NaN"),
        (torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), r"\[0, 1\]"),
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2), "N >= 1"),
        (torch.zeros(4), torch.zeros(4), "N >= 1"),
    ],
)
def test_bad_inputs_raise_training_error(logits, target, match):
    with pytest.raises(TrainingError, match=match):
        DiceCELoss()(logits, target)


@pytest.mark.parametrize(
    "kwargs", [{"dice_weight": -1}, {"dice_weight": 0, "ce_weight": 0}, {"smooth": -1}, {"reduction": "max"}]
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(TrainingError):
        DiceCELoss(**kwargs)


def test_mask_iou_hand_computed():
    # prediction: 2 pixels (logits > 0); target: 1 of them plus another -> inter 1, union 3
    logits = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert mask_iou(logits, target).tolist() == pytest.approx([1 / 3])
    # both empty -> 1
    assert mask_iou(-torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).tolist() == [1.0]


def test_iou_regression_is_mse_and_trains_only_the_iou_head():
    logits = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    iou_pred = torch.tensor([[0.5]], requires_grad=True)
    loss = IoURegressionLoss()(iou_pred, logits, target)
    assert loss.item() == pytest.approx((0.5 - 1 / 3) ** 2, abs=1e-6)
    loss.backward()
    assert iou_pred.grad.item() == pytest.approx(2 * (0.5 - 1 / 3), abs=1e-6)
    assert logits.grad is None
    with pytest.raises(TrainingError, match="iou_pred"):
        IoURegressionLoss()(torch.zeros(2, 1), logits, target)
