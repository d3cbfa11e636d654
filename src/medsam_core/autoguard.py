"""The automatic head's guard: rounds that never make the active automatic model worse.

Like ``guard.FineTuneSession`` for the decoder: ``HeadSession.run_round`` keeps a share of the
labelled objects out of training (their known region too), trains a new head on the rest
(``autohead.train_head``), fits its post-processing on the training objects, then scores the new
head and the active automatic model on the held-out objects (F1 at IoU 0.5; whole objects with at
least half their pixels in the held-out region). Before any head is active, the active model is
the threshold detector (``auto.AutoModel(split=True)`` + the decoder). The new head becomes active
unless the active model is better beyond the noise of so few held-out objects (``p_worse`` >=
``REFUSE_AT``: a paired bootstrap over the held-out units), or with ``force``; ``rollback``
restores the previous one.

The head travels inside the fine-tuned checkpoint: ``save_with_model(path, model, head)`` stores it
as the checkpoint extra ``"auto_head"`` and ``head_from_model(load_model(...))`` gives it back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .auto import AutoModel, DetectorParams
from .autohead import AutoHead, HeadConfig, HeadFit, check_pairs, known_region, train_head
from .autoseg import fit_post, match_in_region, segment_everything
from .errors import PromptError, TrainingError

EXTRA = "auto_head"
MIN_OBJECTS = 5
#: A new head is refused when the active model has the higher held-out F1 in at least this share of
#: bootstrap resamples of the held-out units: a few held-out objects cannot rank two close models,
#: so the guard keeps out a head that is worse beyond that noise, and a tie goes to the new head
#: (trained on more of the user's labels). See docs/automatic.md for the measurement.
REFUSE_AT = 0.9
BOOTSTRAP = 2000


def head_from_model(model) -> AutoHead | None:
    """The automatic head stored in a loaded model's checkpoint extras, or None."""
    extras = getattr(model, "extras", None) or {}
    if EXTRA not in extras:
        return None
    head = AutoHead.from_dict(dict(extras[EXTRA]))
    head.check_model(model)
    return head


def save_with_model(path: str | os.PathLike, model, head: AutoHead | None, meta: dict | None = None) -> Path:
    """Write ``model`` (its other extras kept) with ``head`` as extra "auto_head" (atomic)."""
    from .checkpoint import save_checkpoint

    extras = {k: v for k, v in (getattr(model, "extras", None) or {}).items() if k != EXTRA}
    if head is not None:
        head.check_model(model)
        extras[EXTRA] = head.to_dict()
    return save_checkpoint(path, model, dict(meta if meta is not None else getattr(model, "meta", {}) or {}),
                           extras=extras)


def split_objects(labels: Sequence[np.ndarray], holdout: float, seed: int = 0, images: Sequence | None = None,
                  sides: dict[bytes, bool] | None = None) -> list[np.ndarray]:
    """Per image, the label ids held out (about ``holdout`` of all objects, at least 1).

    sides (with images): the split of earlier rounds, kept (``data.draw_held``): an object held
    out before is held out again and a training object stays in training.
    """
    from .data import binary_mask_hint, draw_held, image_key, object_key

    ids = [(i, int(k)) for i, lab in enumerate(labels) for k in np.unique(lab) if k != 0]
    hint = binary_mask_hint(labels)
    if len(ids) < MIN_OBJECTS:
        raise TrainingError(f"label at least {MIN_OBJECTS} objects to train the automatic head "
                            f"(the guard keeps some of them to check the result); got {len(ids)}{hint}")
    n = max(1, int(round(holdout * len(ids))))
    keys = None
    if sides is not None:
        digests = [image_key(img) for img in images]
        keys = [object_key(digests[i], np.asarray(labels[i]) == k) for i, k in ids]
    picked = draw_held(len(ids), n, seed, keys, sides, draw=lambda rng, m, k: rng.choice(m, k, replace=False))
    chosen = [ids[j] for j in picked]
    return [np.asarray(sorted(k for i, k in chosen if i == im), np.int64) for im in range(len(labels))]


