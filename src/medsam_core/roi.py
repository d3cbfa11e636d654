"""Region-of-interest (ROI) mode for large 2D images: encode a crop around the boxes, not the image.

LiteMedSAM sees a 256 x 256 version of whatever it is given. On a 2048 x 2048 slide a 20 px
nucleus shrinks to 2.5 model pixels and cannot be segmented; on a 128 px crop around it the
nucleus is shown at 40 model pixels. ROI mode therefore:

1. groups boxes that lie close together so that one crop serves them all (a crowded slide is
   encoded once per neighbourhood, not once per nucleus), see ``plan_rois``;
2. reads only the crop, ``np.asarray(image[y0:y1, x0:x1])``, so dask/zarr arrays, memory maps
   and multiscale pyramids (a sequence of arrays, level 0 = full resolution) are never loaded
   whole;
3. encodes the crop through the Predictor (its EmbeddingCache keys by the crop's content, so the
   same crop is never encoded twice), predicts with the boxes shifted to crop coordinates and
   pastes the masks back at the crop's place.

Intensity: with ``Intensity("auto")`` each image is clipped to its own 0.5-99.5 percentiles. A
crop clipped on its own would be stretched differently from the whole image (a dim nucleus on
an empty crop would become as bright as the brightest one). ``global_intensity`` computes the
window once from the whole image -- or, for large or lazy images, from the coarsest pyramid
level or a strided subsample of at most ``SAMPLE_SIDE`` pixels per side -- and every crop is
normalised with that fixed ``Intensity(mode="range", value_range=(lo, hi))``.

Automatic mode choice (``choose_roi``): a box goes to ROI mode when, in whole-image mode, its
longest side would shrink below ``ROI_MAX_MODEL_PX`` model pixels (``side * 256 / max(H, W)``);
the threshold comes from benchmarks/bench_roi.py (see docs/benchmarks.md, "Batch and large images").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CancelledError, ImageError, PromptError
from .preprocess import Intensity, check_boxes, to_grey_or_rgb

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
#: Longest side of the subsample used for the intensity window of a large or lazy image.
SAMPLE_SIDE = 2048
#: Whole-image mode materialises level 0; refuse beyond this many pixels (use ROI mode).
MAX_WHOLE_PIXELS = 8192 * 8192

ROI_MODES = ("auto", "whole", "roi")


@dataclass(frozen=True)
class RoiGroup:
    """Boxes sharing one crop. window: (y0, y1, x0, x1) half-open image pixels; indices: (n,) box indices."""

    window: tuple[int, int, int, int]
    indices: np.ndarray


# -- image access ---------------------------------------------------------------------------------
def levels_of(image) -> list:
    """An image or a multiscale pyramid (sequence of arrays, level 0 first) -> list of levels."""
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

    "auto" (non-uint8) / "percentile": percentiles of the whole image's non-zero pixels (from
    the coarsest level or a strided subsample for large images) -> Intensity("range").
    "minmax": min..max of that sample -> Intensity("range"). uint8 "auto", "ct" and "range" do
    not depend on the image and are returned unchanged.
    """
    intensity = intensity or Intensity()
    if intensity.mode in ("ct", "range"):
        return intensity
    level0 = levels_of(image)[0]
    if intensity.mode == "auto" and np.dtype(level0.dtype) == np.uint8:
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


# -- planning -------------------------------------------------------------------------------------
def choose_roi(boxes: np.ndarray, shape: tuple[int, int], mode: str = "auto", input_size: int = 256,
               max_model_px: float = ROI_MAX_MODEL_PX, min_side: int = ROI_MIN_SIDE) -> np.ndarray:
    """(N,) bool: True where box i is segmented in ROI mode. boxes: (N, 4) XYXY pixels; shape (H, W).

    "whole" -> all False; "roi" -> all True; "auto" -> True where the box's longest side would
    be below ``max_model_px`` model pixels in whole-image mode, and False everywhere when the
    image is no larger than one crop (ROI would encode the same pixels), and True everywhere when
    the image is too large to materialise whole (MAX_WHOLE_PIXELS).
    """
    if mode not in ROI_MODES:
        raise PromptError(f"unknown ROI mode {mode!r}: use auto, whole or roi")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    if mode != "auto":
        return np.full(n, mode == "roi")
    h, w = shape
    if max(h, w) <= min_side:
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


# -- prediction ------------------------------------------------------------------------------------
def paste_min_id(labels, window: tuple[int, int, int, int], masks: np.ndarray, ids: np.ndarray) -> None:
    """Paste (n, h, w) crop masks into ``labels[y0:y1, x0:x1]`` in place: where objects overlap the
    smallest id wins, which equals pasting in id order onto background only, whatever the group order.
    ``labels`` may be any writable array-like (numpy, memmap, zarr)."""
    y0, y1, x0, x1 = window
    region = np.asarray(labels[y0:y1, x0:x1]).copy()
    for mask, obj_id in zip(masks, ids, strict=True):
        region[mask & ((region == 0) | (region > obj_id))] = obj_id
    labels[y0:y1, x0:x1] = region


def _check_cancel(cancel) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise CancelledError("segmentation cancelled; no labels were returned (an ``out`` array may be partly filled)")


