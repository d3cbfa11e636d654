"""A ranking weighted by the user's own corrections: what the widget's "Rank" runs.

A *correction* is an object the model made and the user kept (edited or not): its box prompt, the
Dice between the model's mask at the time of prompting and the mask kept in the labels (1 when the
user accepted it as it was), and the sha256 of the weights that made the mask. The provenance of a
labels layer knows all of this (``corrections_from_provenance``).

``ranking_steps`` is one generator (progress per image plane, cancellable between planes):

1. measure the confidence components of each correction with the model that made it (the current
   predictor, or the previous one after a fine-tune); components measured earlier are passed in
   ``measured`` and reused (keyed by plane, label, box and weights: the same model on the same box
   gives the same values, and a model that is gone cannot be asked again); a correction is measured
   again only when it lacks one of the signals asked for and its model is loaded;
2. fit the weights on them (``signals.weights_from_corrections``: NNLS once there are
   ``signals.MIN_CORRECTIONS``, the defaults before);
3. score every candidate with the same signals and those weights, most uncertain first.

It returns a ``Ranking``: the suggestions, the ``FittedWeights`` used and the components newly
measured (for the caller to keep in its ``measured`` store).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .active import Candidate, Suggestion, rank, score_candidates
from .errors import PromptError
from .signals import SIGNALS, FittedWeights, weights_from_corrections

DEFAULT_SIGNALS = ("flip", "contrast")  # "head" is added by the caller when a head is trained
AUTOMATIC = "automatic:"  # provenance model name prefix of objects accepted from "Segment everything"


@dataclass(frozen=True)
class Correction:
    """An object the user kept: on image ``image_id`` (slice ``z``, None in 2D), its ``box`` (4,)
    XYXY pixels prompt, ``dice`` between the model's mask and the kept mask, its ``label`` id and the
    ``weights_sha256`` of the model that made the mask."""

    image_id: Hashable
    z: int | None
    box: tuple[float, float, float, float]
    dice: float
    label: int
    weights_sha256: str

    @property
    def key(self) -> tuple:
        """What identifies its measured components: the same box on the same plane by the same model."""
        return (self.image_id, self.z, self.label, tuple(round(v, 3) for v in self.box), self.weights_sha256)


@dataclass
class Ranking:
    """What ``ranking_steps`` returns: ``suggestions`` most uncertain first, the ``weights`` used,
    the ``signals`` measured and the corrections' components measured in this run (key -> components)."""

    suggestions: list[Suggestion]
    weights: FittedWeights
    signals: tuple[str, ...] = ()
    measured: dict[tuple, dict[str, float]] = field(default_factory=dict)
    unused: int = 0  # corrections made by a model that is no longer loaded and never measured


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def corrections_from_provenance(image_id: Hashable, provenance, labels: np.ndarray) -> list[Correction]:
    """The corrections a labels image's ``provenance`` knows: every record with a model mask, a box
    (or a 3D key box, on its slice) and a model sha256; the kept mask is ``labels`` ((H, W) or
    (Z, H, W) int, the label image as it is now). Objects painted by hand (no model mask), made
    from other prompts only (points, polygon, RECIST), by a model without weights hash, or accepted
    from the automatic head (model "automatic:...": its mask is not the decoder's for the box) are skipped."""
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3) or lab.dtype.kind not in "biu":
        raise PromptError(f"labels must be an integer (H, W) or (Z, H, W) array; got {lab.dtype} {lab.shape}")
    out = []
    for lid, rec in sorted(provenance.records.items()):
        if rec.model_mask is None or not rec.weights_sha256 or str(rec.model or "").startswith(AUTOMATIC):
            continue  # painted, no weights hash, or made by the automatic head (not the box's decoder mask)
        boxes = [p for p in rec.prompts if p.kind in ("box", "key_box") and (lab.ndim == 2) == (p.z is None)]
        if not boxes:
            continue
        prompt = boxes[-1]
        model = provenance.model_mask(lid, lab.shape)
        z = None if lab.ndim == 2 else int(prompt.z)
        if z is not None and not 0 <= z < len(lab):
            continue
        kept = (lab if z is None else lab[z]) == lid
        made = model if z is None else model[z]
        if not made.any():
            continue
        out.append(Correction(image_id, z, tuple(float(v) for v in prompt.data), _dice(made, kept), int(lid),
                              rec.weights_sha256))
    return out


