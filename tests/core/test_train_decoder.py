"""The differentiable fast decoder used for fine-tuning gives the reference decoder's logits and
gradients (real LiteMedSAM weights, real nuclei), and fit() actually takes that path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medsam_core import Predictor
from medsam_core.data import make_training_data, prepare_variant
from medsam_core.losses import DiceCELoss, IoURegressionLoss
from medsam_core.modeling.fast_decoder import OUTSIDE_LOGIT
from medsam_core.modeling.train_decoder import decode_for_training
from medsam_core.preprocess import boxes_to_model
from medsam_core.training import Batch, TrainConfig, fit, forward, target_boxes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch(lite_model, dsb2018):
    """Eight real nuclei of one image: Batch with the cached embedding, boxes pushed out 3 px."""
    img, lab = dsb2018
    data = make_training_data([(img, lab)])
    idx = list(range(8))
    v = prepare_variant(data, 0, idx, lite_model.spec.preprocessing, (False, False), None, "auto")
    p = Predictor(lite_model)
    p.set_image(img)
    boxes = boxes_to_model(v.boxes + np.array([-3, -3, 3, 3]), v.prepared)
    return Batch(torch.tensor(boxes, dtype=torch.float32), torch.tensor(v.targets[:, None], dtype=torch.float32),
                 embedding=p._embedding.clone())


def _loss_and_grads(model, batch, fast):
    model.zero_grad(set_to_none=True)
    logits, iou = forward(model, batch, fast=fast)
    loss = DiceCELoss()(logits, batch.targets) + IoURegressionLoss()(iou, logits, batch.targets)
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
             for n, p in model.mask_decoder.named_parameters()}
    return logits.detach(), iou.detach(), float(loss.detach()), grads


def test_logits_and_gradients_match_the_reference(lite_model, batch):
    model = copy.deepcopy(lite_model)
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    ref = _loss_and_grads(model, batch, fast=False)
    new = _loss_and_grads(model, batch, fast=True)
    inside = new[0] != OUTSIDE_LOGIT
    assert inside.float().mean() < 0.2, "the windows should be small around small nuclei"
    assert (new[0][inside] - ref[0][inside]).abs().max() < 2e-3
    assert ref[0][~inside].max() < -5, "outside the windows the reference is far background"
    assert (new[1] - ref[1]).abs().max() < 1e-4
    assert abs(new[2] - ref[2]) < 0.01 * ref[2]
    checked = 0
    for name, g in ref[3].items():
        if "k_proj.bias" in name:  # softmax is blind to a key bias: both gradients are ~0 noise
            assert g.norm() < 1e-6 and new[3][name].norm() < 1e-6
            continue
        if g.norm() == 0:
            continue
        checked += 1
        assert (new[3][name] - g).norm() / g.norm() < 0.02, name
    assert checked > 50


def test_gradient_reaches_the_image_embedding(lite_model, batch):
    """full / LoRA modes train the encoder through the embedding's gradient: it must match too."""
    grads = {}
    for fast in (True, False):
        emb = batch.embedding.clone().requires_grad_(True)
        logits, iou = forward(lite_model, Batch(batch.boxes, batch.targets, embedding=emb), fast=fast)
        (DiceCELoss()(logits, batch.targets) + IoURegressionLoss()(iou, logits, batch.targets)).backward()
        grads[fast] = emb.grad
    assert grads[False].norm() > 0
    assert (grads[True] - grads[False]).norm() / grads[False].norm() < 0.02


def test_windows_cover_the_target_even_when_the_prompt_is_smaller(lite_model, batch):
    small = batch.boxes.clone()
    centre = (small[:, :2] + small[:, 2:]) / 2
    small = torch.cat([centre - 1, centre + 1], 1)  # a 2-pixel box inside each nucleus
    cover = target_boxes(batch.targets, lite_model.spec.preprocessing.input_size)
    with torch.no_grad():
        logits, _ = decode_for_training(lite_model.prompt_encoder, lite_model.mask_decoder, batch.embedding,
                                        small, 256, window_boxes=cover)
    target = batch.targets > 0
    assert (logits[target] != OUTSIDE_LOGIT).all()


def test_target_boxes():
    t = torch.zeros(2, 1, 256, 256)
    t[0, 0, 10:20, 30:35] = 1
    boxes = target_boxes(t, 1024)  # a ViT-B model: input 1024, low-res grid 256
    assert boxes[0].tolist() == [120.0, 40.0, 140.0, 80.0]
    assert boxes[1].tolist() == [0.0, 0.0, 1020.0, 1020.0]  # empty target: the whole grid


def test_fit_uses_the_fast_path_and_the_reference_agrees(lite_model, dsb2018, monkeypatch):
    """Two tiny fits, fast and reference, from the same seed: both lower the loss the same way."""
    import medsam_core.training as training

    img, lab = dsb2018
    data = make_training_data([(img, lab)])
    train, held = data.subset(range(8)), data.subset(range(8, 12))
    calls = []
    real = training.decode_for_training
    monkeypatch.setattr(training, "decode_for_training", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = TrainConfig(epochs=3, batch_size=8, seed=0, lr=1e-4)
    fast = fit(lite_model, train, config, heldout=held)
    assert len(calls) == fast.steps == 3
    ref = fit(lite_model, train, TrainConfig(**{**config.to_dict(), "fast_decoder": False}), heldout=held)
    assert len(calls) == 3, "fast_decoder=False must take the reference path"
    assert np.allclose(fast.losses, ref.losses, rtol=0.02)
    assert fast.losses[-1] < fast.losses[0]
