"""A learned automatic-segmentation head on the cached encoder embeddings.

The idea (micro-sam's "automatic instance segmentation", Cellpose/StarDist-style geometry): a
small convolutional head reads the image encoder's embedding (LiteMedSAM: (256, 64, 64) for its
256 px input) plus the prepared input image at half the input resolution, and predicts at that
resolution (128 x 128 for LiteMedSAM) two maps:

* ``foreground``: probability that a pixel belongs to some object;
* ``distance``: the pixel's distance to its object's border divided by the largest such distance
  in the object (1 at the object's centre, falling to 0 at its edge), which separates touching
  objects where foreground alone cannot.

Instances come from a seeded watershed: seeds are the connected regions of ``distance >
seed_threshold`` inside ``foreground > fg_threshold``; each seed floods ``-distance`` within the
foreground. Each instance's bounding box then goes to the (fine-tuned) mask decoder, whose mask
(clipped to the box plus a margin) replaces the head's coarse one when ``refine="decoder"``.
LiteMedSAM's decoder is not given the head's mask as ``mask_input``: it was measured to leak with
mask prompts.

Training material is the user's labelled objects, which rarely cover a whole image: a pixel only
counts as background inside the *known region*, the union of the labelled objects' boxes grown by
``context`` x the box side (see ``known_region``); elsewhere the loss is off. Label every object
in the area you work on. Each image is encoded in its 8 flips/rotations (all cached).

``train_head`` is a generator (``HeadStep`` per encode and per epoch; returns ``HeadFit``);
``autoseg.segment_everything`` turns one image into ``auto.Proposals``; ``autoguard.HeadSession``
adds the held-out guard, rollback and checkpoint storage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .auto import _grey
from .errors import CancelledError, ImageError, PromptError, TrainingError

HEAD_FORMAT = 1
STRIDE = 2  # the head's maps are (input_size / STRIDE) pixels on a side
REFINE = ("decoder", "head")


def _nn():
    import torch
    from torch import nn

    return torch, nn


def build_head(embed_dim: int = 256, channels: int = 32, fine: int = 16):
    """The head module: (B, embed_dim, E, E) embedding + (B, 3, 2E, 2E) image -> (B, 2, 2E, 2E) logits
    (foreground, distance)."""
    torch, nn = _nn()
    import torch.nn.functional as F

    class InstanceHead(nn.Module):
        def __init__(self):
            super().__init__()
            c, f = channels, fine
            self.coarse = nn.Sequential(nn.Conv2d(embed_dim, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                                        nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
            self.fine = nn.Sequential(nn.Conv2d(c + 3, f, 3, padding=1), nn.ReLU(), nn.Conv2d(f, f, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(f, 2, 1))

        def forward(self, embedding, image):
            x = F.interpolate(self.coarse(embedding), size=image.shape[-2:], mode="bilinear", align_corners=False)
            return self.fine(torch.cat([x, image], 1))

    return InstanceHead()


@dataclass(frozen=True)
class HeadConfig:
    """Training settings. ``max_seconds`` stops the epochs early (the result says so)."""

    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 4
    context: float = 0.5  # known background around a labelled object, x its box side
    min_context: int = 4  # ... and at least this many pixels
    holdout: float = 0.2  # share of the labelled objects kept for the guard
    views: int = 4  # flips/rotations of each image trained on (1, 4 or 8; each one encode, cached)
    crop: int = 64  # training crops of crop x crop map pixels (the whole map when larger)
    channels: int = 32
    fine: int = 16
    seed: int = 0
    max_seconds: float | None = None

    def validate(self) -> HeadConfig:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise TrainingError(f"epochs and batch_size must be >= 1, lr > 0, weight_decay >= 0; got {self}")
        if not 0 <= self.holdout < 1 or self.context < 0 or self.min_context < 0:
            raise TrainingError(f"holdout must be in [0, 1) and context >= 0; got {self}")
        if self.views not in (1, 4, 8) or self.crop < 8 or self.crop % 2:
            raise TrainingError(f"views must be 1, 4 or 8 and crop an even number >= 8; got {self}")
        if self.channels < 1 or self.fine < 1:
            raise TrainingError(f"channels and fine must be >= 1; got {self}")
        return self


@dataclass(frozen=True)
class PostParams:
    """Maps -> instances -> masks (see the module docstring); areas in image pixels."""

    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_area: int = 8
    refine: str = "decoder"
    min_score: float = 0.0
    nms_iou: float = 0.5
    margin: int = 3  # decoder masks are clipped to the instance box grown by this

    def validate(self) -> PostParams:
        if self.refine not in REFINE:
            raise PromptError(f"refine must be one of {REFINE}, got {self.refine!r}")
        if not (0 < self.fg_threshold < 1 and 0 < self.seed_threshold < 1):
            raise PromptError(f"thresholds must be in (0, 1); got {self}")
        return self


@dataclass
class AutoHead:
    """A trained head: the module, its post-processing, and the encoder it was trained on."""

    module: object  # build_head(...) nn.Module
    post: PostParams
    encoder_id: str
    embed_dim: int = 256
    channels: int = 32
    fine: int = 16
    meta: dict = field(default_factory=dict)

    def check_model(self, model) -> None:
        """Refuse a model whose image encoder is not the one the head was trained on."""
        enc = getattr(model, "encoder_id", None)
        if enc is not None and enc != self.encoder_id:
            raise PromptError(
                f"this automatic head was trained on encoder {self.encoder_id[:12]}, the model's encoder is "
                f"{str(enc)[:12]}: retrain the head on this model (its embeddings differ)")

    def to_dict(self) -> dict:
        """Plain dict (tensors, str, numbers): storable in a checkpoint loaded with weights_only=True."""
        return {"format": HEAD_FORMAT, "kind": "medsam_auto_head", "encoder_id": self.encoder_id,
                "embed_dim": self.embed_dim, "channels": self.channels, "fine": self.fine,
                "post": asdict(self.post), "meta": dict(self.meta),
                "state": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}}

    @classmethod
    def from_dict(cls, d: dict) -> AutoHead:
        if not isinstance(d, dict) or d.get("kind") != "medsam_auto_head" or d.get("format") != HEAD_FORMAT:
            raise PromptError("not an automatic-head record (expected kind 'medsam_auto_head', format "
                              f"{HEAD_FORMAT}); retrain the head with this version")
        module = build_head(int(d["embed_dim"]), int(d["channels"]), int(d["fine"]))
        try:
            module.load_state_dict(d["state"], strict=True)
        except RuntimeError as exc:
            raise PromptError(f"the automatic-head weights do not fit the head: {exc}") from exc
        module.eval()
        return cls(module, PostParams(**d["post"]).validate(), str(d["encoder_id"]), int(d["embed_dim"]),
                   int(d["channels"]), int(d["fine"]), dict(d.get("meta") or {}))


# -- geometry: image <-> head maps ------------------------------------------------------------------
def _nearest(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) array (pixel centres)."""
    H, W = arr.shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return arr[rows][:, cols]


