"""Whole image or a zoomed crop, per box: the one box-segmentation entry point, ``predict_boxes``.

LiteMedSAM sees a 256 x 256 version of whatever it is given. On a 2048 x 2048 slide a 20 px
nucleus shrinks to 2.5 model pixels and cannot be segmented; on a 128 px crop around it the
nucleus is shown at 40 model pixels. ``predict_boxes`` (used by the napari widget, ``medsam
segment``, ``medsam batch`` and scripts) therefore decides per box (``choose_roi``):

* a box that is big enough on the whole image decodes on the whole-image embedding (encoded
  once through the Predictor's EmbeddingCache, so interactive boxes cost a decode only);
* a small box goes to ROI mode: boxes lying close together share one crop (``plan_rois``), only
  the crop is read (``np.asarray(image[y0:y1, x0:x1])``, so dask/zarr arrays, memory maps and
  multiscale pyramids -- a sequence of arrays, level 0 = full resolution -- are never loaded
  whole) and it is encoded through the Predictor like any image (same crop, no second encode).

Each result is a ``BoxMask``: the mask inside a tight window around its box, because a mask
never extends beyond its box by more than the box margin the model was trained with
(``box_margin``) unless ``clip_to_box=False``.

Intensity: a crop clipped to its own percentiles would be stretched differently from the whole
image, so the whole image and every crop are normalised with one fixed window
(``large_image.global_intensity``, also importable as ``roi.global_intensity``).

Automatic mode choice (``choose_roi``): a box goes to ROI mode when, in whole-image mode, its
longest side would shrink below ``ROI_MAX_MODEL_PX`` model pixels (``side * 256 / max(H, W)``);
the threshold comes from benchmarks/bench_roi.py (see docs/benchmarks.md, "Batch and large images").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .cancel import check_cancel
from .errors import ImageError, PromptError
from .large_image import global_intensity, image_shape, read_crop
from .preprocess import Intensity, check_boxes

#: A box goes to ROI mode when whole-image mode would shrink its longest side below this many
#: model pixels (measured: benchmarks/bench_roi.py).
ROI_MAX_MODEL_PX = 48.0
#: Smallest crop side in image pixels; the crop is resized to the model's 256 px input, so a
#: 128 px crop shows a small object at twice its size (measured better than 256: bench_roi.py).
ROI_MIN_SIDE = 128
#: Crop side = max(ROI_MIN_SIDE, ROI_FACTOR * the longest box side): the box plus context.
ROI_FACTOR = 2.0
#: Context kept around every box inside its crop, as a fraction of the box's longest side (>= 8 px).
ROI_CONTEXT = 0.25
#: Whole-image mode materialises level 0; refuse beyond this many pixels (use ROI mode).
MAX_WHOLE_PIXELS = 8192 * 8192
#: Training box margin as a fraction of the model input side: LiteMedSAM's data loader pushes each
#: side of the object's tight box out by 0..bbox_shift = 5 pixels of its 256 grid (MedSAM: 20 of 1024).
BOX_SHIFT_FRACTION = 5.0 / 256.0
#: Boxes decoded per Predictor.predict call (its masks are image-sized until sliced to their window).
DECODE_CHUNK = 16

ROI_MODES = ("auto", "whole", "roi")


@dataclass(frozen=True)
class RoiGroup:
    """Boxes sharing one crop. window: (y0, y1, x0, x1) half-open image pixels; indices: (n,) box indices."""

    window: tuple[int, int, int, int]
    indices: np.ndarray


# -- planning -------------------------------------------------------------------------------------
def choose_roi(boxes: np.ndarray, shape: tuple[int, int], mode: str = "auto", input_size: int = 256,
               max_model_px: float = ROI_MAX_MODEL_PX, min_side: int = ROI_MIN_SIDE) -> np.ndarray:
    """(N,) bool: True where box i is segmented in ROI mode. boxes: (N, 4) XYXY pixels; shape (H, W).

    "whole" -> all False; "roi" -> all True; "auto" -> True where the box's longest side would
    be below ``max_model_px`` model pixels in whole-image mode; False everywhere when the model
    already sees the image at full resolution or larger (longest side <= ``input_size``, or no
    larger than one crop): a crop would only upsample and lose context, which measured worse on
    every such sample case (MRI and confocal slices, benchmarks/bench_suite.py); True everywhere
    when the image is too large to materialise whole (MAX_WHOLE_PIXELS).
    """
    if mode not in ROI_MODES:
        raise PromptError(f"unknown ROI mode {mode!r}: use auto, whole or roi")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    if mode != "auto":
        return np.full(n, mode == "roi")
    h, w = shape
    if max(h, w) <= max(min_side, input_size):
        return np.zeros(n, bool)
    if h * w > MAX_WHOLE_PIXELS:
        return np.ones(n, bool)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    return side * input_size / max(h, w) < max_model_px


def crop_window(bounds: tuple[float, float, float, float], side: int,
                shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A side x side window centred on bounds (x0, y0, x1, y1 inclusive), shifted inside the image.

    Returns (y0, y1, x0, x1) half-open; an axis shorter than ``side`` is taken whole.
    """
    x0, y0, x1, y1 = bounds
    out = []
    for lo, hi, n in ((y0, y1, shape[0]), (x0, x1, shape[1])):
        s = min(int(side), n)
        start = int(np.floor((lo + hi + 1) / 2 - s / 2))
        start = min(max(start, 0), n - s)
        out += [start, start + s]
    return out[0], out[1], out[2], out[3]


