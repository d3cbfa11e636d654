"""Automatic proposals: detector, fitting, score filter + NMS, matching; real model (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.auto import (
    AutoModel,
    DetectorParams,
    box_iou_matrix,
    detect_boxes,
    fit_auto,
    fit_detector,
    label_boxes,
    match,
    nms_masks,
)
from medsam_core.errors import ImageError, PromptError


def _blobs(seed=0, n=6, shape=(96, 96)):
    """Bright squares (with one dim one) on noise -> (image, labels)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(20, 3, shape)
    lab = np.zeros(shape, np.int32)
    for j in range(n):
        y, x = 8 + 28 * (j // 3), 8 + 28 * (j % 3)
        lab[y: y + 14, x: x + 14] = j + 1
        img[y: y + 14, x: x + 14] += 100 if j else 45
    return img.astype(np.float32), lab


class LabelPredictor:
    """Fake decoder: mask = the reference object under the box centre; score from a table."""

    def __init__(self, lab, scores=None):
        self.lab, self.scores = lab, scores or {}

    def set_image(self, image):
        return False

    def predict(self, boxes):
        masks, scores = [], []
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            i = int(self.lab[(y0 + y1) // 2, (x0 + x1) // 2])
            masks.append(self.lab == i if i else np.zeros(self.lab.shape, bool))
            scores.append(self.scores.get(i, 0.9))
        return np.array(masks), np.array(scores, np.float32)


def test_detect_boxes_finds_squares():
    img, lab = _blobs()
    boxes = detect_boxes(img, DetectorParams(sigma=1.0, threshold_scale=0.5, margin=0))
    iou = box_iou_matrix(boxes, label_boxes(lab))
    assert len(boxes) == 6 and (iou.max(0) > 0.7).all()
    assert len(detect_boxes(img, DetectorParams(min_area=500))) == 0
    assert len(detect_boxes(np.zeros((10, 10)))) == 0
    with pytest.raises(ImageError):
        detect_boxes(np.zeros((2, 3, 4, 5)))


def test_fit_detector_prefers_the_threshold_that_finds_the_dim_object():
    img, lab = _blobs()
    grid = {"sigma": (1.0,), "threshold_scale": (0.5, 2.5), "min_area": (10,), "split": (False,)}
    params, f1 = fit_detector([img], [lab], grid)
    assert params.threshold_scale == 0.5 and f1 == pytest.approx(1.0)
    with pytest.raises(PromptError):
        fit_detector([img], [np.zeros_like(lab)], grid)
    with pytest.raises(PromptError):
        fit_detector([img], [lab], {"nonsense": (1,)})


def test_match_exact():
    lab = np.zeros((20, 20), np.int32)
    lab[0:5, 0:5], lab[10:20, 10:20] = 1, 2
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 0:5, 0:5] = True  # perfect
    masks[1, 10:20, 10:15] = True  # IoU 0.5 with object 2: counts
    masks[2, 0:2, 15:20] = True  # false positive
    r = match(masks, lab)
    assert (r.matched, r.n_pred, r.n_ref) == (2, 3, 2)
    assert r.recall == 1.0 and r.precision == pytest.approx(2 / 3)
    assert r.mean_dice == pytest.approx((1.0 + 100 / 150) / 2)
    assert match(np.zeros((0, 20, 20), bool), lab).recall == 0.0


def test_nms_keeps_best_of_duplicates():
    m = np.zeros((3, 10, 10), bool)
    m[0, :5], m[1, :6], m[2, 7:] = True, True, True
    assert nms_masks(m, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def test_auto_model_filters_by_score_and_fits_threshold():
    img, lab = _blobs()
    pred = LabelPredictor(lab, scores={3: 0.2})  # the decoder is unsure of object 3
    auto = AutoModel(DetectorParams(threshold_scale=0.5), min_score=0.5)
    props = auto.propose(pred, img)
    assert len(props.masks) == 5 and not any((m & (lab == 3)).any() for m in props.masks)
    labels = props.to_labels()
    assert labels.max() == 5 and (labels > 0).sum() == ((lab > 0) & (lab != 3)).sum()
    # fitted on an image where object 3 is real, min_score must stay below 0.2
    fitted = fit_auto(pred, [img], [lab], grid={"threshold_scale": (0.5,), "split": (False,)})
    assert fitted.min_score < 0.2 and AutoModel.from_dict(fitted.to_dict()) == fitted


@pytest.mark.slow
def test_real_model_finds_most_held_out_nuclei(lite_model, dsb2018):
    from medsam_core import Predictor

    image, labels = dsb2018
    pred = Predictor(lite_model)
    auto = fit_auto(pred, [image[:256, :256]], [labels[:256, :256]],
                    grid={"sigma": (1.0,), "min_area": (30,), "threshold_scale": (1.0,)})
    r = match(auto.propose(pred, image[256:, 256:]).masks, labels[256:, 256:])
    assert r.recall > 0.4 and r.precision > 0.5 and r.mean_dice > 0.75
