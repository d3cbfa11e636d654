"""Fine-tune LiteMedSAM (or another registered model) on a folder of images and labels.

One process:
    python train/finetune.py --images DIR --labels DIR --out runs/ft.pt --mode decoder --epochs 20
Several GPUs or machines (DistributedDataParallel, launched by torchrun):
    torchrun --standalone --nproc_per_node=4 train/finetune.py --images DIR --labels DIR --out runs/ft.pt

Images and labels pair by file name (TIFF, NIfTI, npz, PNG; a 3D volume gives one 2D pair per
labelled slice). Each label id is one object; its bounding box is the prompt (with box jitter).
The pieces are medsam_core's (samples, losses, LoRA, evaluation), so a model trained here
behaves exactly as one fine-tuned in napari. Only rank 0 logs and saves. The checkpoint loads
with ``medsam_core.load_model(name, checkpoint=OUT)``; it also holds the optimizer, step, spec
and config to inspect or resume from.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from medsam_core import load_model
from medsam_core._atomic import clean_stale_tmp, mkstemp_readable
from medsam_core._paths import check_output
from medsam_core.checkpoint import CHECKPOINT_FORMAT, state_dict_sha256
from medsam_core.data import (
    jitter_boxes,
    make_training_data,
    prepare_variant,
    read_folder_pairs,
    split_holdout,
)
from medsam_core.errors import MedSAMError
from medsam_core.lora import merge_lora
from medsam_core.losses import DiceCELoss, IoURegressionLoss
from medsam_core.preprocess import boxes_to_model
from medsam_core.training import DEFAULT_LR, TrainConfig, evaluate, lr_at, package_version, set_trainable


# -----------------------------------------------------------------------------
# config: defaults here, overridden on the command line (--name value)
@dataclass
class Config:
    images: str = ""
    labels: str = ""
    out: str = "runs/finetune.pt"
    model: str = "lite_medsam"
    checkpoint: str = ""  # empty: the bundled weights
    mode: str = "decoder"  # decoder | full | lora
    epochs: int = 20
    max_steps: int = 0  # stop early after this many steps (0: run all epochs)
    batch_size: int = 8  # objects per step and process
    lr: float = 0.0  # 0: the mode's default (medsam_core.training.DEFAULT_LR)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    box_jitter: float = 5.0
    flips: bool = False
    iou_weight: float = 1.0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    holdout: float = 0.0  # fraction of objects held out for a before/after Dice (rank 0)
    seed: int = 0
    device: str = ""  # empty: cuda:LOCAL_RANK if available, else cpu
    log_every: int = 10
    hash_dir: str = ""  # if set, every rank writes its final weight hash there (DDP sanity check)


def parse_config() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Config):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                                default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    return Config(**vars(parser.parse_args()))


def _show_user_errors(kind, exc, tb) -> None:
    """A MedSAMError (bad input, refused checkpoint) is a message for the user, not a traceback."""
    if issubclass(kind, MedSAMError):
        print(f"finetune.py: error: {exc}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, exc, tb)


sys.excepthook = _show_user_errors
cfg = parse_config()
cfg.lr = cfg.lr or DEFAULT_LR[cfg.mode]
try:  # the output is checked before any work: never an input, a folder or unwritable (exit 2)
    _inputs = [cfg.checkpoint or None] + [q for d in (cfg.images, cfg.labels) if d and Path(d).is_dir()
                                          for q in Path(d).iterdir()]
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    check_output(cfg.out, inputs=_inputs, suffixes=(".pt", ".pth"), what="checkpoint")
except (MedSAMError, OSError) as _exc:
    sys.exit(f"finetune.py: error: {_exc}")

# -----------------------------------------------------------------------------
# distributed setup: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and cfg.device in ("", "cuda")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device(cfg.device or "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
else:
    rank, local_rank, world = 0, 0, 1
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
master = rank == 0
torch.manual_seed(cfg.seed)  # the same seed on every rank: LoRA adapters start identical


def log(*args) -> None:
    if master:
        print(*args, flush=True)


# -----------------------------------------------------------------------------
# data: one item = one object (image index, label); the same medsam_core pieces as in napari
data = make_training_data(read_folder_pairs(cfg.images, cfg.labels), min_objects=1)
heldout = None
if cfg.holdout > 0:
    data, heldout = split_holdout(data, cfg.holdout, cfg.seed)
model = load_model(cfg.model, checkpoint=cfg.checkpoint or None, device=str(device))
base = model if heldout is not None else None
pre = model.spec.preprocessing
flips = [(False, False), (True, False), (False, True), (True, True)] if cfg.flips else [(False, False)]
variants = {  # (image, flip) -> input tensor, boxes and low-res targets of that image's objects
    (i, f): prepare_variant(data, i, idx, pre, f) for i, idx in data.by_image().items() for f in flips
}
position = {}  # object index -> (image index, row within the variant)
for (i, _f), v in variants.items():
    for row, obj in enumerate(v.objects):
        position[obj] = (i, row)
embeddings = {}
if cfg.mode == "decoder":  # frozen encoder: encode every (flipped) image once, up front
    with torch.no_grad():
        for key, v in variants.items():
            embeddings[key] = model.image_encoder(torch.from_numpy(v.prepared.tensor[None]).to(device))
log(f"{len(data)} objects in {len(data.images)} images; mode {cfg.mode}; world size {world}; device {device}")


# -----------------------------------------------------------------------------
# model: freeze per mode, wrap in DDP
class Trainable(nn.Module):
    """One forward per step (DDP wants that): encode the batch's images if training the encoder,
    then decode each image's objects against its own embedding."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, inputs: list[torch.Tensor], boxes: list[torch.Tensor]):
        if cfg.mode != "decoder":
            inputs = list(self.sam.image_encoder(torch.cat(inputs)).split(1))
        logits, ious = [], []
        pe = self.sam.prompt_encoder.get_dense_pe()
        for emb, b in zip(inputs, boxes, strict=True):
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=b[:, None, :], masks=None)
            lo, iou = self.sam.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                            dense_prompt_embeddings=dense, multimask_output=False)
            logits.append(lo)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)


