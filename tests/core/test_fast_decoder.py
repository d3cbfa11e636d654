"""The fast decoder computes the reference decoder's function on the real LiteMedSAM weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medsam_core import Predictor
from medsam_core.modeling.fast_decoder import OUTSIDE_LOGIT, FastDecoder
from medsam_core.preprocess import boxes_to_model, check_boxes, lowres_to_masks
from tests.conftest import disk_image

pytestmark = pytest.mark.slow
TOL = 2e-3  # max abs low-res logit difference (reference logits span about -90 .. 40)


def _bbox(mask, pad=2):
    ys, xs = np.nonzero(mask)
    return [xs.min() - pad, ys.min() - pad, xs.max() + pad, ys.max() + pad]


@pytest.fixture(scope="module")
def nuclei(lite_model, dsb2018):
    """(embedding (1, 256, 64, 64), model-space boxes (K, 4) of real nuclei, one at the border)."""
    img, lab = dsb2018
    p = Predictor(lite_model)
    p.set_image(img)
    ids = [i for i in range(1, lab.max() + 1) if (lab == i).sum() > 40]
    boxes = np.array([_bbox(lab == i, 2) for i in ids[:12]], float)
    border = [i for i in ids if (lab == i)[:, :3].any() or (lab == i)[:3].any()]
    assert border, "the test image should have a nucleus touching the border"
    boxes = check_boxes(np.concatenate([boxes, [_bbox(lab == border[0], 2)]]), img.shape)
    return p._embedding, torch.tensor(boxes_to_model(boxes, p._prepared), dtype=torch.float32)


def _compare(model, emb, exact_masks=True, **prompts):
    """Fast vs reference: logits and IoU agree, masks agree inside the windows (everywhere when
    ``exact_masks``); returns the FastDecoder."""
    fd = FastDecoder()
    with torch.inference_mode():
        ref, ref_iou = model.decode(emb, fast=False, **prompts)
        out, iou = fd.decode(model.prompt_encoder, model.mask_decoder, emb, prompts.get("boxes"),
                             prompts.get("points"), prompts.get("multimask_output", False), model.input_size)
    assert out.shape == ref.shape and iou.shape == ref_iou.shape
    inside = out != OUTSIDE_LOGIT
    assert inside.any(dim=(-1, -2)).all(), "every prompt gets a window"
    assert (out[inside] - ref[inside]).abs().max() < TOL
    assert (iou - ref_iou).abs().max() < 1e-4
    assert torch.equal((out > 0)[inside], (ref > 0)[inside])
    if exact_masks:  # nothing positive is lost outside the windows
        assert torch.equal(out > 0, ref > 0)
    return fd


def test_boxes_many_and_at_the_border(lite_model, nuclei):
    emb, boxes = nuclei
    _compare(lite_model, emb, boxes=boxes)


def test_one_box(lite_model, nuclei):
    emb, boxes = nuclei
    _compare(lite_model, emb, boxes=boxes[:1])


def test_boxes_with_points_and_points_only(lite_model, nuclei):
    emb, boxes = nuclei
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
    off = centre + torch.tensor([[[6.0, 0.0]]])
    pts = torch.cat([centre, off], 1)
    labels = torch.tensor([[1, 0]]).expand(len(boxes), -1)
    # A negative point can make far-away specks appear outside the box window.
    _compare(lite_model, emb, exact_masks=False, boxes=boxes, points=(pts, labels))
    # Points alone: the whole grid is evaluated, so the masks are the reference masks.
    fd = _compare(lite_model, emb, points=(pts, labels))
    assert fd.windows_enlarged == 0


def test_multimask_output(lite_model, nuclei):
    emb, boxes = nuclei
    _compare(lite_model, emb, boxes=boxes[:5], multimask_output=True)


def test_all_outputs_in_one_pass(lite_model, nuclei):
    """multimask_output="all": the reference's four mask tokens (one-mask output first), and each
    equal to what the one-mask and the multimask calls return on their own."""
    emb, boxes = nuclei
    _compare(lite_model, emb, boxes=boxes[:5], multimask_output="all")
    with torch.inference_mode():
        both, both_iou = lite_model.decode(emb, boxes=boxes[:5], multimask_output="all")
        one, one_iou = lite_model.decode(emb, boxes=boxes[:5])
        three, three_iou = lite_model.decode(emb, boxes=boxes[:5], multimask_output=True)
    assert both.shape == (5, 4, 256, 256)
    assert torch.equal(both[:, :1] > 0, one > 0) and torch.equal(both[:, 1:] > 0, three > 0)
    assert (both_iou - torch.cat([one_iou, three_iou], 1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="multimask_output"):
        lite_model.decode(emb, boxes=boxes[:1], multimask_output="two")


def test_no_prompts_gives_empty_outputs(lite_model, nuclei):
    emb, _ = nuclei
    with torch.inference_mode():
        logits, iou = lite_model.decode(emb, boxes=torch.zeros((0, 4)))
    assert logits.shape == (0, 1, 256, 256) and iou.shape == (0, 1)


def test_large_object_enlarges_the_window(lite_model):
    img, mask = disk_image((256, 256), center=(128, 128), radius=90)
    p = Predictor(lite_model)
    p.set_image(img)
    box = torch.tensor([[36.0, 36.0, 220.0, 220.0]])  # the whole disk (model space = image here)
    # Default margin: the window holds the disk, no enlarging needed.
    fd = _compare(lite_model, p._embedding, boxes=box)
    assert fd.windows_enlarged == 0
    # A window smaller than the box cuts the mask, so the fallback must grow it until the mask
    # no longer touches a window edge, and the result is the reference mask.
    fd = FastDecoder(margin=-8)
    with torch.inference_mode():
        out, _ = fd.decode(lite_model.prompt_encoder, lite_model.mask_decoder, p._embedding, box, None,
                           False, lite_model.input_size)
        ref, _ = lite_model.decode(p._embedding, boxes=box, fast=False)
    assert fd.windows_enlarged >= 1
    assert torch.equal(out > 0, ref > 0)
    assert (ref > 0).sum() > 0.9 * mask.sum()


def test_mask_input_uses_the_reference_path(lite_model, nuclei):
    emb, boxes = nuclei
    with torch.inference_mode():
        low, _ = lite_model.decode(emb, boxes=boxes[:3], fast=False)
        a = lite_model.decode(emb, boxes=boxes[:3], mask_input=low)
        b = lite_model.decode(emb, boxes=boxes[:3], mask_input=low, fast=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gradients_use_the_reference_path(lite_model, nuclei):
    emb, boxes = nuclei
    model = copy.deepcopy(lite_model)
    model.mask_decoder.requires_grad_(True)  # as in decoder fine-tuning
    logits, _ = model.decode(emb, boxes=boxes[:2])
    assert logits.requires_grad  # the fast path runs without gradients
    assert torch.equal(logits, model.decode(emb, boxes=boxes[:2], fast=False)[0])


def test_changed_weights_are_used(lite_model, nuclei):
    """Fine-tuning updates weights in place: the cached weight products must follow."""
    emb, boxes = nuclei
    model = copy.deepcopy(lite_model)
    with torch.inference_mode():
        before, _ = model.decode(emb, boxes=boxes[:4])
    with torch.no_grad():
        model.mask_decoder.transformer.layers[1].norm4.weight.mul_(1.5)
        model.mask_decoder.transformer.layers[0].cross_attn_image_to_token.out_proj.weight.mul_(0.8)
    _compare(model, emb, boxes=boxes[:4])
    with torch.inference_mode():
        after, _ = model.decode(emb, boxes=boxes[:4])
        ref, _ = model.decode(emb, boxes=boxes[:4], fast=False)
    inside = after != OUTSIDE_LOGIT
    assert not torch.equal(before, after)
    assert (after[inside] - ref[inside]).abs().max() < TOL


def test_predictor_masks_match_reference_decoder(lite_model, dsb2018):
    """End to end through Predictor.predict: the same masks as decoding with the reference."""
    img, lab = dsb2018
    p = Predictor(lite_model)
    p.set_image(img)
    boxes = check_boxes(np.array([_bbox(lab == i, 2) for i in range(1, 21)], float), img.shape)
    masks, scores = p.predict(boxes=boxes)
    model_boxes = torch.tensor(boxes_to_model(boxes, p._prepared), dtype=torch.float32)
    with torch.inference_mode():
        low, iou = lite_model.decode(p._embedding, boxes=model_boxes, fast=False)
    ref = lowres_to_masks(low.numpy(), p._prepared, p.spec.preprocessing)[:, 0]
    assert np.array_equal(masks, ref)
    np.testing.assert_allclose(scores, iou[:, 0].numpy(), atol=1e-4)
