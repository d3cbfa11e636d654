"""A picture a person can look at: the image with coloured label outlines and the prompt boxes.

Drawn with NumPy and scikit-image only (no matplotlib).
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np

from ._atomic import mkstemp_readable
from .errors import ImageError

BOX_COLOUR = (255, 255, 0)


def label_colours(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 colours; row k is the colour of label k (row 0 unused), well separated hues."""
    hues = (np.arange(n + 1) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return (np.asarray(rgb) * 255).astype(np.uint8)


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) image -> (H, W, 3) uint8, 0.5-99.5 percentile stretched (uint8 kept)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3] if img.shape[-1] >= 3 else img.mean(axis=-1)
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1.0
        img = (np.clip((f - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else np.ascontiguousarray(img)


def render_overlay(image: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None = None,
                   upscale: int | None = None) -> np.ndarray:
    """(H, W[, C]) image, (H, W) labels, (N, 4) XYXY boxes -> (H*s, W*s, 3) uint8 RGB picture.

    Label outlines in per-id colours (``label_colours``), boxes in yellow. ``upscale`` s defaults
    to 2 for images up to 512 px (thin outlines stay visible), else 1.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if labels.shape != np.asarray(image).shape[:2]:
        raise ImageError(f"labels {labels.shape} and image {np.asarray(image).shape} differ in size")
    s = upscale or (2 if max(labels.shape) <= 512 else 1)
    rgb = to_display(image)
    rgb = np.repeat(np.repeat(rgb, s, 0), s, 1)
    big = np.repeat(np.repeat(labels, s, 0), s, 1)
    edges = find_boundaries(big, mode="inner")
    colours = label_colours(int(big.max()))
    rgb[edges] = colours[big[edges]]
    for box in np.asarray(boxes if boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
        draw_box(rgb, box * s + np.array([0, 0, s - 1, s - 1]))
    return rgb


def draw_box(rgb: np.ndarray, box, colour=BOX_COLOUR) -> None:
    """Draw the 1-px outline of an XYXY box (inclusive pixel corners) into (H, W, 3) ``rgb``, clipped."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, w - 1), max(y0, 0), min(y1, h - 1)
    if cx0 > cx1 or cy0 > cy1:
        return
    for y in (y0, y1):
        if 0 <= y < h:
            rgb[y, cx0 : cx1 + 1] = colour
    for x in (x0, x1):
        if 0 <= x < w:
            rgb[cy0 : cy1 + 1, x] = colour


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 picture to ``path`` atomically (temp file + os.replace)."""
    from skimage import io as skio

    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise ImageError(f"overlay file {path.name} must end in .png")
    if not path.parent.is_dir():
        raise ImageError(f"folder {path.parent} does not exist; create it first")
    fd, tmp = mkstemp_readable(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        skio.imsave(tmp, rgb, check_contrast=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
