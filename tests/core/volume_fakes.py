"""Synthetic volumes and fakes for the 3D tests (propagation logic does not depend on the model)."""

from __future__ import annotations

import numpy as np

FG, BG = 200, 20


def ellipsoid(shape=(40, 64, 80), center=(20, 32, 40), radii=(10.5, 15, 20)) -> np.ndarray:
    """(Z, Y, X) bool ellipsoid."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = sum(((g - c) / s) ** 2 for g, c, s in zip((zz, yy, xx), center, radii, strict=True))
    return r <= 1.0


def render(truth: np.ndarray, fg=FG, bg=BG) -> np.ndarray:
    """Bright object on a dark background, uint16 (so intensity handling is not the uint8 identity)."""
    return np.where(truth, fg, bg).astype(np.uint16)


def bbox(mask2d: np.ndarray, pad: float = 0.0) -> np.ndarray:
    rows = np.flatnonzero(mask2d.any(axis=1))
    cols = np.flatnonzero(mask2d.any(axis=0))
    return np.array([cols[0] - pad, rows[0] - pad, cols[-1] + pad, rows[-1] + pad], float)


class FakePredictor:
    """Duck-typed Predictor: the mask is the bright pixels (> threshold) inside the box.

    score_fn(image) -> predicted IoU (default 0.9). Records every box and intensity it gets.
    """

    def __init__(self, score_fn=None, threshold=100, multimask_fn=None):
        self.threshold = threshold
        self.multimask_fn = multimask_fn
        self.score_fn = score_fn or (lambda image: 0.9)
        self.boxes: list[np.ndarray] = []
        self.mask_inputs: list = []
        self.intensities = []
        self.images = 0

    def set_image(self, image, intensity=None):
        self.image = np.asarray(image)
        self.intensities.append(intensity)
        self.images += 1
        return False

    def predict(self, boxes, mask_input=None, multimask_output=False):
        """Like Predictor.predict: unpacks as (masks, scores); ``low_res_logits`` (1, 1, 256, 256)
        are filled with the call's number, so a test can tell which slice's logits came back.
        ``multimask_output=True``: (1, 3, H, W) masks from ``multimask_fn(mask) -> three masks``
        (default: the same mask three times); not recorded in ``boxes``. ``"all"``: (1, 4, H, W),
        the one-mask output then those three, recorded as one call."""
        box = np.asarray(boxes, float)[0]
        mask = self._mask(box)
        three = np.stack(self.multimask_fn(mask) if self.multimask_fn else [mask] * 3)
        if multimask_output is True:
            return FakePrediction(three[None], np.full((1, 3), 0.5, np.float32), np.zeros((1, 3, 256, 256), np.float32))
        self.boxes.append(box)
        self.mask_inputs.append(None if mask_input is None else float(np.asarray(mask_input).flat[0]))
        score = np.array([self.score_fn(self.image)], np.float32)
        logits = np.full((1, 1, 256, 256), float(len(self.boxes)), np.float32)
        if multimask_output == "all":
            return FakePrediction(np.concatenate([mask[None], three])[None], np.concatenate([score, [0.5] * 3])[None],
                                  np.repeat(logits, 4, axis=1))
        return FakePrediction(mask[None], score, logits)


    def _mask(self, box):
        h, w = self.image.shape
        yy, xx = np.mgrid[:h, :w]
        inside = (xx >= box[0]) & (xx <= box[2]) & (yy >= box[1]) & (yy <= box[3])
        return (self.image > self.threshold) & inside


class FakePrediction(tuple):
    def __new__(cls, masks, scores, low_res_logits):
        obj = super().__new__(cls, (masks, scores))
        obj.low_res_logits = low_res_logits
        return obj


def fake_model(encoder_id: str = "fake-encoder"):
    """A model for the real Predictor: the "embedding" is the input image, losslessly packed
    ((1, 256, 256) -> (16, 64, 64) by pixel unshuffle); decoding thresholds it inside the box.
    On 256 x 256 slices (no resizing) masks are exactly bright-pixels-inside-the-box."""
    import torch
    import torch.nn.functional as F

    from medsam_core.registry import get_spec

    class FakeModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.spec = get_spec("lite_medsam")
            self.encoder_id = encoder_id

        def encode(self, images):
            packed = F.pixel_unshuffle(images[:, :1], 4)  # (B, 16, 64, 64)
            return torch.cat([packed, torch.zeros(len(images), 240, 64, 64)], dim=1)

        def decode(self, embedding, boxes=None, points=None, mask_input=None, multimask_output=False):
            img = F.pixel_shuffle(embedding[:, :16], 4)[0, 0]  # (256, 256) in [0, 1]
            yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
            b = boxes[:, :, None, None]
            inside = (xx >= b[:, 0]) & (xx <= b[:, 2]) & (yy >= b[:, 1]) & (yy <= b[:, 3])
            logits = torch.where(inside & (img > 0.5), 10.0, -10.0)[:, None]
            m = {False: 1, True: 3, "all": 4}[multimask_output]
            return logits.repeat(1, m, 1, 1), torch.full((len(boxes), m), 0.9)

    return FakeModel()