@dataclass
class Part:
    """Labelled images cut into a training part and a held-out part (known regions per image)."""

    images: list
    train_labels: list
    train_known: list
    held_labels: list
    held_known: list


def split_part(images, labels, known, holdout: float, seed: int, context: float, min_context: int,
               sides: dict[bytes, bool] | None = None) -> Part:
    held = split_objects(labels, holdout, seed, images, sides)
    part = Part([], [], [], [], [])
    for img, lab, kn, ids in zip(images, labels, known, held, strict=True):
        lab = np.asarray(lab)
        is_held = np.isin(lab, ids)
        hk = known_region(np.where(is_held, lab, 0), context, min_context) & kn if len(ids) else np.zeros(lab.shape, bool)
        part.images.append(img)
        part.train_labels.append(np.where(hk, 0, lab))
        part.train_known.append(kn & ~hk)
        # whole objects: match_in_region counts those with at least half their pixels in the region (an
        # object cut to the region would leave slivers of training objects as unmatched references)
        part.held_labels.append(np.where(kn, lab, 0))
        part.held_known.append(hk)
    return part


def heldout_counts(propose, part: Part) -> tuple[np.ndarray, list[float]]:
    """A proposer ``image -> Proposals`` on the held-out regions -> ((U, 3) int: matched, proposals,
    references per unit, a connected piece of an image's held-out region; Dice of each matched object)."""
    from scipy import ndimage

    rows, dices = [], []
    for img, lab, kn in zip(part.images, part.held_labels, part.held_known, strict=True):
        if not kn.any():
            continue
        masks = propose(img).masks
        pieces, n = ndimage.label(kn)
        for k in range(1, n + 1):
            r = match_in_region(masks, lab, pieces == k)
            rows.append((r.matched, r.n_pred, r.n_ref))
            dices += [r.mean_dice] * r.matched
    return np.asarray(rows, np.int64).reshape(-1, 3), dices


def _f1(counts: np.ndarray) -> np.ndarray:
    """F1 of (..., U, 3) unit counts summed over the units."""
    tp, n_pred, n_ref = (counts[..., j].sum(-1) for j in range(3))
    return 2 * tp / np.maximum(n_pred + n_ref, 1)


def heldout_score(propose, part: Part) -> tuple[float, float, float]:
    """(score, F1, mean Dice) of a proposer ``image -> Proposals`` on the held-out regions."""
    counts, dices = heldout_counts(propose, part)
    f1, dice = float(_f1(counts)), float(np.mean(dices)) if dices else 0.0
    return f1 + dice / 100, f1, dice


def guard_passes(worse: float, f1: float, f1_active: float) -> tuple[bool, bool]:
    """(the new head may become active, it finds none of the held-out objects the active model finds).

    A head that finds none is worse whatever the bootstrap says: with few held-out units most
    resamples are 0-vs-0 ties, which count as "not worse", and an F1-0 head passed at P(worse) 0.66
    (it then matched 0 of 29 test nuclei, against the threshold detector's 17).
    """
    finds_none = f1 == 0.0 and f1_active > 0.0
    return worse < REFUSE_AT and not finds_none, finds_none


def p_worse(new: np.ndarray, active: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> float:
    """Share of paired bootstrap resamples of the held-out units in which ``new`` has the lower F1
    (``heldout_counts`` of both on the same units; no units: 0)."""
    if len(new) == 0:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, len(new), (n_boot, len(new)))
    return float(np.mean(_f1(new[idx]) < _f1(active[idx])))


@dataclass
class HeadRound:
    number: int
    fit: HeadFit
    f1: float  # held-out, new head
    dice: float
    f1_active: float  # held-out, the automatic model active before the round
    dice_active: float
    accepted: bool
    forced: bool
    meta: dict = field(default_factory=dict)

    @property
    def head(self) -> AutoHead:
        return self.fit.head


