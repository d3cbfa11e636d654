"""Fakes for ROI and batch tests: a box-filling predictor and an array that records every read."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class BoxFillPredictor:
    """Stands in for Predictor: each box's mask is the box itself (inclusive) grown by ``bleed`` pixels
    per side (clipped to the image), in the coordinates of the image last set; records every image
    (shape), intensity and box it was given. ``keep_images`` also keeps a copy of every image."""

    def __init__(self, input_size: int = 256, bleed: int = 0, keep_images: bool = False):
        self.spec = SimpleNamespace(preprocessing=SimpleNamespace(input_size=input_size, resize="longest_side"))
        self.bleed = bleed
        self.keep_images = keep_images
        self.shapes: list[tuple[int, ...]] = []
        self.intensities: list = []
        self.images: list = []
        self.boxes: list[np.ndarray] = []
        self.encoder_calls = 0

    def set_image(self, image, intensity=None, channel=None):
        image = np.asarray(image)
        self.shapes.append(image.shape)
        self.intensities.append(intensity)
        if self.keep_images:
            self.images.append((image.copy(), intensity))
        self.encoder_calls += 1
        self.shape = image.shape[:2]
        return False

    def predict(self, boxes):
        boxes = np.asarray(boxes, np.float64)
        self.boxes.append(boxes)
        masks = np.zeros((len(boxes), *self.shape), bool)
        b = self.bleed
        for m, (x0, y0, x1, y1) in zip(masks, np.round(boxes).astype(int), strict=True):
            assert 0 <= x0 <= x1 < self.shape[1] and 0 <= y0 <= y1 < self.shape[0], "box outside the crop"
            m[max(y0 - b, 0) : y1 + 1 + b, max(x0 - b, 0) : x1 + 1 + b] = True
        return masks, np.ones(len(boxes), np.float32)


class RecordingArray:
    """A lazy (H, W) array-like over a function; records every read; refuses to be read whole.

    fill(y0, y1, x0, x1) -> the (y1-y0, x1-x0) block. Strided reads (a subsample) are allowed.
    """

    def __init__(self, shape, dtype, fill, max_pixels: int | None = None):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.fill = fill
        self.reads: list[tuple] = []
        self.max_pixels = max_pixels if max_pixels is not None else (shape[0] * shape[1]) // 4

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole lazy array was materialised (__array__)")

    def __getitem__(self, key):
        if not isinstance(key, tuple) or len(key) != 2 or not all(isinstance(k, slice) for k in key):
            raise AssertionError(f"unexpected index {key!r}")
        (ys, ye, ystep), (xs, xe, xstep) = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        self.reads.append((ys, ye, ystep, xs, xe, xstep))
        npix = len(range(ys, ye, ystep)) * len(range(xs, xe, xstep))
        if npix > self.max_pixels:
            raise AssertionError(f"a read of {npix} pixels ({key!r}) is too large: the image is loaded whole")
        if ystep == 1 and xstep == 1:
            return self.fill(ys, ye, xs, xe)
        rows = [self.fill(y, y + 1, xs, xe)[0, ::xstep] for y in range(ys, ye, ystep)]
        return np.stack(rows)
