"""Fine-tuning: ``TrainConfig``, ``train_step``, ``evaluate`` and ``fit(..., on_step=callback)``.

Modes (``TrainConfig.mode``):

* ``"decoder"`` (fast): image and prompt encoders frozen; the mask decoder trains on the image
  embeddings already in the EmbeddingCache, so no image is encoded twice (an image missing from
  the cache is encoded once and stored). The new model keeps the encoder id: cached embeddings
  stay valid for it.
* ``"full"``: image encoder + mask decoder trained, prompt encoder frozen, as MedSAM does
  (meant for a GPU; runs on a CPU for small jobs). Every step encodes its image.
* ``"lora"``: low-rank adapters on the encoder's attention qkv (and optionally proj) layers plus
  the mask decoder; adapters are merged into the weights on export (``lora.merge_lora``).

The input model is never modified: ``fit`` trains a deep copy, and a cancel or an error leaves
the caller with exactly the model it had. BatchNorm layers (TinyViT's convolutions) stay in
eval mode: a batch holds the objects of one image, far too few for batch statistics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .cancel import check_cancel
from .checkpoint import finish_model
from .data import TrainingData, Variant, jitter_boxes, prepare_variant, split_holdout
from .errors import TrainingError
from .lora import add_lora, lora_parameters, merge_lora
from .losses import DiceCELoss, IoURegressionLoss
from .metrics import dice
from .modeling.train_decoder import decode_for_training, supports_training
from .predictor import Predictor
from .preprocess import boxes_to_model

MODES = ("decoder", "full", "lora")
# Learning rates that worked on the DSB2018 benchmark (docs/benchmarks.md, "Fine-tuning"):
# LoRA adapters start at zero and need a 10x larger rate than the decoder; the full encoder a smaller one.
DEFAULT_LR = {"decoder": 1e-4, "lora": 1e-3, "full": 2e-5}
StepCallback = Callable[[int, int, float, dict], Any]


@dataclass
class TrainConfig:
    """Everything a fine-tuning run depends on (stored in the checkpoint's metadata).

    lr: peak AdamW learning rate (short linear warm-up, cosine decay to ``min_lr_ratio`` * lr);
    None: the mode's ``DEFAULT_LR`` (filled in by ``validate``).
    box_jitter: each box side moves outward by up to this many image pixels per step.
    flips: random horizontal/vertical flips; in "decoder" mode each flipped image is encoded
    once (3 extra encoder passes per image), see data.py.
    holdout: fraction of the objects held out for the guard (at least one).
    iou_weight: weight of the IoU-head regression loss (0 turns it off).
    fast_decoder: train through ``modeling.train_decoder`` (about 5x faster per step on a CPU; the same
    gradients apart from far-background cross-entropy terms) instead of segment-anything's forward.
    """

    mode: str = "decoder"
    epochs: int = 20
    lr: float | None = None
    weight_decay: float = 0.01
    batch_size: int = 8
    holdout: float = 0.25
    seed: int = 0
    box_jitter: float = 5.0
    flips: bool = False
    iou_weight: float = 1.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_proj: bool = False
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    fast_decoder: bool = True
    device: str | None = None  # None: the model's device
    base_model: str = "lite_medsam"
    base_checkpoint: str | None = None

    def validate(self) -> TrainConfig:
        if self.mode not in MODES:
            raise TrainingError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mode]
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0 < self.holdout < 1, f"holdout must be a fraction between 0 and 1, got {self.holdout}"),
            (self.box_jitter >= 0, f"box_jitter must be >= 0 pixels, got {self.box_jitter}"),
            (self.iou_weight >= 0, f"iou_weight must be >= 0, got {self.iou_weight}"),
            (self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, total: int, lr: float, warmup_ratio: float = 0.05, min_ratio: float = 0.1) -> float:
    """Learning rate of step ``step`` (0-based) of ``total``: linear warm-up, then cosine decay."""
    warmup = max(1, int(warmup_ratio * total))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_trainable(model: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Freeze/unfreeze per mode (adding LoRA adapters in "lora" mode); return the trained parameters."""
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    if config.mode == "full":
        model.image_encoder.requires_grad_(True)
    elif config.mode == "lora":
        add_lora(model, config.lora_rank, config.lora_alpha, config.lora_proj)
        for p in lora_parameters(model):
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class Batch:
    """Objects of one image: ``embedding`` (1, 256, 64, 64) or ``image`` (1, 3, S, S) to encode;
    boxes (B, 4) model pixels; targets (B, 1, 256, 256) float."""

    boxes: torch.Tensor
    targets: torch.Tensor
    embedding: torch.Tensor | None = None
    image: torch.Tensor | None = None


def forward(model, batch: Batch, fast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable decode of one batch -> (logits (B, 1, 256, 256), iou (B, 1)).

    fast: the re-arranged decoder of ``modeling.train_decoder`` (image-side work once per batch,
    upscaling in windows covering each box and its target; same logits and gradients there),
    when the decoder's layout allows it; otherwise segment-anything's reference forward pass.
    """
    emb = batch.embedding if batch.embedding is not None else model.image_encoder(batch.image)
    if fast and supports_training(model.prompt_encoder, model.mask_decoder, emb):
        input_size = model.spec.preprocessing.input_size
        return decode_for_training(model.prompt_encoder, model.mask_decoder, emb, batch.boxes, input_size,
                                   window_boxes=target_boxes(batch.targets, input_size))
    sparse, dense = model.prompt_encoder(points=None, boxes=batch.boxes[:, None, :], masks=None)
    return model.mask_decoder(
        image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
    )


def target_boxes(targets: torch.Tensor, input_size: int) -> torch.Tensor:
    """(B, 1, h, w) low-res target masks -> (B, 4) XYXY bounding boxes in model-input pixels
    (the whole grid for an empty target)."""
    b, _, h, w = targets.shape
    rows, cols = targets[:, 0].amax(2) > 0, targets[:, 0].amax(1) > 0
    out = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]]).repeat(b, 1)
    for i in range(b):
        ys, xs = rows[i].nonzero()[:, 0], cols[i].nonzero()[:, 0]
        if len(ys):
            out[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return (out * (input_size / w)).to(targets.device)


def train_step(model, optimizer, batch: Batch, loss_fn: DiceCELoss, iou_fn: IoURegressionLoss | None,
               iou_weight: float = 1.0, grad_clip: float = 0.0, fast: bool = True) -> tuple[float, dict]:
    """One AdamW step on one batch -> (total loss, {"seg": .., "iou": ..})."""
    logits, iou = forward(model, batch, fast)
    seg = loss_fn(logits, batch.targets)
    loss = seg
    info = {"seg": float(seg.detach())}
    if iou_fn is not None and iou_weight > 0:
        iou_loss = iou_fn(iou, logits, batch.targets)
        loss = loss + iou_weight * iou_loss
        info["iou"] = float(iou_loss.detach())
    if not torch.isfinite(loss):
        raise TrainingError("the loss became NaN/inf: lower the learning rate or check the images")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    return float(loss.detach()), info


@dataclass
class Evaluation:
    """Held-out Dice at image resolution: ``mean`` and one value per object."""

    mean: float
    per_object: list[float]


def evaluate(model, data: TrainingData, cache=None, intensity=None, channel="auto") -> Evaluation:
    """Dice of each object's predicted mask (thresholded, image resolution, through the Predictor,
    so exactly what users see) against its labelled mask, prompted by its box."""
    predictor = Predictor(model, cache, intensity=intensity, channel=channel)
    scores = [0.0] * len(data)
    for image_index, idx in data.by_image().items():
        predictor.set_image(data.images[image_index])
        masks, _ = predictor.predict(boxes=np.array([data.objects[i].box for i in idx]))
        for i, mask in zip(idx, masks, strict=True):
            scores[i] = dice(mask, data.mask(i))
    return Evaluation(float(np.mean(scores)), scores)


@dataclass
class FitResult:
    """What ``fit`` returns: the new model (eval mode, ids recomputed) and the record of the run."""

    model: Any
    config: TrainConfig
    losses: list[float]
    dice_before: float
    dice_after: float
    per_object_before: list[float]
    per_object_after: list[float]
    n_train: int
    n_heldout: int
    steps: int
    elapsed_s: float
    encoder_calls: int
    meta: dict = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        return self.dice_after > self.dice_before


class _Source:
    """Per-image training material: variants (image x flip) with embeddings (decoder mode)."""

    def __init__(self, model, data: TrainingData, config: TrainConfig, cache, intensity, channel):
        self.config, self.data = config, data
        self.predictor = Predictor(model, cache, intensity=intensity, channel=channel)
        flips = [(False, False), (True, False), (False, True), (True, True)] if config.flips else [(False, False)]
        self.variants: dict[tuple[int, tuple[bool, bool]], Variant] = {}
        self.embeddings: dict[tuple[int, tuple[bool, bool]], np.ndarray] = {}
        pre = model.spec.preprocessing
        for image_index, idx in data.by_image().items():
            for flip in flips:
                self.variants[(image_index, flip)] = prepare_variant(data, image_index, idx, pre, flip,
                                                                     intensity, channel)
        if config.mode == "decoder":  # (256, 64, 64) each, from the cache or encoded (batched) once
            keys = list(self.variants)
            done = self.predictor.embed([self.variants[k].image for k in keys])
            self.embeddings = {k: np.asarray(d.entry.embedding, np.float32) for k, d in zip(keys, done, strict=True)}

    def plan(self, rng: np.random.Generator) -> list[tuple[tuple[int, tuple[bool, bool]], list[int]]]:
        """One epoch: batches of up to batch_size objects of one image (and one random flip)."""
        keys = sorted({k[0] for k in self.variants})
        flips = sorted({k[1] for k in self.variants})
        batches = []
        for image_index in keys:
            n = len(self.variants[(image_index, flips[0])].objects)
            order = rng.permutation(n)
            for s in range(0, n, self.config.batch_size):
                flip = flips[rng.integers(len(flips))]
                batches.append(((image_index, flip), order[s:s + self.config.batch_size].tolist()))
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, key, local: list[int], rng: np.random.Generator, device) -> Batch:
        v = self.variants[key]
        boxes = jitter_boxes(v.boxes[local], rng, self.config.box_jitter, v.prepared.original_size)
        boxes_m = torch.as_tensor(boxes_to_model(boxes, v.prepared), dtype=torch.float32, device=device)
        targets = torch.as_tensor(v.targets[local][:, None], dtype=torch.float32, device=device)
        if key in self.embeddings:
            return Batch(boxes_m, targets, embedding=torch.as_tensor(self.embeddings[key][None], device=device))
        return Batch(boxes_m, targets, image=torch.as_tensor(v.prepared.tensor[None], device=device))


def fit(model, data: TrainingData, config: TrainConfig | None = None, on_step: StepCallback | None = None,
        cancel=None, cache=None, heldout: TrainingData | None = None, intensity=None,
        channel: int | str | None = "auto") -> FitResult:
    """Fine-tune a copy of ``model`` on ``data``; the input model is never changed.

    data: from ``make_training_data``. heldout: objects for the before/after Dice; None splits
    ``config.holdout`` of ``data`` off (seeded). cache: the EmbeddingCache to read (decoder mode).
    on_step(step, total, loss, info): after each optimizer step (1-based step).
    cancel: a threading.Event or a callable returning True to stop; checked between steps,
    raises CancelledError. Returns FitResult with the new model in eval mode.
    """
    config = (config or TrainConfig()).validate()
    t0 = time.perf_counter()
    if heldout is None:
        data, heldout = split_holdout(data, config.holdout, config.seed)
    if len(data) == 0 or len(heldout) == 0:
        raise TrainingError("need at least one object to train on and one held out; label more objects")
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    before = evaluate(model, heldout, cache, intensity, channel)
    source = _Source(model, data, config, cache, intensity, channel)
    work = copy.deepcopy(model).to(device).eval()  # a LoadedModel copy: forward() reads its spec
    with torch.random.fork_rng(devices=[]):  # LoRA adapters start from config.seed, not the caller's RNG state
        torch.manual_seed(config.seed)
        params = set_trainable(work, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(config.dice_weight, config.ce_weight)
    iou_fn = IoURegressionLoss() if config.iou_weight > 0 else None
    rng = np.random.default_rng(config.seed)
    per_epoch = len(source.plan(np.random.default_rng(0)))
    total, step, losses = config.epochs * per_epoch, 0, []
    for _epoch in range(config.epochs):
        for key, local in source.plan(rng):
            check_cancel(cancel, f"fine-tuning cancelled after {step} of {total} steps; the model is unchanged")
            lr = lr_at(step, total, config.lr, config.warmup_ratio, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = source.batch(key, local, rng, device)
            loss, info = train_step(work, optimizer, batch, loss_fn, iou_fn, config.iou_weight, config.grad_clip,
                                    config.fast_decoder)
            losses.append(loss)
            step += 1
            if on_step is not None:
                on_step(step, total, loss, {**info, "lr": lr, "epoch": _epoch + 1})
    check_cancel(cancel, "fine-tuning cancelled before export; the model is unchanged")
    new = export_model(work, model, config)
    after = evaluate(new, heldout, cache, intensity, channel)
    result = FitResult(
        new, config, losses, before.mean, after.mean, before.per_object, after.per_object, len(data),
        len(heldout), step, time.perf_counter() - t0, source.predictor.encoder_calls,
    )
    result.meta = run_meta(model, result)
    new.meta = dict(result.meta)
    return result


def export_model(work, base, config: TrainConfig):
    """Merge LoRA adapters, freeze, recompute weight/encoder ids -> a model like ``load_model`` gives."""
    merge_lora(work)
    work.requires_grad_(False)
    device = str(next(work.parameters()).device)
    new = finish_model(work, base.spec, meta=getattr(base, "meta", {}), device=device)
    if config.mode == "decoder" and new.encoder_id != base.encoder_id:
        raise TrainingError("internal error: decoder-only training changed the image encoder")
    return new


def run_meta(base, result: FitResult) -> dict:
    """Plain-type metadata of a run (goes into checkpoints; torch.load(weights_only=True) reads it)."""
    from datetime import datetime, timezone

    cfg = result.config
    return {
        "base_model": base.spec.name,
        "base_sha256": getattr(base, "weights_sha256", None),
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "steps": result.steps,
        "objects_train": result.n_train,
        "objects_heldout": result.n_heldout,
        "dice_before": result.dice_before,
        "dice_after": result.dice_after,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "napari_medsam_version": package_version(),
        "config": {k: v for k, v in cfg.to_dict().items() if v is None or isinstance(v, (str, int, float, bool))},
    }


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-medsam")
    except PackageNotFoundError:
        return "unknown"