def map_size(prepared) -> tuple[int, int, int]:
    """(side, valid rows, valid cols) of the head's maps for a PreparedImage."""
    side = prepared.input_size // STRIDE
    nh, nw = prepared.resized_size
    return side, max(1, round(nh / STRIDE)), max(1, round(nw / STRIDE))


def to_map(arr: np.ndarray, prepared, fill=0) -> np.ndarray:
    """(H, W) image-pixel array -> (side, side) head-map array (outside the image: ``fill``)."""
    side, vh, vw = map_size(prepared)
    out = np.full((side, side), fill, dtype=arr.dtype)
    out[:vh, :vw] = _nearest(arr, vh, vw)
    return out


def from_map(arr: np.ndarray, prepared) -> np.ndarray:
    """(side, side) head-map array -> (H, W) image pixels (nearest)."""
    _, vh, vw = map_size(prepared)
    return _nearest(arr[:vh, :vw], *prepared.original_size)


# -- training material ------------------------------------------------------------------------------
def known_region(labels: np.ndarray, context: float = 0.5, min_context: int = 4) -> np.ndarray:
    """(H, W) labels -> (H, W) bool: the labelled objects' boxes grown by ``context`` x their side
    (at least ``min_context`` px): where unlabelled pixels may be taken as background."""
    from scipy import ndimage

    lab = np.asarray(labels)
    known = np.zeros(lab.shape, bool)
    h, w = lab.shape
    for sl in ndimage.find_objects(lab.astype(np.int64, copy=False)):
        if sl is None:
            continue
        my = max(min_context, int(round(context * (sl[0].stop - sl[0].start))))
        mx = max(min_context, int(round(context * (sl[1].stop - sl[1].start))))
        known[max(0, sl[0].start - my): min(h, sl[0].stop + my), max(0, sl[1].start - mx): min(w, sl[1].stop + mx)] = True
    return known


