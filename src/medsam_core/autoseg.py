"""Segment everything with a trained automatic head (see autohead.py for the head itself).

``segment_everything(predictor, head, image)``: the head's maps on the cached embedding ->
seeded-watershed instances -> each instance's box to the decoder (or the head's own masks) ->
score filter + NMS -> ``auto.Proposals``. ``match_in_region`` scores proposals on partly labelled
images; ``fit_post`` picks the post-processing on labelled images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .auto import Proposals, label_boxes, match, nms_masks
from .autohead import REFINE, AutoHead, PostParams, check_cancel, from_map, head_inputs


def head_maps(head: AutoHead, embedding: np.ndarray, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, distance) probabilities, each (side, side) float32."""
    import torch

    with torch.inference_mode():
        out = torch.sigmoid(head.module(torch.as_tensor(embedding[None]), torch.as_tensor(small[None])))[0]
    return out[0].numpy(), out[1].numpy()


def maps_to_instances(fg: np.ndarray, dist: np.ndarray, post: PostParams) -> np.ndarray:
    """Seeded watershed on the maps -> (side, side) int32 instance labels."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    mask = fg > post.fg_threshold
    seeds = ndimage.label((dist > post.seed_threshold) & mask)[0]
    if seeds.max() == 0:
        return np.zeros(fg.shape, np.int32)
    return watershed(-dist, seeds, mask=mask).astype(np.int32)


def head_instances(predictor, head: AutoHead, image, post: PostParams | None = None) -> np.ndarray:
    """(H, W) int32 instance labels from the head alone (no decoder), objects >= min_area px."""
    post = post or head.post
    head.check_model(predictor.model)
    emb, small, prep = head_inputs(predictor, image)
    return _filter_area(from_map(maps_to_instances(*head_maps(head, emb, small), post), prep), post.min_area)


def _filter_area(lab: np.ndarray, min_area: int) -> np.ndarray:
    """Drop instances under ``min_area`` pixels and renumber 1..N."""
    areas = np.bincount(lab.ravel())
    keep = areas >= max(1, min_area)
    keep[0] = False
    remap = np.zeros(len(areas), np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[lab]


def segment_everything(predictor, head: AutoHead, image, post: PostParams | None = None, cancel=None,
                       on_progress=None, chunk: int = 32) -> Proposals:
    """Every object of an (H, W[, C]) image: head maps -> watershed instances -> each instance's
    box to the decoder (``refine="decoder"``) -> score filter -> NMS -> Proposals (best first).
    on_progress(done, total): see ``segment_steps``; cancel (Event or callable) raises
    CancelledError between steps."""
    gen = segment_steps(predictor, head, image, post, chunk)
    while True:
        check_cancel(cancel)
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(*step)


def segment_steps(predictor, head: AutoHead, image, post: PostParams | None = None, chunk: int = 32):
    """Generator behind ``segment_everything``: yields (done, total) after the head's instances (step
    1) and after each chunk of ``chunk`` decoded boxes; returns the Proposals. Closing it between two
    steps (a cancel) leaves nothing behind."""
    post = (post or head.post).validate()
    inst = head_instances(predictor, head, image, post)
    h, w = inst.shape
    boxes = label_boxes(inst)
    n_chunks = -(-len(boxes) // chunk) if post.refine == "decoder" else 0
    yield 1, 1 + n_chunks
    if len(boxes) == 0:
        return Proposals(np.zeros((0, h, w), bool), boxes, np.zeros(0, np.float32))
    own = np.stack([inst == k for k in range(1, len(boxes) + 1)])
    if post.refine == "head":
        return _finish(own, boxes, np.ones(len(own), np.float32), post)
    grown = boxes + np.array([-post.margin, -post.margin, post.margin, post.margin])
    grown = np.clip(grown, 0, [w - 1, h - 1, w - 1, h - 1])
    masks, scores = [], []
    for k, s in enumerate(range(0, len(grown), chunk), start=2):
        m, sc = predictor.predict(boxes=grown[s: s + chunk])
        masks.append(np.asarray(m, bool))
        scores.append(np.asarray(sc, np.float32).reshape(-1))
        yield k, 1 + n_chunks
    masks = np.concatenate(masks)
    yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
    for i, (x0, y0, x1, y1) in enumerate(grown):  # a mask that leaks out of its box is clipped to it
        masks[i] &= (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
    empty = ~masks.any((1, 2))
    masks[empty] = own[empty]  # the decoder found nothing: keep the head's instance
    return _finish(masks, boxes, np.concatenate(scores), post)


def _finish(masks, boxes, scores, post: PostParams) -> Proposals:
    ok = np.flatnonzero((scores >= post.min_score) & masks.any((1, 2)))
    keep = np.sort(ok[nms_masks(masks[ok], scores[ok], post.nms_iou)]) if len(ok) else ok
    order = keep[np.argsort(-scores[keep], kind="stable")]
    return Proposals(masks[order], boxes[order], scores[order])


# -- measuring on partly labelled images ------------------------------------------------------------
def match_in_region(masks: np.ndarray, ref_labels: np.ndarray, region: np.ndarray | None = None,
                    threshold: float = 0.5):
    """``auto.match`` counting only proposals and reference objects with at least half their pixels
    in ``region`` (the known region of partly labelled images; None: everywhere)."""
    masks, ref = np.asarray(masks, bool), np.asarray(ref_labels)
    if region is not None:
        region = np.asarray(region, bool)
        if len(masks):
            masks = masks[(masks & region).sum((1, 2)) * 2 >= masks.sum((1, 2))]
        areas = np.bincount(ref.ravel().astype(np.int64))
        inside = np.bincount(ref[region].astype(np.int64), minlength=len(areas))
        out = np.flatnonzero(inside * 2 < areas)
        ref = np.where(np.isin(ref, out[out > 0]), 0, ref)
    return match(masks, ref, threshold)


def fit_post(predictor, head: AutoHead, images, labels, known, refine: Sequence[str] = REFINE,
             fg=(0.4, 0.5, 0.6), seed=(0.3, 0.5, 0.7)) -> tuple[PostParams, float]:
    """Thresholds (on the head's maps) then refine mode with the best summed F1 (+ Dice / 100 as a
    tie-break) on labelled images -> (PostParams, score)."""
    cached = []
    for img in images:
        emb, small, prep = head_inputs(predictor, img)
        cached.append((head_maps(head, emb, small), prep))
    best, best_score = head.post, -1.0
    for f, s in ((f, s) for f in fg for s in seed):
        p = replace(head.post, fg_threshold=f, seed_threshold=s, refine="head")
        score = 0.0
        for ((fgm, dm), prep), lab, kn in zip(cached, labels, known, strict=True):
            inst = _filter_area(from_map(maps_to_instances(fgm, dm, p), prep), p.min_area)
            masks = np.stack([inst == k for k in range(1, inst.max() + 1)]) if inst.max() else \
                np.zeros((0, *inst.shape), bool)
            r = match_in_region(masks, lab, kn)
            score += r.f1 + (0 if np.isnan(r.mean_dice) else r.mean_dice / 100)
        if score > best_score:
            best, best_score = p, score
    if "decoder" in refine:
        p = replace(best, refine="decoder")
        score = sum(_score(match_in_region(segment_everything(predictor, head, img, p).masks, lab, kn))
                    for img, lab, kn in zip(images, labels, known, strict=True))
        if score > best_score or "head" not in refine:
            best, best_score = p, score
    return best, best_score / len(images)


def _score(r) -> float:
    return r.f1 + (0 if np.isnan(r.mean_dice) else r.mean_dice / 100)
