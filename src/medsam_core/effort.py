"""Effort and quality per fine-tuning round, from the provenance records and an event log.

Events are (time in seconds, kind, label id, round): ``"prompt"`` when a box/point is placed for
an object, ``"commit"`` when its mask is written into the labels. Per object:

* seconds: from the previous commit (any object; or its own first prompt when it is the first
  commit of the log) to its last commit, each gap capped at ``idle_cap`` seconds so a coffee
  break does not count as annotation time;
* prompts: its number of prompt events;
* accepted: the person did not edit the model's mask (``not record.edited_by_person``);
* dice: Dice of the model's mask (kept in the provenance) against the mask the person kept in
  the labels.

``round_table`` aggregates these per fine-tuning round (the ``round`` of each object's record,
i.e. the round of the model that made it); ``plot_rounds`` draws them into a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import MedSAMError
from .metrics import dice
from .provenance import Provenance

EVENT_KINDS = ("prompt", "commit")


@dataclass(frozen=True)
class Event:
    """One annotation event: ``time`` seconds (any epoch, e.g. time.time()), ``kind`` "prompt" or
    "commit", the label id it concerns."""

    time: float
    kind: str
    label: int

    def __post_init__(self):
        if self.kind not in EVENT_KINDS:
            raise MedSAMError(f"event kind must be one of {', '.join(EVENT_KINDS)}; got {self.kind!r}")
        if not np.isfinite(self.time):
            raise MedSAMError(f"event time must be a finite number of seconds; got {self.time}")


def attach_events(provenance: Provenance, events: Iterable[Event]) -> Provenance:
    """Store ``events`` in ``provenance.events`` (saved in the sidecar with the records); returns it."""
    provenance.events = [(float(e.time), str(e.kind), int(e.label)) for e in events]
    return provenance


def saved_events(provenance: Provenance) -> list[Event]:
    """The event log saved in ``provenance`` as Events (malformed entries are skipped)."""
    out = []
    for t, kind, label in provenance.events:
        try:
            out.append(Event(t, kind, label))
        except (MedSAMError, TypeError, ValueError):
            continue
    return out


@dataclass
class ObjectEffort:
    label: int
    round: int | None
    seconds: float
    prompts: int
    accepted: bool
    dice: float  # model mask vs kept mask (nan when the model made no mask: painted by hand)


@dataclass
class RoundStats:
    """One row of the per-round table; means over the round's objects."""

    round: int | None
    objects: int
    seconds_per_object: float
    prompts_per_object: float
    accepted_share: float
    mean_dice: float  # model mask vs kept mask, over objects the model made

    def to_dict(self) -> dict:
        return asdict(self)


def object_seconds(events: Sequence[Event], idle_cap: float = 120.0) -> dict[int, float]:
    """label -> annotation seconds (see the module docstring)."""
    out: dict[int, float] = {}
    first_prompt: dict[int, float] = {}
    last_commit: float | None = None
    for e in sorted(events, key=lambda e: e.time):
        if e.kind == "prompt":
            first_prompt.setdefault(e.label, e.time)
            continue
        start = last_commit if last_commit is not None else first_prompt.get(e.label, e.time)
        out[e.label] = out.get(e.label, 0.0) + min(max(e.time - start, 0.0), idle_cap)
        last_commit = e.time
    return out


def object_table(provenance: Provenance, labels: np.ndarray, events: Iterable[Event] = (),
                 idle_cap: float = 120.0) -> list[ObjectEffort]:
    """Per object of ``labels`` with a provenance record (sync the provenance first)."""
    events = list(events)
    seconds = object_seconds(events, idle_cap)
    prompts: dict[int, int] = {}
    for e in events:
        if e.kind == "prompt":
            prompts[e.label] = prompts.get(e.label, 0) + 1
    lab = np.asarray(labels)
    rows = []
    for label, rec in sorted(provenance.records.items()):
        kept = lab == label
        if not kept.any():
            continue
        d = dice(provenance.model_mask(label, lab.shape), kept) if rec.model_mask is not None else float("nan")
        rows.append(ObjectEffort(label, rec.round, seconds.get(label, float("nan")),
                                 prompts.get(label, len(rec.prompts)), not rec.edited_by_person, d))
    return rows


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def round_table(provenance: Provenance, labels: np.ndarray, events: Iterable[Event] = (),
                idle_cap: float = 120.0) -> list[RoundStats]:
    """Per-round effort and quality, rounds in order (None, objects painted by hand, last)."""
    rows = object_table(provenance, labels, events, idle_cap)
    rounds = sorted({r.round for r in rows}, key=lambda r: (r is None, r or 0))
    out = []
    for rnd in rounds:
        sel = [r for r in rows if r.round == rnd]
        out.append(RoundStats(
            rnd, len(sel), _nanmean([r.seconds for r in sel]), float(np.mean([r.prompts for r in sel])),
            float(np.mean([r.accepted for r in sel])), _nanmean([r.dice for r in sel]),
        ))
    return out


def plot_rounds(table: Sequence[RoundStats], path: str | os.PathLike, title: str = "Effort per round") -> Path:
    """Write a PNG with seconds/object, prompts/object, accepted share and Dice per round."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in table if r.round is not None]
    if not rows:
        raise MedSAMError("no fine-tuning round has objects made by the model yet: nothing to plot")
    path = Path(path)
    x = [r.round for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].plot(x, [r.seconds_per_object for r in rows], "o-", label="seconds / object")
    axes[0].plot(x, [r.prompts_per_object for r in rows], "s-", label="prompts / object")
    axes[0].set_xlabel("fine-tuning round")
    axes[0].legend()
    axes[1].plot(x, [r.accepted_share for r in rows], "o-", label="accepted without edits")
    axes[1].plot(x, [r.mean_dice for r in rows], "s-", label="Dice model vs kept")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("fine-tuning round")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
