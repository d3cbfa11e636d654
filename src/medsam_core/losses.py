"""Training losses: Dice + binary cross-entropy (as MedSAM trains) and an IoU-head regression.

Both are small validated ``nn.Module``s. Conventions:

* ``logits``: (N, 1, H, W) or (N, H, W) raw decoder outputs (before the sigmoid);
* ``target``: the same shape, values in [0, 1] (1 = object);
* soft Dice per object:  1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits);
* binary cross-entropy on the logits (numerically stable ``binary_cross_entropy_with_logits``),
  averaged over the pixels of each object;
* total per object = dice_weight * Dice + ce_weight * CE; ``reduction`` "mean" | "sum" | "none"
  over the N objects ("none" returns (N,)).

torch is imported lazily by callers: this module imports it at import time, so import it only
when training (``medsam_core/__init__`` does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TrainingError

_REDUCTIONS = ("mean", "sum", "none")


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and finiteness; return both flattened to (N, P)."""
    if logits.shape != target.shape:
        raise TrainingError(
            f"loss inputs differ in shape: logits {tuple(logits.shape)} vs target {tuple(target.shape)}; "
            "targets must be on the decoder's low-res grid"
        )
    if logits.ndim not in (3, 4) or logits.shape[0] == 0:
        raise TrainingError(f"loss expects (N, 1, H, W) or (N, H, W) with N >= 1, got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise TrainingError(
            "the model produced NaN or inf logits: lower the learning rate, or check the images for NaNs"
        )
    if not torch.isfinite(target).all() or target.min() < 0 or target.max() > 1:
        raise TrainingError("targets must be finite and lie in [0, 1]")
    n = logits.shape[0]
    return logits.reshape(n, -1), target.reshape(n, -1).to(logits.dtype)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class DiceCELoss(nn.Module):
    """Soft Dice on sigmoid probabilities + binary cross-entropy on logits, per object.

    dice_weight, ce_weight: non-negative, not both zero (MedSAM uses 1 and 1).
    smooth: added to numerator and denominator of Dice, so an empty target with an empty
    prediction gives Dice loss 0 and gradients stay finite (MONAI's smooth_nr = smooth_dr).
    reduction: "mean" (default), "sum" or "none" over the N objects.
    forward(logits, target) -> scalar, or (N,) with reduction="none".
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5,
                 reduction: str = "mean"):
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise TrainingError(
                f"DiceCELoss weights must be >= 0 and not both 0 (got dice={dice_weight}, ce={ce_weight})"
            )
        if smooth < 0:
            raise TrainingError(f"smooth must be >= 0, got {smooth}")
        if reduction not in _REDUCTIONS:
            raise TrainingError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.smooth, self.reduction = float(smooth), reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, t = _check_pair(logits, target)
        p = torch.sigmoid(x)
        inter = (p * t).sum(1)
        dice = 1.0 - (2.0 * inter + self.smooth) / (p.sum(1) + t.sum(1) + self.smooth)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(1)
        return _reduce(self.dice_weight * dice + self.ce_weight * ce, self.reduction)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, smooth={self.smooth}"


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``target > 0.5``, per object: (N, ...) -> (N,). Both empty -> 1.

    No gradient: it is the regression target of the decoder's IoU head.
    """
    with torch.no_grad():
        x, t = _check_pair(logits, target)
        p, t = x > 0, t > 0.5
        inter = (p & t).sum(1).float()
        union = (p | t).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class IoURegressionLoss(nn.Module):
    """MSE between the decoder's predicted IoU (N,) or (N, 1) and the IoU its mask really has.

    forward(iou_pred, logits, target) -> scalar (or (N,) with reduction="none"); gradients flow
    only into ``iou_pred`` (the IoU head), as in MedSAM / LiteMedSAM training.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise TrainingError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, iou_pred: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        actual = mask_iou(logits, target)
        pred = iou_pred.reshape(iou_pred.shape[0], -1)
        if pred.shape != (actual.shape[0], 1):
            raise TrainingError(
                f"iou_pred must be (N,) or (N, 1) with N = {actual.shape[0]}, got {tuple(iou_pred.shape)}"
            )
        return _reduce((pred[:, 0] - actual.to(pred.dtype)) ** 2, self.reduction)