def predict_groups(predictor, image, boxes: np.ndarray, groups: list[RoiGroup], intensity: Intensity,
                   channel=None, cancel=None) -> Iterator[tuple[RoiGroup, np.ndarray, np.ndarray]]:
    """Yield (group, masks (n, h, w) bool in crop coordinates, scores (n,)) per group.

    ``intensity`` must already be the image-wide window (``global_intensity``).
    """
    for group in groups:
        _check_cancel(cancel)
        y0, y1, x0, x1 = group.window
        crop = read_crop(image, group.window)
        predictor.set_image(crop, intensity=intensity, channel=channel)
        local = boxes[group.indices] - np.array([x0, y0, x0, y0], np.float64)
        masks, scores = predictor.predict(boxes=local)
        yield group, np.asarray(masks, bool), np.asarray(scores)


def iter_masks(predictor, image, boxes, mode: str = "auto", intensity: Intensity | None = None, channel=None,
               min_side: int = ROI_MIN_SIDE, factor: float = ROI_FACTOR,
               cancel=None) -> Iterator[tuple[RoiGroup, np.ndarray, np.ndarray]]:
    """Masks of (N, 4) XYXY pixel boxes, one encode at a time, without a full-size label image.

    Yields (group, masks (n, h, w) bool in the group's window, scores (n,)): first the boxes
    segmented in whole-image mode (window = the whole image), then one item per ROI crop.
    ``group.indices`` index ``boxes``. For interactive use (one box at a time on a huge image),
    compute ``global_intensity(image)`` once and pass it as ``intensity``: a "range" window is
    used as is. Image and mode as for segment_large.
    """
    shape = image_shape(image)
    boxes = check_boxes(boxes, shape) if len(np.asarray(boxes).reshape(-1, 4)) else np.zeros((0, 4))
    use_roi = choose_roi(boxes, shape, mode, predictor.spec.preprocessing.input_size, min_side=min_side)
    window = global_intensity(image, intensity, channel)
    if (~use_roi).any():
        _check_cancel(cancel)
        if shape[0] * shape[1] > MAX_WHOLE_PIXELS:
            raise ImageError(
                f"the image is {shape[1]} x {shape[0]} pixels, too large for whole-image mode: use roi mode"
            )
        whole = RoiGroup((0, shape[0], 0, shape[1]), np.flatnonzero(~use_roi))
        yield from predict_groups(predictor, image, boxes, [whole], window, channel)
    roi_idx = np.flatnonzero(use_roi)
    groups = plan_rois(boxes[roi_idx], shape, min_side, factor) if len(roi_idx) else []
    mapped = [RoiGroup(g.window, roi_idx[g.indices]) for g in groups]
    yield from predict_groups(predictor, image, boxes, mapped, window, channel, cancel)


def count_encodes(boxes, shape: tuple[int, int], mode: str = "auto", input_size: int = 256,
                  min_side: int = ROI_MIN_SIDE, factor: float = ROI_FACTOR) -> int:
    """How many encodes iter_masks / segment_large will run (for a progress bar's total)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    use_roi = choose_roi(boxes, shape, mode, input_size, min_side=min_side)
    n_roi = len(plan_rois(boxes[use_roi], shape, min_side, factor)) if use_roi.any() else 0
    return n_roi + int((~use_roi).any())


def segment_large(predictor, image, boxes, mode: str = "auto", intensity: Intensity | None = None,
                  channel=None, out=None, min_side: int = ROI_MIN_SIDE, factor: float = ROI_FACTOR,
                  progress: Callable[[int, int], None] | None = None, cancel=None) -> np.ndarray:
    """Segment (N, 4) XYXY pixel boxes on a 2D image in whole-image and/or ROI mode -> labels.

    image: (H, W) or (H, W, C) numpy/dask/zarr array-like, or a multiscale pyramid (sequence of
    such arrays, level 0 = full resolution); only crops of level 0 (and a subsample for the
    intensity window) are read in ROI mode. Box i gets id i+1; where masks overlap the earlier
    box wins (as segment.segment_boxes). mode: "auto" | "whole" | "roi" (see choose_roi).
    out: optional writable (H, W) integer array-like to fill (e.g. a memmap or zarr array for
    huge images); default a new uint32 numpy array. progress(done, total) after each encode;
    cancel: a callable or threading.Event checked before each encode (CancelledError).
    """
    shape = image_shape(image)
    labels = np.zeros(shape, np.uint32) if out is None else out
    if tuple(labels.shape[:2]) != shape:
        raise ImageError(f"out has shape {labels.shape}, the image {shape}: give an (H, W) array of the image's size")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ids = np.arange(1, len(boxes) + 1, dtype=np.uint32)
    total = None
    done = 0
    for group, masks, _ in iter_masks(predictor, image, boxes, mode, intensity, channel, min_side, factor, cancel):
        paste_min_id(labels, group.window, masks, ids[group.indices])
        done += 1
        if progress:
            if total is None:
                total = count_encodes(check_boxes(boxes, shape), shape, mode,
                                      predictor.spec.preprocessing.input_size, min_side, factor)
            progress(done, total)
    return labels