def distance_target(labels: np.ndarray) -> np.ndarray:
    """(h, w) labels -> (h, w) float32: distance to the object's border / its largest, 0 outside."""
    from scipy import ndimage

    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.float32)
    for k, sl in enumerate(ndimage.find_objects(lab.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        obj = lab[sl] == k
        d = ndimage.distance_transform_edt(obj)
        out[sl][obj] = (d / max(float(d.max()), 1e-6))[obj]
    return out


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` in 0..7 of an (H, W[, C]) array: k % 4 quarter turns, then a flip when k >= 4."""
    out = np.rot90(arr, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def head_inputs(predictor, image):
    """Set ``image`` on ``predictor`` (cached encode) -> (embedding (C, E, E) float32, image at map
    resolution (3, 2E, 2E) float32, PreparedImage)."""
    from .preprocess import prepare_image

    predictor.set_image(image)
    prepared = prepare_image(image, predictor.spec.preprocessing, predictor.intensity, predictor.channel)
    entry = predictor.cache.get(predictor.image_key)
    emb = entry.embedding if entry is not None else predictor.encode(prepared.tensor[None])[0]
    side = prepared.input_size // STRIDE
    t = prepared.tensor
    small = t.reshape(3, side, STRIDE, side, STRIDE).mean((2, 4)).astype(np.float32)
    return np.asarray(emb, np.float32), small, prepared


@dataclass
class Sample:
    """One training view: inputs and (side, side) targets + loss weight (0 = unknown)."""

    embedding: np.ndarray
    image: np.ndarray
    fg: np.ndarray
    dist: np.ndarray
    weight: np.ndarray


def make_sample(predictor, image, labels, known) -> Sample:
    emb, small, prep = head_inputs(predictor, image)
    lab = to_map(np.asarray(labels).astype(np.int32), prep)
    return Sample(emb, small, (lab > 0).astype(np.float32), distance_target(lab),
                  to_map(np.asarray(known, bool), prep).astype(np.float32))


def check_pairs(images: Sequence, labels: Sequence, known: Sequence | None = None) -> None:
    if len(images) == 0 or len(images) != len(labels) or (known is not None and len(known) != len(images)):
        raise PromptError(f"give one label image (and known region) per image; got {len(images)} images, "
                          f"{len(labels)} labels")
    for k, (img, lab) in enumerate(zip(images, labels, strict=True)):
        lab = np.asarray(lab)
        if lab.dtype.kind not in "biu" or _grey(img).shape != lab.shape:
            raise ImageError(f"labels {k} must be integer with the image's shape {_grey(img).shape}; got "
                             f"{lab.dtype} {lab.shape}")
        if known is not None and np.shape(known[k]) != lab.shape:
            raise ImageError(f"known region {k} has shape {np.shape(known[k])}, labels {k} are {lab.shape}")


@dataclass
class HeadStep:
    """Progress of ``train_head``: stage "encode" (done/total images x views) or "train" (epochs)."""

    stage: str
    done: int
    total: int
    loss: float = float("nan")


@dataclass
class HeadFit:
    head: AutoHead
    losses: list[float]
    seconds: float
    epochs_run: int
    stopped: str  # "done" or "time limit"


def _loss(torch, logits, fg, dist, weight):
    import torch.nn.functional as F

    wsum = weight.sum().clamp_min(1.0)
    l_fg = (F.binary_cross_entropy_with_logits(logits[:, 0], fg, reduction="none") * weight).sum() / wsum
    l_d = (F.binary_cross_entropy_with_logits(logits[:, 1], dist, reduction="none") * weight).sum() / wsum
    return l_fg + l_d


VIEWS = {1: (0,), 4: (0, 2, 4, 6), 8: tuple(range(8))}
MIN_BATCHES = 3


def _crop(sample: Sample, crop: int, rng: np.random.Generator) -> tuple:
    """A random (crop x crop) window of a sample's maps centred near a known pixel (even offsets, so
    the embedding window is exactly half of it)."""
    side = sample.fg.shape[0]
    c = min(crop, side)
    ys, xs = np.nonzero(sample.weight)
    k = rng.integers(len(ys))
    y0 = int(np.clip(ys[k] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, side - c)) // 2 * 2
    x0 = int(np.clip(xs[k] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, side - c)) // 2 * 2
    m, e = np.s_[y0: y0 + c, x0: x0 + c], np.s_[:, y0 // 2: (y0 + c) // 2, x0 // 2: (x0 + c) // 2]
    return (sample.embedding[e], sample.image[:, m[0], m[1]], sample.fg[m], sample.dist[m], sample.weight[m])


def _stack(torch, samples, idx, crop: int, rng: np.random.Generator):
    parts = [_crop(samples[i], crop, rng) for i in idx]
    return [torch.as_tensor(np.stack([p[j] for p in parts])) for j in range(5)]


def train_head(predictor, images: Sequence, labels: Sequence, known: Sequence | None = None,
               config: HeadConfig | None = None, cancel=None, post: PostParams | None = None):
    """Generator: train a new head on (H, W[, C]) images with (H, W) instance labels; ``known``:
    per image (H, W) bool region where unlabelled means background (None: ``known_region``).
    Yields HeadStep; returns HeadFit. cancel: Event or callable -> raises CancelledError."""
    torch, _ = _nn()
    config = (config or HeadConfig()).validate()
    check_pairs(images, labels, known)
    if known is None:
        known = [known_region(lab, config.context, config.min_context) for lab in labels]
    views = VIEWS[config.views]
    samples, total = [], len(images) * len(views)
    for img, lab, kn in zip(images, labels, known, strict=True):
        if not np.asarray(kn).any():
            continue
        for k in views:
            check_cancel(cancel)
            samples.append(make_sample(predictor, dihedral(np.asarray(img), k), dihedral(np.asarray(lab), k),
                                       dihedral(np.asarray(kn), k)))
            yield HeadStep("encode", len(samples), total)
    samples = [s for s in samples if s.weight.any()]
    if not samples:
        raise TrainingError("no labelled objects to train the automatic head on")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    embed_dim = samples[0].embedding.shape[0]
    module = build_head(embed_dim, config.channels, config.fine)
    opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bs = config.batch_size
    n_batches = max(-(-len(samples) // bs), MIN_BATCHES)  # one image still gets a few steps per epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * n_batches, pct_start=0.1)
    losses, t0, stopped, epoch = [], time.perf_counter(), "done", 0
    module.train()
    for epoch in range(1, config.epochs + 1):
        reps = -(-n_batches * bs // len(samples))
        order = np.concatenate([rng.permutation(len(samples)) for _ in range(reps)])[: n_batches * bs]
        total_loss = 0.0
        for s in range(0, len(order), bs):
            check_cancel(cancel)
            emb, img, fg, dist, weight = _stack(torch, samples, order[s: s + bs], config.crop, rng)
            loss = _loss(torch, module(emb, img), fg, dist, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(emb)
        losses.append(total_loss / len(order))
        yield HeadStep("train", epoch, config.epochs, losses[-1])
        if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
            stopped = "time limit"
            break
    module.eval()
    head = AutoHead(module, (post or PostParams()).validate(), str(getattr(predictor.model, "encoder_id", "")),
                    embed_dim, config.channels, config.fine,
                    {"config": asdict(config), "objects": int(sum(len(np.unique(lab)) - 1 for lab in labels)),
                     "images": len(images), "epochs_run": epoch, "stopped": stopped})
    return HeadFit(head, losses, time.perf_counter() - t0, epoch, stopped)


def check_cancel(cancel) -> None:
    """Raise CancelledError when ``cancel`` (an Event or a callable) says so."""
    if cancel is None:
        return
    if cancel.is_set() if hasattr(cancel, "is_set") else cancel():
        raise CancelledError("cancelled by the user; nothing was changed")
