"""The fine-tuning guard: rounds of training that never make the active model worse.

``FineTuneSession`` (Qt-free; the napari panel holds one) keeps the base model, the active model
and the history of rounds. A round fine-tunes a copy of a chosen start model (the base by
default: rounds do not drift unless ``start="active"`` is asked), measures the held-out Dice of
the active model and of the new one on the same objects, and makes the new weights active only
if they are better (or ``force=True``). ``rollback()`` restores the previous active model.
Every round is written as a checkpoint (atomically, through ``checkpoint.save_checkpoint``) with
its metadata when the session has an ``out_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import save_checkpoint
from .data import TrainingData, split_holdout
from .errors import TrainingError
from .training import StepCallback, TrainConfig, evaluate, fit

START_CHOICES = ("base", "active")


@dataclass
class Round:
    """One fine-tuning round: its result, whether it became active, and its checkpoint file."""

    number: int
    result: Any  # training.FitResult
    dice_active: float  # held-out Dice of the model that was active when the round started
    accepted: bool
    forced: bool
    start: str
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.result.model


def _sides_from_meta(split) -> dict[bytes, bool]:
    """A checkpoint's stored split ({hex key: held out}) -> ``sides``; {} for none or a malformed one."""
    if not isinstance(split, dict):
        return {}
    try:
        return {bytes.fromhex(k): bool(v) for k, v in split.items()}
    except (TypeError, ValueError):
        return {}


class FineTuneSession:
    """Base model + active model + history of rounds, with accept/refuse and rollback.

    base_model: the model rounds start from by default (e.g. ``load_model("lite_medsam")``).
    out_dir: where each round's checkpoint goes (``round_001.pt``, ...); None writes nothing.
    cache: the EmbeddingCache shared with the Predictor (decoder mode reuses its embeddings).
    """

    def __init__(self, base_model, out_dir: str | os.PathLike | None = None, cache=None):
        self.base_model = base_model
        self.active_model = base_model
        self.out_dir = Path(out_dir).expanduser() if out_dir else None
        self.cache = cache
        self.rounds: list[Round] = []
        self._previous: list[Any] = []  # stack of models that were active before
        # object key -> held out, kept across rounds (data.split_holdout) and sessions: a round's checkpoint
        # stores it ("split"), so day 2 starting from that checkpoint holds out the same objects
        meta = getattr(base_model, "meta", None) or {}
        self.sides: dict[bytes, bool] = _sides_from_meta(meta.get("split"))
        self.first_round = int(meta.get("round") or 0) + 1  # numbering goes on from the loaded round

    def run_round(self, data: TrainingData, config: TrainConfig | None = None, heldout: TrainingData | None = None,
                  start: str = "base", force: bool = False, on_step: StepCallback | None = None, cancel=None,
                  intensity=None, channel: int | str | None = "auto") -> Round:
        """Fine-tune, compare with the active model on the held-out objects, accept or refuse.

        start: "base" (default) or "active": the model this round trains from.
        force: make the new model active even if its held-out Dice is not better.
        On cancel (CancelledError) or any error nothing changes: no round, no file, same model.
        """
        if start not in START_CHOICES:
            raise TrainingError(f"start must be 'base' or 'active', got {start!r}")
        config = (config or TrainConfig()).validate()
        if heldout is None:
            data, heldout = split_holdout(data, config.holdout, config.seed, self.sides)
        origin = self.base_model if start == "base" else self.active_model
        result = fit(origin, data, config, on_step=on_step, cancel=cancel, cache=self.cache, heldout=heldout,
                     intensity=intensity, channel=channel)
        if origin is self.active_model:
            dice_active = result.dice_before
        else:
            dice_active = evaluate(self.active_model, heldout, self.cache, intensity, channel).mean
        accepted = result.dice_after > dice_active or force
        number = self.first_round + len(self.rounds)
        meta = {
            **result.meta,
            "round": number,
            "start": start,
            "start_sha256": getattr(origin, "weights_sha256", None),
            "base_sha256": getattr(self.base_model, "weights_sha256", None),
            "dice_active_before": dice_active,
            "accepted": bool(accepted),
            "forced": bool(force and result.dice_after <= dice_active),
            "split": {k.hex(): bool(v) for k, v in self.sides.items()},
        }
        result.model.meta = dict(meta)
        path = None
        if self.out_dir is not None:
            path = save_checkpoint(self.out_dir / f"round_{number:03d}.pt", result.model, meta)
        rnd = Round(number, result, dice_active, bool(accepted), meta["forced"], start, path, meta)
        self.rounds.append(rnd)
        if accepted:
            self._previous.append(self.active_model)
            self.active_model = result.model
        return rnd

    def accept(self, rnd: Round) -> Round:
        """Make a refused round's model active all the same (the user insists); ``rollback`` undoes
        it. The round's metadata (and its checkpoint file, if one was written) say so."""
        if rnd.accepted:
            raise TrainingError(f"round {rnd.number} is already active")
        self._previous.append(self.active_model)
        self.active_model = rnd.model
        rnd.accepted = rnd.forced = True
        rnd.meta.update(accepted=True, forced=True)
        rnd.model.meta = dict(rnd.meta)
        if rnd.checkpoint is not None:
            rnd.checkpoint = save_checkpoint(rnd.checkpoint, rnd.model, rnd.meta)
        return rnd

    @property
    def can_rollback(self) -> bool:
        return bool(self._previous)

    @property
    def previous_model(self):
        """The model that was active before the current one (what ``rollback`` restores), or None."""
        return self._previous[-1] if self._previous else None

    def rollback(self):
        """Make the previously active model active again; returns it."""
        if not self._previous:
            raise TrainingError("nothing to roll back: the active model is the one the session started with")
        self.active_model = self._previous.pop()
        return self.active_model

    def reset_to_base(self):
        """Make the base model active (rollback() returns to the model active before this)."""
        if self.active_model is not self.base_model:
            self._previous.append(self.active_model)
            self.active_model = self.base_model
        return self.active_model

    def save_active(self, path: str | os.PathLike) -> Path:
        """Write the active model as a checkpoint (atomic) with its metadata; returns the path."""
        model = self.active_model
        meta = dict(getattr(model, "meta", {}) or {})
        meta.setdefault("base_model", model.spec.name)
        return save_checkpoint(path, model, meta)