work = copy.deepcopy(model.module).eval()  # the nn.Module; eval: BatchNorm keeps its statistics (few images per batch)
params = set_trainable(work, TrainConfig(mode=cfg.mode, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha))
net = Trainable(work).to(device)
if ddp:
    net = DDP(net, device_ids=[local_rank] if device.type == "cuda" else None)
optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
seg_loss, iou_loss = DiceCELoss(), IoURegressionLoss()
log(f"training {sum(p.numel() for p in params):,} parameters")

# -----------------------------------------------------------------------------
# training loop
sampler = DistributedSampler(range(len(data)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
steps_per_epoch = -(-len(sampler) // cfg.batch_size)
total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
rng = np.random.default_rng(cfg.seed + rank)  # jitter/flips differ per rank, as the data does
step, t0 = 0, time.perf_counter()
for epoch in range(cfg.epochs):
    sampler.set_epoch(epoch)
    order = list(sampler)
    for s in range(0, len(order), cfg.batch_size):
        if step >= total:
            break
        lr = lr_at(step, total, cfg.lr, cfg.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        by_image: dict = {}
        for obj in order[s:s + cfg.batch_size]:
            by_image.setdefault(position[obj][0], []).append(position[obj][1])
        inputs, boxes, targets = [], [], []
        for i, rows in by_image.items():
            key = (i, flips[rng.integers(len(flips))])
            v = variants[key]
            b = jitter_boxes(v.boxes[rows], rng, cfg.box_jitter, v.prepared.original_size)
            boxes.append(torch.as_tensor(boxes_to_model(b, v.prepared), dtype=torch.float32, device=device))
            targets.append(torch.as_tensor(v.targets[rows][:, None], dtype=torch.float32, device=device))
            inputs.append(embeddings[key] if cfg.mode == "decoder"
                          else torch.from_numpy(v.prepared.tensor[None]).to(device))
        logits, iou = net(inputs, boxes)
        target = torch.cat(targets)
        loss = seg_loss(logits, target) + cfg.iou_weight * iou_loss(iou, logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        if step % cfg.log_every == 0 or step == total:
            log(f"step {step}/{total} epoch {epoch + 1} loss {loss.item():.4f} lr {lr:.2e} "
                f"{time.perf_counter() - t0:.1f}s")

# -----------------------------------------------------------------------------
# export: merge LoRA into the weights (plain architecture, strict load), evaluate, save on rank 0
final = copy.deepcopy(work)
merge_lora(final)
state = {k: v.detach().cpu() for k, v in final.state_dict().items()}
if cfg.hash_dir:
    os.makedirs(cfg.hash_dir, exist_ok=True)
    with open(os.path.join(cfg.hash_dir, f"rank{rank}.sha256"), "w") as fh:
        fh.write(state_dict_sha256(state))
if master:
    meta = {"base_model": model.spec.name, "base_sha256": model.weights_sha256, "mode": cfg.mode,
            "epochs": cfg.epochs, "steps": step, "objects_train": len(data), "world_size": world,
            "napari_medsam_version": package_version(), "script": "train/finetune.py"}
    if heldout is not None:
        from medsam_core.checkpoint import finish_model

        new = finish_model(final.requires_grad_(False), model.spec, device=str(device))
        meta["dice_before"] = evaluate(base, heldout).mean
        meta["dice_after"] = evaluate(new, heldout).mean
        meta["objects_heldout"] = len(heldout)
        log(f"held-out Dice before {meta['dice_before']:.4f} after {meta['dice_after']:.4f}")
    checkpoint = {  # read_state_dict/load_model read "model" and "meta"; the rest is the run's record
        "format": CHECKPOINT_FORMAT, "version": 1, "base_model": model.spec.name, "model": state, "meta": meta,
        "optimizer": optimizer.state_dict(), "step": step, "config": asdict(cfg),
        "spec": {"name": model.spec.name, "arch": model.spec.arch, **asdict(model.spec.preprocessing)},
    }
    path = os.path.abspath(cfg.out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    clean_stale_tmp(os.path.dirname(path))  # what an earlier killed run left behind (ours only, old)
    fd, tmp = mkstemp_readable(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:  # write, then rename: readers never see half a file
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log(f"saved {path} ({step} steps, {time.perf_counter() - t0:.1f}s)")
if ddp:
    dist.barrier()
    dist.destroy_process_group()