class HeadSession:
    """Active automatic head (None: the threshold detector) + rounds, accept/refuse, rollback."""

    def __init__(self, head: AutoHead | None = None):
        self.active: AutoHead | None = head
        self.rounds: list[HeadRound] = []
        self._previous: list[AutoHead | None] = []
        self.sides: dict[bytes, bool] = {}  # object key -> held out, kept across rounds (split_objects)

    def active_proposer(self, predictor):
        if self.active is not None:
            return lambda img: segment_everything(predictor, self.active, img)
        threshold = AutoModel(DetectorParams(split=True))
        return lambda img: threshold.propose(predictor, img)

    def run_round(self, predictor, images: Sequence, labels: Sequence, known: Sequence | None = None,
                  config: HeadConfig | None = None, force: bool = False, cancel=None):
        """Generator: yields ``autohead.HeadStep``s, returns the HeadRound (see the module docstring).
        On cancel or error nothing changes."""
        config = (config or HeadConfig()).validate()
        check_pairs(images, labels, known)
        labels = [np.asarray(lab) for lab in labels]
        if known is None:
            known = [known_region(lab, config.context, config.min_context) for lab in labels]
        known = [np.asarray(k, bool) for k in known]
        part = split_part(list(images), labels, known, config.holdout, config.seed, config.context, config.min_context,
                          self.sides)
        fit = yield from train_head(predictor, part.images, part.train_labels, part.train_known, config, cancel)
        post, _ = fit_post(predictor, fit.head, part.images, part.train_labels, part.train_known)
        fit.head.post = post
        new, dices = heldout_counts(lambda img: segment_everything(predictor, fit.head, img), part)
        active, dices_a = heldout_counts(self.active_proposer(predictor), part)
        f1, f1_a = float(_f1(new)), float(_f1(active))
        dice, dice_a = (float(np.mean(d)) if d else 0.0 for d in (dices, dices_a))
        worse = p_worse(new, active, seed=config.seed)
        passes, finds_none = guard_passes(worse, f1, f1_a)
        accepted = passes or force
        number = len(self.rounds) + 1
        meta = {"round": number, "heldout_f1": f1, "heldout_dice": dice, "active_f1": f1_a, "active_dice": dice_a,
                "heldout_objects": int(new[:, 2].sum()), "heldout_units": len(new), "p_worse": worse,
                "finds_none": bool(finds_none),
                "accepted": bool(accepted), "forced": bool(force and not passes),
                "active_was": "head" if self.active is not None else "threshold detector"}
        fit.head.meta.update(meta)
        rnd = HeadRound(number, fit, f1, dice, f1_a, dice_a, bool(accepted), meta["forced"], meta)
        self.rounds.append(rnd)
        if accepted:
            self._previous.append(self.active)
            self.active = fit.head
        return rnd

    def accept(self, rnd: HeadRound) -> HeadRound:
        """Make a refused round's head active all the same; ``rollback`` undoes it."""
        if rnd.accepted:
            raise TrainingError(f"automatic round {rnd.number} is already active")
        self._previous.append(self.active)
        self.active = rnd.head
        rnd.accepted = rnd.forced = True
        rnd.meta.update(accepted=True, forced=True)
        rnd.head.meta.update(accepted=True, forced=True)
        return rnd

    @property
    def can_rollback(self) -> bool:
        return bool(self._previous)

    def adopt(self, head: AutoHead) -> None:
        """Make ``head`` (e.g. the one inside a checkpoint loaded later) active; ``rollback`` returns
        to the one it replaces."""
        self._previous.append(self.active)
        self.active = head

    def rollback(self) -> AutoHead | None:
        if not self._previous:
            raise TrainingError("nothing to roll back: no automatic round was made active")
        self.active = self._previous.pop()
        return self.active


def train_and_guard(predictor, images, labels, known=None, config: HeadConfig | None = None, force=False,
                    head: AutoHead | None = None):
    """Run one guarded round to the end (no progress) -> (HeadSession, HeadRound)."""
    session = HeadSession(head)
    gen = session.run_round(predictor, images, labels, known, config, force)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return session, stop.value


def with_post(head: AutoHead, **changes) -> AutoHead:
    """A copy of ``head`` sharing its module, with post-processing settings changed."""
    try:
        return replace(head, post=replace(head.post, **changes).validate())
    except TypeError as exc:
        raise PromptError(f"unknown post-processing setting: {exc}") from exc