def _sha(predictor) -> str | None:
    return getattr(getattr(predictor, "model", None), "weights_sha256", None)


def _planes(cands: Sequence[Candidate]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault((c.image_id, c.z), []).append(i)
    return groups


def ranking_steps(predictor, images: Mapping[Hashable, object], candidates: Sequence[Candidate],
                  corrections: Iterable[Correction] = (), measured: Mapping[tuple, Mapping[str, float]] | None = None,
                  previous=None, signals: Sequence[str] = DEFAULT_SIGNALS, head=None, n_jitter: int = 8,
                  top_k: int | None = None, seed: int = 0):
    """Generator: yields (done, total) after each image plane (corrections' planes first), returns a
    ``Ranking``. predictor / previous: ``Predictor`` of the current / previous model (the previous
    one measures corrections it made). images: image_id -> (H, W[, C]) plane or (Z, H, W) stack.
    corrections: from ``corrections_from_provenance``; measured: components measured by an earlier
    run (``Ranking.measured``), reused when the model that made a correction is gone.
    signals: extra components (``signals.SIGNALS``); "head" needs ``head`` and is dropped without.
    Raises PromptError on bad input (before any decoding)."""
    signals = tuple(s for s in signals if s != "head" or head is not None)
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        raise PromptError(f"unknown ranking signals {sorted(unknown)}; use {', '.join(SIGNALS)}")
    measured = dict(measured or {})
    by_model = {m: p for m, p in ((_sha(previous), previous), (_sha(predictor), predictor)) if m and p is not None}
    todo: dict[str, list[Correction]] = {}
    known, unused = [], 0
    for c in corrections:
        comp = measured.get(c.key)
        if comp is not None and (set(signals) <= set(comp) or c.weights_sha256 not in by_model):
            known.append((comp, c.dice))  # measured before (by the same model on the same box): no decode
        elif c.weights_sha256 in by_model:
            todo.setdefault(c.weights_sha256, []).append(c)
        else:
            unused += 1
    jobs = [(by_model[m], [Candidate(c.image_id, c.box, c.z, c.label) for c in cs], cs) for m, cs in todo.items()]
    cand_planes = _planes(candidates)
    total = sum(len(_planes(cands)) for _, cands, _ in jobs) + len(cand_planes)
    done, new = 0, {}
    for pred, cands, cs in jobs:
        for idx in _planes(cands).values():
            sugg = score_candidates(pred, images, [cands[i] for i in idx], n_jitter=n_jitter, seed=seed + done,
                                    signals=signals, head=head)
            for i, s in zip(idx, sugg, strict=True):
                comp = {k: v for k, v in s.components.items() if k != "area"}
                new[cs[i].key] = comp
                known.append((comp, cs[i].dice))
            done += 1
            yield done, total
    fitted = weights_from_corrections([c for c, _ in known], [d for _, d in known])
    out: list[Suggestion] = []
    for idx in cand_planes.values():
        sugg = score_candidates(predictor, images, [candidates[i] for i in idx], previous=previous,
                                n_jitter=n_jitter, seed=seed + done, signals=signals, head=head,
                                weights=fitted.weights)
        for i, s in zip(idx, sugg, strict=True):
            s.index = i  # ties keep the overall candidate order
            out.append(s)
        done += 1
        yield done, total
    return Ranking(rank(out, top_k), fitted, signals, new, unused)


def rank_fitted(predictor, images: Mapping[Hashable, object], candidates: Sequence[Candidate],
                corrections: Iterable[Correction] = (), on_progress=None, **kwargs) -> Ranking:
    """``ranking_steps`` run to the end (scripts): on_progress(done, total) after each plane."""
    gen = ranking_steps(predictor, images, candidates, corrections, **kwargs)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(*step)
