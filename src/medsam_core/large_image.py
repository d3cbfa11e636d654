"""Reading large or lazy images without loading them whole: levels, shape, crops, the intensity window.

An image here is an (H, W) or channels-last (H, W, C) array-like (numpy, memory map, dask, zarr) or a
multiscale pyramid (a sequence of such arrays, level 0 = full resolution, or an object with a
``levels`` list such as ``wsi.Pyramid``). ROI mode (``roi``), whole slides (``wsi``, ``slide``) and the
label store read through these helpers, so only the crops they need are materialised.

Intensity: with ``Intensity("auto")`` each image is clipped to its own 0.5-99.5 percentiles. A crop
clipped on its own would be stretched differently from the whole image (a dim nucleus on an empty
crop would become as bright as the brightest one). ``global_intensity`` computes the window once from
the whole image -- or, for large or lazy images, from the coarsest pyramid level or a strided
subsample of at most ``SAMPLE_SIDE`` pixels per side -- and the whole image and every crop are
normalised with that fixed ``Intensity(mode="range", value_range=(lo, hi))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ImageError
from .preprocess import Intensity, to_grey_or_rgb

#: Longest side of the subsample used for the intensity window of a large or lazy image.
SAMPLE_SIDE = 2048


def levels_of(image) -> list:
    """An image or a multiscale pyramid (sequence of arrays, level 0 first, or an object with a
    ``levels`` list such as ``wsi.Pyramid``) -> list of levels."""
    if isinstance(getattr(image, "levels", None), list):
        image = image.levels
    if isinstance(image, Sequence) and not isinstance(image, str):
        levels = list(image)
        if not levels:
            raise ImageError("the multiscale image has no levels; level 0 must be the full-resolution array")
        return levels
    return [image]


def image_shape(image) -> tuple[int, int]:
    """(H, W) of level 0 of an (H, W) or (H, W, C) array-like or pyramid, without reading pixels."""
    level0 = levels_of(image)[0]
    shape = tuple(int(s) for s in getattr(level0, "shape", ()))
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > 16):
        raise ImageError(
            f"ROI mode takes a 2D (H, W) or channels-last (H, W, C) image; got shape {shape}. "
            "For a stack, pass one slice."
        )
    return shape[0], shape[1]


def read_crop(image, window: tuple[int, int, int, int]) -> np.ndarray:
    """Materialise only ``image[y0:y1, x0:x1]`` of level 0 -> (h, w[, C]) numpy array."""
    y0, y1, x0, x1 = window
    return np.asarray(levels_of(image)[0][y0:y1, x0:x1])


def _subsample(image) -> np.ndarray:
    """A small in-memory view for statistics: coarsest level, strided to <= SAMPLE_SIDE per side."""
    level = levels_of(image)[-1]
    h, w = int(level.shape[0]), int(level.shape[1])
    step = max(1, -(-max(h, w) // SAMPLE_SIDE))
    try:
        return np.asarray(level[::step, ::step])
    except (IndexError, ValueError, TypeError, NotImplementedError):
        # an array type without strided reads (some zarr versions): one row at a time, strided here
        return np.stack([np.asarray(level[y : y + 1, :])[0, ::step] for y in range(0, h, step)])


def global_intensity(image, intensity: Intensity | None = None, channel=None) -> Intensity:
    """The fixed intensity window every crop of ``image`` is normalised with.

    "auto" / "percentile" (every dtype, uint8 included): percentiles of the whole image's
    non-zero pixels (from the coarsest level or a strided subsample for large images) ->
    Intensity("range"). "minmax": min..max of that sample -> Intensity("range"). "ct", "range"
    and "as_is" do not depend on the image and are returned unchanged.
    """
    intensity = intensity or Intensity()
    if intensity.mode in ("ct", "range", "as_is"):
        return intensity
    sample = to_grey_or_rgb(np.asarray(_subsample(image)), channel if channel is not None else "auto")
    sample = sample.astype(np.float64, copy=False)
    if intensity.mode == "minmax":
        lo, hi = float(sample.min()), float(sample.max())
    else:
        values = sample[sample > 0] if intensity.nonzero and (sample > 0).any() else sample
        lo, hi = (float(v) for v in np.percentile(values, [intensity.low, intensity.high]))
        if hi <= lo:
            lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        raise ImageError(f"the image looks constant (every sampled pixel = {lo}): there is nothing to segment")
    return Intensity(mode="range", value_range=(lo, hi))
