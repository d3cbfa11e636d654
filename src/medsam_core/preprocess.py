"""From a user's array to the model's input, and prompts and masks to and from model space.

Order, as in the models' training pipelines: channels -> intensity to [0, 255] -> resize ->
normalise -> pad. LiteMedSAM: resize the longest side to 256 with area interpolation (OpenCV
INTER_AREA semantics, reimplemented as separable weight matrices), min-max to [0, 1], pad
bottom/right with zeros to 256x256. MedSAM ViT-B: squash to 1024x1024 with order-3 anti-aliased
resampling, min-max. SAM ViT-B: longest side 1024, bilinear, ImageNet mean/std, pad.

Intensity presets turn real data (uint8, uint16, float, negative CT values) into the 0-255
range the models were trained on (MedSAM's data pipeline: CT window, or 0.5-99.5 percentile
clipping of the non-zero pixels for MR, microscopy and other modalities -- whatever the dtype,
8-bit included; "as_is" is the explicit opt-out for 8-bit data that is already windowed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ._blas import one_blas_thread
from .errors import ImageError, PromptError
from .postprocess import logits_to_mask, lowres_to_masks  # noqa: F401  (masks back in pixels; re-exported)
from .registry import Preprocessing

#: CT windows as (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),  # MedSAM's default for CT
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}

CHANNEL_MODES = ("auto", "rgb", "mean", "max")
INTENSITY_MODES = ("auto", "percentile", "as_is", "ct", "range", "minmax")


@dataclass(frozen=True)
class Intensity:
    """How raw intensities map to 0-255.

    mode:
      "auto"       the training pipeline's rule for non-CT data, for every dtype (uint8 too):
                   clip to the ``low``/``high`` percentiles of the non-zero pixels, scale;
      "percentile" the same, named explicitly;
      "as_is"      the values already are the 0-255 picture to segment (8-bit data windowed
                   beforehand): used unchanged; values outside 0..255 raise ImageError;
      "ct"         clip to ``window`` = (level, width) in HU, or a name from CT_WINDOWS;
      "range"      clip to ``value_range`` = (lo, hi), e.g. a napari layer's contrast limits;
      "minmax"     scale min..max, no clipping.
    """

    mode: str = "auto"
    low: float = 0.5
    high: float = 99.5
    window: tuple[float, float] | str | None = None
    value_range: tuple[float, float] | None = None
    nonzero: bool = True
    # Version of the presets' rules; part of repr, hence of every embedding-cache key, so a disk
    # cache never serves embeddings made under an older rule (2: "auto" clips uint8 too).
    rules: int = field(default=2, init=False)

    def __post_init__(self):
        if self.mode not in INTENSITY_MODES:
            raise ImageError(f"unknown intensity mode {self.mode!r}: use {', '.join(INTENSITY_MODES)}")
        if self.mode == "ct":
            if isinstance(self.window, str) and self.window not in CT_WINDOWS:
                raise ImageError(f"unknown CT window {self.window!r}; known: {', '.join(CT_WINDOWS)}")
            if self.window is None:
                object.__setattr__(self, "window", "soft_tissue")
        if self.mode == "range" and (self.value_range is None or not self.value_range[1] > self.value_range[0]):
            raise ImageError(f"intensity range {self.value_range} must be (low, high) with high > low")
        if not 0 <= self.low < self.high <= 100:
            raise ImageError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")

    def describe(self) -> str:
        return repr(self)

    @staticmethod
    def ct(window: str | tuple[float, float] = "soft_tissue") -> Intensity:
        return Intensity(mode="ct", window=window)


def check_image(image) -> np.ndarray:
    """Validate an image: (H, W) or (H, W, C), numeric, finite, not constant."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise ImageError(f"image dtype {arr.dtype} is not numeric; pass an integer or float array")
    if arr.ndim not in (2, 3):
        raise ImageError(
            f"image must be 2D (H, W) or channels-last (H, W, C); got shape {arr.shape}. "
            "For a stack, pass one slice (or use segment_volume)."
        )
    if arr.ndim == 3 and arr.shape[2] > 16:
        raise ImageError(
            f"image of shape {arr.shape} looks like a stack, not channels-last colour; pass one 2D slice"
        )
    if min(arr.shape[:2]) < 2:
        raise ImageError(f"image of shape {arr.shape} is too small to segment")
    if arr.size == 0:
        raise ImageError(f"image of shape {arr.shape} has no channels")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ImageError(
                f"image has {int(bad.sum())} NaN/inf pixels; replace them first "
                "(e.g. np.nan_to_num(image, nan=0.0)) so they do not distort the intensity scaling"
            )
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise ImageError(f"image is constant (every pixel = {lo}): there is nothing to segment")
    return arr


