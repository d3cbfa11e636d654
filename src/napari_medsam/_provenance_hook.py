"""Qt-free provenance, classes and effort of the widget's labels layer (the session's commit hooks).

The provenance lives in the labels layer: ``layer.metadata["medsam_provenance"]`` (a
``medsam_core.provenance.Provenance``, written beside the labels by the npe2 writer) and the effort
events in ``layer.metadata["medsam_effort_events"]`` (``effort.Event``; kept for the session, not
saved). ``ProvenanceActions`` installs ``record_commit`` / ``undo_commit`` as the session's
``on_commit`` / ``on_undo``: every object the widget writes is recorded with its model mask, prompts
(box, key boxes, points, with their slice), model name, weights sha256 and fine-tuning round
(``model.meta["round"]``, set by the fine-tune guard; 0 for the base model), and one "prompt" +
one "commit" event (a refinement counts its new points). The session turns a failure here into a
warning: the labels are written either way. The current class is the provenance's default class,
so new objects get it and it is saved with the table.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np

from medsam_core import MedSAMError
from medsam_core.effort import Event, attach_events, round_table, saved_events
from medsam_core.provenance import Provenance

from ._prompt_kinds import plane_z, provenance_prompts
from ._reader import EVENTS_KEY, PROV_KEY

KINDS_KEY = "medsam_prompt_kinds"
__all__ = ["KINDS_KEY", "ProvenanceActions", "kinds_of", "plane_z", "provenance_of"]


def provenance_of(labels_layer) -> Provenance:
    """The Provenance kept in ``labels_layer.metadata`` (made, or rebuilt from a dict, on first use)."""
    meta = labels_layer.metadata
    prov = meta.get(PROV_KEY)
    if isinstance(prov, dict):
        prov = Provenance.from_dict(prov, f"provenance of layer {labels_layer.name!r}")
    if prov is None:
        prov = Provenance()
    meta[PROV_KEY] = prov
    return prov


def events_of(labels_layer) -> list[Event]:
    return labels_layer.metadata.setdefault(EVENTS_KEY, [])


def kinds_of(labels_layer) -> dict[int, str]:
    """label id -> the prompt kind that made it ("box", "recist", "polygon"; ``_prompt_kinds.KINDS``),
    in ``labels_layer.metadata["medsam_prompt_kinds"]``."""
    return labels_layer.metadata.setdefault(KINDS_KEY, {})


def model_round(model) -> int:
    """Fine-tuning round of ``model``: ``meta["round"]`` (set by the guard), 0 for the base model."""
    return int((getattr(model, "meta", None) or {}).get("round", 0) or 0)


class ProvenanceActions:
    """Provenance hooks, classes, sync, effort per round and sidecar save/load for one ``Session``."""

    def __init__(self, session):
        self.s = session
        self.on_changed: Callable = lambda: None  # after the records changed (the panel refreshes)
        session.on_commit, session.on_undo = self.record_commit, self.undo_commit

    def _labels(self):
        lab = self.s.labels_layer
        if lab is None or lab not in self.s.viewer.layers:
            raise MedSAMError("no labels layer: pick the image to segment in the MedSAM widget first")
        if lab.ndim not in (2, 3):
            raise MedSAMError(f"provenance covers 2D and 3D labels; {lab.name!r} has {lab.ndim} dimensions")
        return lab

    def provenance(self) -> Provenance:
        return provenance_of(self._labels())

    def record_commit(self, commit) -> None:
        """Record every object this commit wrote (model mask, prompts, model, round) and its events."""
        lab = self.s.labels_layer
        if lab is None or lab.ndim not in (2, 3):
            return  # 4D / channel labels: no provenance (documented)
        prov, events = provenance_of(lab), events_of(lab)
        before = commit.objects_before
        changed = [lid for lid, rec in self.s.objects.items() if before.get(lid) is not rec]
        commit.extra["provenance_before"] = {lid: copy.deepcopy(prov.records.get(lid)) for lid in changed}
        kinds = kinds_of(lab)
        commit.extra["kinds_before"] = {lid: kinds.get(lid) for lid in changed}
        data, now, s = np.asarray(lab.data), time.time(), self.s
        model = s.model
        for lid in changed:
            rec, old = s.objects[lid], before.get(lid)
            prompts = provenance_prompts(s, rec)
            points = sum(p.kind == "point" for p in prompts)
            n_new = 1  # a new or moved box
            if old is not None and old.plane == rec.plane and np.allclose(old.box, rec.box):  # a refinement
                had = sum(p.kind == "point" for p in prov.records[lid].prompts) if lid in prov else 0
                n_new = max(1, points - had)
            prov.record_model_mask(lid, data == lid, prompts, model, model_round(model))
            kinds[lid] = rec.kind
            events += [Event(now, "prompt", lid)] * n_new + [Event(now, "commit", lid)]
        self.on_changed()

    def undo_commit(self, commit) -> None:
        """Put back the records the undone commit replaced (its effort events stay: the time was spent)."""
        saved = commit.extra.get("provenance_before")
        if saved is None or self.s.labels_layer is None:
            return
        prov, kinds = provenance_of(self.s.labels_layer), kinds_of(self.s.labels_layer)
        for lid, rec in saved.items():
            if rec is None:
                prov.records.pop(lid, None)
            else:
                prov.records[lid] = rec
        for lid, kind in commit.extra.get("kinds_before", {}).items():
            if kind is None:
                kinds.pop(lid, None)
            else:
                kinds[lid] = kind
        self.on_changed()

    # -- classes ---------------------------------------------------------------------------------
    @property
    def current_class(self) -> int:
        return self.provenance().classes.default

    def add_class(self, name: str) -> int:
        """Add class ``name`` (or find it) and make it the class of new objects; returns its id."""
        name = str(name).strip()
        if not name:
            raise MedSAMError("type a class name first")
        classes = self.provenance().classes
        classes.default = classes.add(name)
        return classes.default

    def set_class(self, cls: int | str) -> int:
        """Make class ``cls`` (id or name) the class of new objects; returns its id."""
        classes = self.provenance().classes
        ids = {v: k for k, v in classes.names.items()}
        cid = ids.get(cls, cls) if isinstance(cls, str) else int(cls)
        if cid not in classes.names:
            raise MedSAMError(f"no class {cls!r}: add it first (classes: {', '.join(classes.names.values())})")
        classes.default = int(cid)
        return classes.default

    def assign_selected(self) -> int:
        """Give the labels layer's selected label the current class; returns that label id."""
        lab = self._labels()
        lid, prov = int(lab.selected_label), self.provenance()
        if lid not in prov:
            self.sync()  # an object painted by hand gets its record now
        if lid not in prov:
            raise MedSAMError(f"label {lid} is not in {lab.name!r}: pick an existing label in the layer controls")
        prov.set_class(lid, prov.classes.default)
        return lid

    def class_table(self) -> list[tuple[int, str]]:
        prov = self.provenance()
        return [(lid, prov.classes.names[r.class_id]) for lid, r in sorted(prov.records.items())]

    # -- sync, effort, files ---------------------------------------------------------------------
    def sync(self) -> dict[str, list[int]]:
        """Compare the records with the labels: edits by a person are flagged, painted objects recorded."""
        return self.provenance().sync_with_labels(np.asarray(self._labels().data))

    def effort(self) -> list:
        """``effort.RoundStats`` per fine-tuning round (after a sync)."""
        self.sync()
        lab = self._labels()
        return round_table(self.provenance(), np.asarray(lab.data), events_of(lab))

    def save_provenance(self, labels_path):
        """Write the provenance beside ``labels_path`` (``<stem>.provenance.json``); returns its path."""
        self.sync()
        return attach_events(self.provenance(), events_of(self._labels())).save(labels_path)

    def load_provenance(self, labels_path) -> Provenance:
        """Read the provenance beside ``labels_path`` into the labels layer (ids it lacks are dropped)."""
        lab = self._labels()
        prov = Provenance.load(labels_path, np.asarray(lab.data))
        lab.metadata[PROV_KEY] = prov
        lab.metadata[EVENTS_KEY] = saved_events(prov)
        return prov

