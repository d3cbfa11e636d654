"""Low-rank adapters (LoRA) on the image encoder's attention linear layers.

As SAMed and Medical SAM Adapter do for SAM: each adapted ``nn.Linear`` W keeps its weights
frozen and gains a trainable low-rank update, y = W x + (alpha / r) * B (A x), with A (r, in)
small random and B (out, r) zero, so training starts exactly at the base model.
``merge_lora`` folds B A into W and puts plain ``nn.Linear`` layers back: the exported model has
the original architecture and its state dict loads strictly with ``load_model``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import TrainingError


class LoRALinear(nn.Module):
    """``base`` (frozen nn.Linear) + a rank-``rank`` update scaled by ``alpha / rank``.

    forward: (..., in_features) -> (..., out_features).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise TrainingError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scale = int(rank), float(alpha) / int(rank)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + scale * B A (a new module; this one is unchanged)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _targets(encoder: nn.Module, include_proj: bool) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every attention qkv (and proj) nn.Linear in the encoder."""
    names = ("qkv", "proj") if include_proj else ("qkv",)
    found = []
    for module in encoder.modules():
        for attr in names:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear) and hasattr(module, "qkv"):
                found.append((module, attr))
    return found


def add_lora(model: nn.Module, rank: int = 4, alpha: float = 4.0, include_proj: bool = False) -> int:
    """Wrap the image encoder's attention qkv (and proj) layers in place; return how many.

    The model is changed in place: call it on a copy. Only the adapters require gradients
    afterwards within those layers; freezing the rest of the model is the caller's job.
    """
    targets = _targets(model.image_encoder, include_proj)
    if not targets:
        raise TrainingError("this image encoder has no attention qkv layers to adapt; use mode 'decoder' or 'full'")
    for parent, attr in targets:
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha))
    return len(targets)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear in ``model`` by its merged nn.Linear, in place; return how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                count += 1
    return count


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (A and B of every LoRALinear)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]