def to_grey_or_rgb(image: np.ndarray, channel: int | str | None = "auto") -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W) grey or (H, W, 3) RGB.

    channel: "auto" (1 channel -> grey, 3 -> RGB, RGBA -> RGB, otherwise mean), "rgb", "mean",
    "max", or an int index.
    """
    if image.ndim == 2:
        return image
    c = image.shape[2]
    if channel is None:
        channel = "auto"
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not -c <= channel < c:
            raise ImageError(f"channel {channel} does not exist: the image has {c} channels (0..{c - 1})")
        return image[:, :, int(channel)]
    if channel not in CHANNEL_MODES:
        raise ImageError(f"channel must be an index or one of {CHANNEL_MODES}, got {channel!r}")
    if channel == "auto":
        channel = "grey" if c == 1 else "rgb" if c in (3, 4) else "mean"
    if channel == "grey":
        return image[:, :, 0]
    if channel == "rgb":
        if c not in (3, 4):
            raise ImageError(f"channel='rgb' needs 3 (or RGBA 4) channels, the image has {c}")
        return image[:, :, :3]
    if channel == "mean":
        return image.mean(axis=2, dtype=np.float64).astype(np.float32)
    return image.max(axis=2)


def intensity_to_255(image: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Map intensities to float32 in [0, 255] according to ``intensity`` (see Intensity)."""
    intensity = intensity or Intensity()
    img = np.asarray(image)
    mode = "percentile" if intensity.mode == "auto" else intensity.mode
    if mode == "as_is":
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"intensity 'as_is' needs values in 0..255 (already windowed 8-bit data); this image spans "
                f"{lo:g}..{hi:g}: use 'auto' (percentile clip, the training pipeline's rule) or a range"
            )
        return img.astype(np.float32)
    if mode == "ct":
        w = intensity.window
        level, width = CT_WINDOWS[w] if isinstance(w, str) else w
        lo, hi = level - width / 2.0, level + width / 2.0
    elif mode == "range":
        lo, hi = intensity.value_range
    elif mode == "minmax":
        lo, hi = float(img.min()), float(img.max())
    else:
        values = img[img > 0] if intensity.nonzero and (img > 0).any() else img
        lo, hi = np.percentile(values, [intensity.low, intensity.high])
        if hi <= lo:  # a sparse image (e.g. a few bright spots): fall back to the full range
            lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        raise ImageError(
            f"intensity window [{lo}, {hi}] is empty for this image; choose another window or preset"
        )
    with np.errstate(over="ignore"):
        in_float32 = np.isfinite([np.float32(lo), np.float32(hi), np.float32(255.0 / (hi - lo))]).all()
    if not in_float32 or np.float32(hi) <= np.float32(lo):  # float64 data beyond float32 (1e300, 1e-300):
        return ((np.clip(img, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)  # scaled first (was NaN)
    out = (np.clip(img.astype(np.float32), lo, hi) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return out


def longest_side_size(h: int, w: int, target: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side = target, rounded half up (as LiteMedSAM does); a side
    never shrinks below one pixel (an image over 512 times longer than wide, e.g. a kymograph)."""
    scale = target / max(h, w)
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


def area_weights(old: int, new: int, shrink: bool | None = None) -> np.ndarray:
    """(new, old) float64 resampling matrix with OpenCV INTER_AREA semantics.

    When the image shrinks (along both axes), each output pixel averages the input interval it
    covers, fractional overlaps weighted; otherwise OpenCV uses area-mode linear weights.
    """
    scale = old / new
    shrink = scale >= 1.0 if shrink is None else shrink
    w = np.zeros((new, old), dtype=np.float64)
    if shrink:
        edges = np.arange(new + 1) * scale
        for i in range(new):
            a, b = edges[i], min(edges[i + 1], old)
            for j in range(int(np.floor(a)), int(np.ceil(b))):
                w[i, j] = (min(b, j + 1) - max(a, j)) / scale
        return w
    inv = new / old
    scale = 1.0 / inv  # OpenCV's arithmetic: floor(i * scale) must round the same way
    for i in range(new):
        sx = int(np.floor(i * scale))
        fx = float(np.float32((i + 1) - (sx + 1) * inv))
        fx = 0.0 if fx <= 0 else fx - np.floor(fx)
        if sx >= old - 1:
            sx, fx = old - 1, 0.0
        w[i, sx] += 1.0 - fx
        w[i, min(sx + 1, old - 1)] += fx
    return w


def resize_area(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Separable area resize of (H, W) or (H, W, C) float32 to (new_h, new_w[, C])."""
    h, w = image.shape[:2]
    shrink = h >= new_h and w >= new_w  # OpenCV's test: both axes shrink, else linear weights
    wy = _area_weights_f32(h, new_h, shrink)
    wx = _area_weights_f32(w, new_w, shrink)
    with one_blas_thread():  # BLAS threads left spinning would slow the encoder that runs next
        if image.ndim == 2:
            return wy @ image @ wx.T
        return np.einsum("ih,hwc,jw->ijc", wy, image, wx, optimize=True)


@functools.lru_cache(maxsize=32)
def _area_weights_f32(old: int, new: int, shrink: bool) -> np.ndarray:
    """``area_weights`` as float32, kept per size: a volume's slices all share one size."""
    w = area_weights(old, new, shrink).astype(np.float32)
    w.flags.writeable = False
    return w


@dataclass(frozen=True)
class PreparedImage:
    """The model input and the geometry needed to map prompts and masks back."""

    tensor: np.ndarray  # (3, S, S) float32
    original_size: tuple[int, int]  # (H, W)
    resized_size: tuple[int, int]  # (h, w) of the image inside the S x S input
    scale_xy: tuple[float, float]  # model pixels per image pixel, along x and y
    input_size: int


_IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)[:, None, None]
_IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)[:, None, None]


def prepare_image(image, pre: Preprocessing, intensity: Intensity | None = None,
                  channel: int | str | None = "auto") -> PreparedImage:
    """(H, W) or (H, W, C) array -> PreparedImage for a model with preprocessing ``pre``."""
    arr = check_image(image)
    arr = to_grey_or_rgb(arr, channel)
    img = intensity_to_255(arr, intensity)
    h, w = img.shape[:2]
    size = pre.input_size
    if pre.resize == "longest_side":
        nh, nw = longest_side_size(h, w, size)
        scale_xy = (size / max(h, w),) * 2
    else:
        nh, nw = size, size
        scale_xy = (size / w, size / h)
    img = _resize(img, nh, nw, pre.interpolation)
    if img.ndim == 2:
        img = np.repeat(img[None], 3, axis=0)
    else:
        img = np.ascontiguousarray(img.transpose(2, 0, 1))
    if pre.normalize == "minmax":
        lo, hi = img.min(), img.max()
        img = (img - lo) / max(hi - lo, 1e-8)
    else:
        img = (img - _IMAGENET_MEAN) / _IMAGENET_STD
    out = np.zeros((3, size, size), np.float32)
    out[:, :nh, :nw] = img
    return PreparedImage(out, (h, w), (nh, nw), scale_xy, size)


def _resize(img: np.ndarray, nh: int, nw: int, method: str) -> np.ndarray:
    if img.shape[:2] == (nh, nw):
        return img.astype(np.float32, copy=False)
    if method == "area":
        return resize_area(img.astype(np.float32, copy=False), nh, nw)
    if method == "bicubic_aa":
        from skimage.transform import resize

        shape = (nh, nw) + img.shape[2:]
        return resize(img, shape, order=3, preserve_range=True, mode="constant", anti_aliasing=True).astype(
            np.float32
        )
    if method == "bilinear":
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        t = t[0, 0] if img.ndim == 2 else t[0].permute(1, 2, 0)
        return t.numpy()
    raise ValueError(f"unknown interpolation {method!r}")


def check_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray:
    """Validate (N, 4) XYXY pixel boxes against an (H, W) image; clip to the image.

    Raises PromptError for wrong shapes, non-finite values, reversed or empty boxes, and boxes
    entirely outside the image.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"boxes must be numbers (x_min, y_min, x_max, y_max in pixels): {exc}") from exc
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise PromptError(f"boxes must be an (N, 4) array of x_min, y_min, x_max, y_max; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError("boxes contain NaN or inf coordinates")
    h, w = image_size
    for i, (x0, y0, x1, y1) in enumerate(arr):
        if x1 < x0 or y1 < y0:
            raise PromptError(
                f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is reversed: boxes are XYXY "
                "(x_min, y_min, x_max, y_max) in pixels"
            )
        if x1 >= w or y1 >= h or x0 < 0 or y0 < 0:
            if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
                raise PromptError(
                    f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image (x < {w}, y < {h})"
                )
    clipped = arr.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w - 1)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h - 1)
    small = (clipped[:, 2] - clipped[:, 0] < 1) | (clipped[:, 3] - clipped[:, 1] < 1)
    if small.any():
        i = int(np.flatnonzero(small)[0])
        raise PromptError(
            f"box {i} ({', '.join(f'{v:g}' for v in np.round(arr[i], 2))}) is empty or thinner than one pixel "
            "inside the image; "
            "draw a box around the whole object"
        )
    return clipped


def boxes_to_model(boxes: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    sx, sy = prepared.scale_xy
    return boxes * np.array([sx, sy, sx, sy])


def points_to_model(points: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    sx, sy = prepared.scale_xy
    return points * np.array([sx, sy])
