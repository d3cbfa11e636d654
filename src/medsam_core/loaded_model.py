"""``LoadedModel``: a model's identity as data beside its ``nn.Module``.

What ``load_model`` returns: the registry spec, the weights (file path, sha256), the encoder id
the embedding cache keys on, the checkpoint's metadata and named extras, and the module. The
identity lives here, not as attributes patched onto the module, so a new model family is a new
builder and spec, and two wrappers of one module cannot disagree about what it is.

Transition: attributes a ``LoadedModel`` does not define are read from its module (``decode``,
``image_encoder``, ``parameters()``, ``state_dict()``, ...), and ``to``/``eval``/``train``/
``requires_grad_`` return the ``LoadedModel``, so code written for the bare module keeps
working. Pass ``loaded.module`` where an ``nn.Module`` itself is needed (optimizers, DDP,
``isinstance`` checks, ``copy.deepcopy`` for training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import ModelSpec

__all__ = ["LoadedModel"]


@dataclass(eq=False, repr=False)
class LoadedModel:
    """A model ready to serve: ``module`` (eval mode, on its device) and what it is.

    spec: the registry ``ModelSpec`` (name, architecture, preprocessing).
    weights_sha256: sha256 of the weights file; of the state dict for in-memory weights and for
        checkpoints written by ``save_checkpoint`` (stored in their meta as ``state_sha256``), so a
        fine-tuned model keeps one identity in provenance before and after it is saved and reloaded.
    encoder_id: sha256 of the image-encoder tensors; the embedding cache keys on it, so a
    decoder-only fine-tune keeps it and reuses every cached embedding.
    weights_path: the file read, or None (bundled weights give their path; trained in memory: None).
    meta: the checkpoint's metadata (plain values: base model, run record, guard round, ...).
    extras: named extra state saved beside the weights (``save_checkpoint(..., extras=...)``),
    e.g. ``{"auto_head": {"state": {...tensors...}, "config": {...}}}``; ``{}`` when none.
    """

    module: Any
    spec: ModelSpec
    weights_sha256: str
    encoder_id: str
    weights_path: str | None = None
    meta: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @property
    def device(self):
        """The torch.device of the module's parameters."""
        return next(self.module.parameters()).device

    # -- transition: behave like the module for code written against it ------------------------
    def __getattr__(self, name: str):
        # Only reached for names the dataclass does not have. Dunder and "module" lookups must
        # fail plainly (copy/pickle probe them on half-built instances that have no module yet).
        if name.startswith("__") or name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def to(self, *args, **kwargs) -> LoadedModel:
        self.module.to(*args, **kwargs)
        return self

    def eval(self) -> LoadedModel:
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> LoadedModel:
        self.module.train(mode)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> LoadedModel:
        self.module.requires_grad_(requires_grad)
        return self

    def __repr__(self) -> str:
        where = self.weights_path or "in memory"
        return (f"LoadedModel({self.spec.name!r}, weights {self.weights_sha256[:12]} ({where}), "
                f"encoder {self.encoder_id[:12]}, extras {sorted(self.extras)})")