def _fits(boxes: np.ndarray, window: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Every box plus its context (clipped to the image) lies inside the window."""
    y0, y1, x0, x1 = window
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    ctx = np.maximum(8.0, ROI_CONTEXT * side)
    need_x0 = np.maximum(boxes[:, 0] - ctx, 0)
    need_y0 = np.maximum(boxes[:, 1] - ctx, 0)
    need_x1 = np.minimum(boxes[:, 2] + ctx, shape[1] - 1)
    need_y1 = np.minimum(boxes[:, 3] + ctx, shape[0] - 1)
    return bool((need_x0 >= x0).all() and (need_y0 >= y0).all() and (need_x1 < x1).all() and (need_y1 < y1).all())


def _group_window(boxes: np.ndarray, shape, min_side: int, factor: float) -> tuple[int, int, int, int]:
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    crop_side = int(np.ceil(max(min_side, factor * float(side.max()))))
    bounds = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    return crop_window(bounds, crop_side, shape)


def plan_rois(boxes: np.ndarray, shape: tuple[int, int], min_side: int = ROI_MIN_SIDE,
              factor: float = ROI_FACTOR) -> list[RoiGroup]:
    """Group (N, 4) XYXY boxes into crops; each group's crop holds every member box with context.

    Greedy in reading order (by box centre row band, then column); a box joins a nearby group
    when the group's crop, recomputed with it, still holds every member with its context. Only
    groups whose seed lies within two crop sides are tried, so planning stays fast for
    thousands of boxes. Every box is in exactly one group.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    band = max(min_side // 2, 1)
    order = np.lexsort((cx, cy // band))
    members: list[list[int]] = []
    seeds: list[tuple[float, float]] = []
    for i in order:
        placed = False
        for g in range(len(members) - 1, max(-1, len(members) - 64), -1):  # recent groups only
            sy, sx = seeds[g]
            if abs(sy - cy[i]) > 2 * min_side or abs(sx - cx[i]) > 2 * min_side:
                continue
            trial = boxes[members[g] + [int(i)]]
            if _fits(trial, _group_window(trial, shape, min_side, factor), shape):
                members[g].append(int(i))
                placed = True
                break
        if not placed:
            members.append([int(i)])
            seeds.append((float(cy[i]), float(cx[i])))
    groups = []
    for m in members:
        idx = np.array(sorted(m), np.int64)
        groups.append(RoiGroup(_group_window(boxes[idx], shape, min_side, factor), idx))
    return groups


# -- prediction: the one entry point ---------------------------------------------------------------
@dataclass(frozen=True)
class BoxMask:
    """One box's result. window: (y0, y1, x0, x1) half-open image pixels; mask: (y1-y0, x1-x0) bool
    inside that window; score: predicted IoU; roi: True when a crop was encoded for this box;
    clipped: mask pixels removed by ``clip_to_box`` (0 when nothing lay beyond the allowed margin)."""

    window: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    roi: bool
    clipped: int = 0

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as an (H, W) bool array of the whole image."""
        out = np.zeros(shape, bool)
        y0, y1, x0, x1 = self.window
        out[y0:y1, x0:x1] = self.mask
        return out


def box_margin(pre, encoded_shape: tuple[int, int]) -> tuple[float, float]:
    """(x, y) pixels a mask may extend beyond its box on an encoded image (the whole image or a crop).

    LiteMedSAM / MedSAM were trained with boxes = the object's tight box pushed out by 0 to
    ``BOX_SHIFT_FRACTION`` of the model input per side (bbox_shift 5 on the 256 grid, 20 on 1024):
    the reference mask always lay inside the box, at most that far from its edge.
    """
    h, w = encoded_shape
    if getattr(pre, "resize", "longest_side") == "longest_side":
        return (BOX_SHIFT_FRACTION * max(h, w),) * 2
    return BOX_SHIFT_FRACTION * w, BOX_SHIFT_FRACTION * h


def clip_box_mask(mask: np.ndarray, box: np.ndarray, margin: tuple[float, float]) -> np.ndarray:
    """(h, w) bool ``mask`` with the pixels farther than ``margin`` (x, y) outside the XYXY
    ``box`` (same pixel frame) removed, as predict_boxes' ``clip_to_box``."""
    r = _box_mask(mask, 0.0, box, (0, 0), margin, True, False)
    out = np.zeros_like(mask, dtype=bool)
    y0, y1, x0, x1 = r.window
    out[y0:y1, x0:x1] = r.mask
    return out


def _box_mask(mask: np.ndarray, score, box: np.ndarray, offset: tuple[int, int], margin, clip: bool,
              roi: bool) -> BoxMask:
    """mask: (h, w) bool on the encoded image whose top-left is ``offset`` (y, x) in the image; box local."""
    h, w = mask.shape
    mx, my = margin
    # pixels whose index lies within the margin of the box: ceil below, floor above
    wy0, wx0 = max(int(np.ceil(box[1] - my)), 0), max(int(np.ceil(box[0] - mx)), 0)
    wy1, wx1 = min(int(np.floor(box[3] + my)) + 1, h), min(int(np.floor(box[2] + mx)) + 1, w)
    inside = int(mask[wy0:wy1, wx0:wx1].sum())
    beyond = int(mask.sum()) - inside
    if beyond and not clip:  # grow the window to the whole mask
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        wy0, wy1 = min(wy0, int(rows[0])), max(wy1, int(rows[-1]) + 1)
        wx0, wx1 = min(wx0, int(cols[0])), max(wx1, int(cols[-1]) + 1)
    oy, ox = offset
    window = (wy0 + oy, wy1 + oy, wx0 + ox, wx1 + ox)
    return BoxMask(window, mask[wy0:wy1, wx0:wx1].copy(), float(score), roi, beyond if clip else 0)


def _decode_on(predictor, image, window, boxes: np.ndarray, intensity: Intensity, channel, clip: bool,
               roi: bool, chunk: int = DECODE_CHUNK) -> list[BoxMask]:
    """Encode ``image[window]`` (through the predictor's cache) and decode image-pixel ``boxes`` on it."""
    y0, y1, x0, x1 = window
    crop = read_crop(image, window)
    margin = box_margin(predictor.spec.preprocessing, (y1 - y0, x1 - x0))
    local = boxes - np.array([x0, y0, x0, y0], np.float64)
    if np.size(crop) and np.min(crop) == np.max(crop):  # e.g. zero padding, an empty slice of a stack
        warnings.warn(f"{len(boxes)} box(es) lie on a blank area (every pixel = {np.min(crop):g} in the "
                      f"{'crop around them' if roi else 'image or slice'}): nothing to segment there, their "
                      "masks are empty", stacklevel=3)
        empty = np.zeros((y1 - y0, x1 - x0), bool)
        return [_box_mask(empty, 0.0, b, (y0, x0), margin, clip, roi) for b in local]
    predictor.set_image(crop, intensity=intensity, channel=channel)
    out = []
    for s in range(0, len(local), chunk):  # bounded memory: each mask is image-sized until sliced
        masks, scores = predictor.predict(boxes=local[s : s + chunk])
        for m, sc, b in zip(np.asarray(masks, bool), np.asarray(scores), local[s : s + chunk], strict=True):
            out.append(_box_mask(m, sc, b, (y0, x0), margin, clip, roi))
    return out


def decode_crop(predictor, image, window: tuple[int, int, int, int], boxes: np.ndarray, intensity: Intensity,
                channel=None, clip_to_box: bool = True) -> list[BoxMask]:
    """ROI mode for one planned crop (a ``plan_rois`` group): encode ``image[window]`` and decode
    its (n, 4) XYXY image-pixel boxes -> n BoxMasks, each inside ``window``."""
    return _decode_on(predictor, image, window, np.asarray(boxes, np.float64).reshape(-1, 4), intensity, channel,
                      clip_to_box, roi=True)


def iter_box_masks(predictor, image, boxes, mode: str = "auto", intensity: Intensity | None = None,
                   channel=None, clip_to_box: bool = True, cancel=None, min_side: int = ROI_MIN_SIDE,
                   factor: float = ROI_FACTOR) -> Iterator[tuple[np.ndarray, list[BoxMask]]]:
    """predict_boxes one encode at a time: yields (indices into ``boxes`` (n,), n BoxMasks) per encode.

    First the boxes decoded on the whole image (if any), then one item per ROI crop (nearby
    boxes share a crop, see plan_rois). The number of items is ``count_encodes``.
    """
    shape = image_shape(image)
    boxes = check_boxes(boxes, shape) if len(np.asarray(boxes).reshape(-1, 4)) else np.zeros((0, 4))
    use_roi = choose_roi(boxes, shape, mode, predictor.spec.preprocessing.input_size, min_side=min_side)
    window = global_intensity(image, intensity, channel)
    if (~use_roi).any():
        check_cancel(cancel, _CANCELLED)
        if shape[0] * shape[1] > MAX_WHOLE_PIXELS:
            raise ImageError(
                f"the image is {shape[1]} x {shape[0]} pixels, too large for whole-image mode: use roi mode"
            )
        idx = np.flatnonzero(~use_roi)
        yield idx, _decode_on(predictor, image, (0, shape[0], 0, shape[1]), boxes[idx], window, channel,
                              clip_to_box, roi=False)
    roi_idx = np.flatnonzero(use_roi)
    for group in plan_rois(boxes[roi_idx], shape, min_side, factor) if len(roi_idx) else []:
        check_cancel(cancel, _CANCELLED)
        idx = roi_idx[group.indices]
        yield idx, _decode_on(predictor, image, group.window, boxes[idx], window, channel, clip_to_box, roi=True)


def predict_boxes(predictor, image, boxes, mode: str = "auto", intensity: Intensity | None = None,
                  channel=None, clip_to_box: bool = True, cancel=None) -> list[BoxMask]:
    """Segment (N, 4) XYXY boxes (level-0 pixels) on a 2D image -> one BoxMask per box, in box order.

    The one segmentation entry point (widget, ``medsam segment``, ``medsam batch``, scripts).
    image: (H, W) or (H, W, C) array-like (numpy, dask, zarr, memmap) or a multiscale pyramid
    (sequence of arrays, level 0 first). mode: "auto" decides per box (``choose_roi``): a box
    big enough on the whole image decodes on the whole-image embedding, a small one on an ROI
    crop around it; "roi" always crops, "whole" never does. Every encode goes through
    ``predictor.set_image``, so its EmbeddingCache serves repeats: the whole image is encoded
    once for all calls, the same crop never twice. Whole image and crops share one intensity
    window (``global_intensity``); for many calls on a large image pass
    ``global_intensity(image)`` as ``intensity`` to compute it once.
    clip_to_box: drop mask pixels farther outside the box than the training box margin
    (``box_margin``: 5 model pixels); False keeps the decoder's raw mask (the window then
    grows to hold it). cancel: callable or threading.Event, checked before each encode.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out: list[BoxMask | None] = [None] * len(boxes)
    for idx, results in iter_box_masks(predictor, image, boxes, mode, intensity, channel, clip_to_box, cancel):
        for i, r in zip(idx, results, strict=True):
            out[int(i)] = r
    return out  # type: ignore[return-value]


def encode_whole(predictor, image, intensity: Intensity | None = None, channel=None) -> bool:
    """Encode the whole image exactly as predict_boxes' whole-image mode does (same cache key),
    e.g. in the background before the first box is drawn. Returns True on a cache hit."""
    shape = image_shape(image)
    window = global_intensity(image, intensity, channel)
    return bool(predictor.set_image(read_crop(image, (0, shape[0], 0, shape[1])), intensity=window, channel=channel))


def paste_min_id(labels, window: tuple[int, int, int, int], masks: np.ndarray, ids: np.ndarray) -> None:
    """Paste (n, h, w) masks into ``labels[y0:y1, x0:x1]`` in place: where objects overlap the
    smallest id wins, which equals pasting in id order onto background only, whatever the order
    of the calls. ``labels`` may be any writable array-like (numpy, memmap, zarr)."""
    y0, y1, x0, x1 = window
    region = np.asarray(labels[y0:y1, x0:x1]).copy()
    for mask, obj_id in zip(masks, ids, strict=True):
        region[mask & ((region == 0) | (region > obj_id))] = obj_id
    labels[y0:y1, x0:x1] = region


_CANCELLED = "segmentation cancelled; no labels were returned (an ``out`` array may be partly filled)"


def count_encodes(boxes, shape: tuple[int, int], mode: str = "auto", input_size: int = 256,
                  min_side: int = ROI_MIN_SIDE, factor: float = ROI_FACTOR) -> int:
    """How many encodes predict_boxes / segment_large will run (for a progress bar's total)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    use_roi = choose_roi(boxes, shape, mode, input_size, min_side=min_side)
    n_roi = len(plan_rois(boxes[use_roi], shape, min_side, factor)) if use_roi.any() else 0
    return n_roi + int((~use_roi).any())


def segment_large(predictor, image, boxes, mode: str = "auto", intensity: Intensity | None = None,
                  channel=None, out=None, min_side: int = ROI_MIN_SIDE, factor: float = ROI_FACTOR,
                  progress: Callable[[int, int], None] | None = None, cancel=None,
                  clip_to_box: bool = True) -> np.ndarray:
    """Segment (N, 4) XYXY pixel boxes on a 2D image through predict_boxes' path -> (H, W) labels.

    Box i gets id i+1; where masks overlap the earlier box wins (as segment.segment_boxes).
    image and mode as predict_boxes. out: optional writable (H, W) integer array-like to fill
    (e.g. a memmap or zarr array for huge images); default a new uint32 numpy array.
    progress(done, total) after each encode; cancel: a callable or threading.Event checked
    before each encode (CancelledError).
    """
    shape = image_shape(image)
    labels = np.zeros(shape, np.uint32) if out is None else out
    if tuple(labels.shape[:2]) != shape:
        raise ImageError(f"out has shape {labels.shape}, the image {shape}: give an (H, W) array of the image's size")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    total = None
    done = 0
    for idx, results in iter_box_masks(predictor, image, boxes, mode, intensity, channel, clip_to_box, cancel,
                                       min_side, factor):
        for i, r in zip(idx, results, strict=True):
            paste_min_id(labels, r.window, r.mask[None], np.array([i + 1], np.uint32))
        done += 1
        if progress:
            if total is None:
                total = count_encodes(check_boxes(boxes, shape), shape, mode,
                                      predictor.spec.preprocessing.input_size, min_side, factor)
            progress(done, total)
    return labels
