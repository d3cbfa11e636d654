"""Automatic proposals: segment every object of a new image without prompts.

The "automatic model" is deliberately simple and honest:

1. a box proposer: Gaussian smoothing, Otsu threshold (times ``threshold_scale``), optional
   distance-transform watershed to split touching objects, connected components larger than
   ``min_area``, their bounding boxes grown by ``margin``;
2. the (fine-tuned) decoder segments each box (one ``predict`` call on the cached embedding);
3. proposals whose predicted IoU is below ``min_score`` are dropped, and overlapping ones are
   de-duplicated by mask IoU (greedy NMS in score order), as SAM's automatic mode filters.

``fit_auto`` learns from the labels gathered so far: the detector parameters are those (from a
small grid) whose boxes best match the labelled objects' bounding boxes (F1 at box IoU >= 0.5),
then ``min_score`` is the value that maximises the F1 of the final masks on the labelled images.
``match`` measures proposals against reference labels: recall (objects found at mask IoU >= 0.5),
precision and the mean Dice of matched objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ImageError, PromptError


@dataclass(frozen=True)
class DetectorParams:
    """Box proposer settings (see the module docstring); sizes in pixels."""

    sigma: float = 1.0
    threshold_scale: float = 1.0
    min_area: int = 10
    margin: int = 2
    split: bool = False
    min_distance: int = 5  # between watershed seeds, when ``split``


DEFAULT_GRID = {
    "sigma": (1.0, 2.0),
    "threshold_scale": (0.7, 1.0, 1.3),
    "min_area": (10, 30),
    "split": (False, True),
}


def _grey(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(-1)
    if img.ndim != 2:
        raise ImageError(f"automatic proposals need an (H, W) or (H, W, 3) image; got shape {img.shape}")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise ImageError("the image contains NaN or inf; fix or mask those pixels first")
    return img


def foreground_components(image, params: DetectorParams = DetectorParams()) -> np.ndarray:
    """(H, W) image -> (H, W) int32 labels of the proposer's components (before size filtering)."""
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    img = _grey(image)
    smooth = gaussian(img, sigma=params.sigma, preserve_range=True) if params.sigma > 0 else img
    if smooth.max() == smooth.min():
        return np.zeros(img.shape, np.int32)
    fg = smooth > threshold_otsu(smooth) * params.threshold_scale
    if not params.split:
        return ndimage.label(fg)[0].astype(np.int32)
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=params.min_distance, labels=ndimage.label(fg)[0])
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def detect_boxes(image, params: DetectorParams = DetectorParams()) -> np.ndarray:
    """(H, W) or (H, W, 3) image -> (N, 4) XYXY pixel boxes of the bright objects."""
    from scipy import ndimage

    comps = foreground_components(image, params)
    h, w = comps.shape
    areas = np.bincount(comps.ravel())
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None or areas[k] < params.min_area:
            continue
        m = params.margin
        x0, y0 = max(0, sl[1].start - m), max(0, sl[0].start - m)
        x1, y1 = min(w - 1, sl[1].stop - 1 + m), min(h - 1, sl[0].stop - 1 + m)
        boxes.append((x0, y0, max(x1, min(w - 1, x0 + 1)), max(y1, min(h - 1, y0 + 1))))
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """(H, W) label image -> (K, 4) XYXY bounding boxes, one per label id (in id order)."""
    from scipy import ndimage

    sl = [s for s in ndimage.find_objects(np.asarray(labels).astype(np.int64)) if s is not None]
    return np.asarray([(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in sl], np.float64).reshape(-1, 4)


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) inclusive XYXY boxes -> (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_pairs(iou: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one (row, col) pairs with IoU >= threshold, highest IoU first."""
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] < threshold:
            break
        if r not in used_r and c not in used_c:
            pairs.append((int(r), int(c)))
            used_r.add(r)
            used_c.add(c)
    return pairs


def _f1(tp: int, n_pred: int, n_ref: int) -> float:
    return 2.0 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0


@dataclass
class MatchResult:
    """Proposals against reference objects (IoU >= threshold, one-to-one)."""

    n_pred: int
    n_ref: int
    matched: int
    recall: float
    precision: float
    f1: float
    mean_dice: float  # over matched objects (nan if none)

    def to_dict(self) -> dict:
        return asdict(self)


def match(masks: np.ndarray, ref_labels: np.ndarray, threshold: float = 0.5) -> MatchResult:
    """(N, H, W) bool proposal masks vs an (H, W) reference label image."""
    ref = np.asarray(ref_labels).astype(np.int64)
    masks = np.asarray(masks, bool).reshape(-1, *ref.shape)
    ids = np.unique(ref)
    ids = ids[ids != 0]
    remap = np.zeros(int(ref.max()) + 1, np.int64)
    remap[ids] = np.arange(1, len(ids) + 1)
    dense = remap[ref]
    ref_area = np.bincount(dense.ravel(), minlength=len(ids) + 1)[1:]
    inter = np.stack([np.bincount(dense[m], minlength=len(ids) + 1)[1:] for m in masks]) if len(masks) else \
        np.zeros((0, len(ids)))
    areas = masks.reshape(len(masks), ref.size).sum(1)
    union = areas[:, None] + ref_area[None, :] - inter
    iou = inter / np.maximum(union, 1)
    pairs = greedy_pairs(iou, threshold)
    dices = [2 * inter[r, c] / (areas[r] + ref_area[c]) for r, c in pairs]
    tp, n_pred, n_ref = len(pairs), len(masks), len(ids)
    return MatchResult(n_pred, n_ref, tp, tp / n_ref if n_ref else 1.0, tp / n_pred if n_pred else 1.0,
                       _f1(tp, n_pred, n_ref), float(np.mean(dices)) if dices else float("nan"))


def nms_masks(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS on mask IoU, highest score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    flat = np.asarray(masks, bool).reshape(len(masks), -1)
    areas = flat.sum(1)
    keep: list[int] = []
    for i in order:
        if keep:
            inter = (flat[keep] & flat[i]).sum(1)
            if (inter / np.maximum(areas[keep] + areas[i] - inter, 1) > iou_threshold).any():
                continue
        keep.append(int(i))
    return np.asarray(keep, np.int64)


@dataclass
class Proposals:
    """masks (N, H, W) bool, boxes (N, 4) XYXY, scores (N,) predicted IoU; best score first."""

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def to_labels(self) -> np.ndarray:
        """(H, W) int32 labels 1..N; a pixel claimed twice keeps the higher-scored object."""
        out = np.zeros(self.masks.shape[1:], np.int32)
        for k in range(len(self.masks) - 1, -1, -1):
            out[self.masks[k]] = k + 1
        return out


@dataclass
class AutoModel:
    """Fitted proposer settings + filters; the decoder is the predictor passed to ``propose``."""

    params: DetectorParams = DetectorParams()
    min_score: float = 0.5
    nms_iou: float = 0.5

    def _decode(self, predictor, image) -> Proposals:
        boxes = detect_boxes(image, self.params)
        predictor.set_image(image)
        if len(boxes) == 0:
            h, w = _grey(image).shape
            return Proposals(np.zeros((0, h, w), bool), boxes, np.zeros(0, np.float32))
        masks, scores = predictor.predict(boxes=boxes)
        masks, scores = np.asarray(masks, bool), np.asarray(scores, np.float32).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        return Proposals(masks[order], boxes[order], scores[order])

    def _filter(self, raw: Proposals, min_score: float) -> Proposals:
        ok = np.flatnonzero((raw.scores >= min_score) & raw.masks.any(axis=(1, 2)))
        keep = ok[nms_masks(raw.masks[ok], raw.scores[ok], self.nms_iou)] if len(ok) else ok
        keep = np.sort(keep)  # raw is sorted by score already
        return Proposals(raw.masks[keep], raw.boxes[keep], raw.scores[keep])

    def propose(self, predictor, image) -> Proposals:
        """Every object of an (H, W) image: detector boxes -> decoder -> score filter -> NMS."""
        return self._filter(self._decode(predictor, image), self.min_score)

    def to_dict(self) -> dict:
        return {"params": asdict(self.params), "min_score": self.min_score, "nms_iou": self.nms_iou}

    @classmethod
    def from_dict(cls, d: dict) -> AutoModel:
        return cls(DetectorParams(**d["params"]), float(d["min_score"]), float(d["nms_iou"]))


def _grid(grid: dict | None) -> list[DetectorParams]:
    grid = {**DEFAULT_GRID, **(grid or {})}
    unknown = set(grid) - set(DetectorParams.__dataclass_fields__)
    if unknown:
        raise PromptError(f"unknown detector settings {sorted(unknown)}; use {sorted(DetectorParams.__dataclass_fields__)}")
    keys = sorted(grid)
    return [DetectorParams(**dict(zip(keys, vals, strict=True))) for vals in itertools.product(*(grid[k] for k in keys))]


def fit_detector(images: Sequence, labels: Sequence, grid: dict | None = None) -> tuple[DetectorParams, float]:
    """The grid's detector settings whose boxes best match the labelled objects' bounding boxes
    (summed F1 at box IoU >= 0.5 over the images) -> (params, mean F1)."""
    _check_pairs(images, labels)
    refs = [label_boxes(lab) for lab in labels]
    best, best_f1 = DetectorParams(), -1.0
    for p in _grid(grid):
        f1s = []
        for img, ref in zip(images, refs, strict=True):
            boxes = detect_boxes(img, p)
            # compare without the margin: reference boxes are tight
            tight = boxes + np.array([p.margin, p.margin, -p.margin, -p.margin])
            f1s.append(_f1(len(greedy_pairs(box_iou_matrix(tight, ref))), len(boxes), len(ref)))
        if np.mean(f1s) > best_f1:
            best, best_f1 = p, float(np.mean(f1s))
    return best, best_f1


def fit_auto(predictor, images: Sequence, labels: Sequence, grid: dict | None = None,
             scores: Sequence[float] = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8), nms_iou: float = 0.5) -> AutoModel:
    """Fit the automatic model on labelled (image, labels) pairs (see the module docstring)."""
    params, _ = fit_detector(images, labels, grid)
    model = AutoModel(params, 0.0, nms_iou)
    raws = [model._decode(predictor, img) for img in images]
    best, best_f1 = scores[0], -1.0
    for s in scores:
        f1 = np.mean([match(model._filter(r, s).masks, lab).f1 for r, lab in zip(raws, labels, strict=True)])
        if f1 > best_f1:
            best, best_f1 = s, f1
    return AutoModel(params, float(best), nms_iou)


def _check_pairs(images: Sequence, labels: Sequence) -> None:
    if len(images) == 0 or len(images) != len(labels):
        raise PromptError(f"give one label image per image (got {len(images)} images, {len(labels)} labels)")
    for k, (img, lab) in enumerate(zip(images, labels, strict=True)):
        if _grey(img).shape != np.asarray(lab).shape:
            raise ImageError(f"labels {k} have shape {np.asarray(lab).shape}, image {k} is {np.shape(img)}")
        if not np.asarray(lab).any():
            raise PromptError(f"labels {k} hold no objects; label some objects before fitting")
