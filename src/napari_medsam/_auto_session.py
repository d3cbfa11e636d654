"""Qt-free state of "Segment everything": train the automatic head, segment, accept object by object.

``AutoActions`` works for one widget ``Session`` next to ``_active_session.ActiveActions`` (given
as ``active``: where the labelled pairs and the predictor come from). Background work goes through
the session's one ``Runner``:

- ``train(force=False)`` runs one guarded round (``autoguard.HeadSession.run_round``) on every open
  image with labelled objects (unlabelled pixels count as background only near labelled objects);
- ``segment()`` runs ``autoseg.segment_steps`` on the current image (slice) and writes the result into
  its own Labels layer "MedSAM automatic" (never the user's labels); Cancel leaves everything as it was;
- ``accept(ids)`` / ``accept_all()`` move objects of "MedSAM automatic" (as the user edited them there)
  into the widget's labels layer as one undoable commit, with provenance: prompt = the object's box,
  model "automatic:<model>", round = the head's round; the model mask recorded is the head's proposal,
  so an object edited before accepting is flagged ``edited_by_person`` at the next sync.
- ``rollback()`` restores the previous head; ``save(path)`` writes the model with its head inside.
A model loaded from a checkpoint that carries a head brings it along.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medsam_core import MedSAMError
from medsam_core.autoguard import HeadSession, head_from_model, save_with_model
from medsam_core.autohead import HeadConfig
from medsam_core.autoseg import segment_steps
from medsam_core.provenance import Prompt

from . import _layers as L
from ._provenance_hook import events_of, kinds_of, plane_z, provenance_of

AUTO_LAYER = "MedSAM automatic"


def _train_steps(heads: HeadSession, predictor, images, labels, config, force):
    """Generator for ``Runner.run_steps``: yields (done, total, stage), returns the HeadRound."""
    gen = heads.run_round(predictor, images, labels, None, config, force)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        yield step.done, step.total, step.stage


class AutoActions:
    """Train / segment everything / accept; callbacks ``on_progress(done, total)`` and
    ``on_finished(what)`` (what in {"trained", "segmented", "cancelled", "error"}) run on the GUI thread."""

    def __init__(self, session, active):
        self.s, self.active = session, active
        self.heads = HeadSession()
        self.config = HeadConfig()
        self.running: str | None = None
        self.task = None
        self.status = "no automatic head yet: label some objects (5 or more), then Train"
        self.proposals: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # layer id -> (model mask, box)
        self.plane = None  # the plane segmented last
        self.by_plane: dict = {}  # plane -> proposals: every slice segmented on this image can be accepted
        self.image = None  # the image layer the automatic objects were made on
        self._seen_model = None
        self.on_progress: Callable = lambda done, total: None
        self.on_finished: Callable = lambda what: None

    # -- head ------------------------------------------------------------------------------------
    @property
    def head(self):
        model = self.s.model
        if model is not None and model is not self._seen_model:  # a checkpoint may carry a head
            self._seen_model = model
            try:
                head = head_from_model(model)
            except MedSAMError as exc:
                self.s.on_status(f"MedSAM: the checkpoint's automatic head is not used: {exc}")
                head = None
            if head is not None and self.heads.active is None:
                self.heads = HeadSession(head)
                self.status = f"automatic head loaded with the model (round {self.round})"
            elif head is not None and getattr(model, "weights_path", None):  # a checkpoint file loaded later: its head
                # (a model fine-tuned here carries its base's head along: the head trained here stays)
                self.heads.adopt(head)  # (it was dropped silently, and Save wrote the new model with the old head)
                self.status = (f"automatic head of the model just loaded (round {self.round}) replaces the "
                               "previous one (Roll back returns to it)")
        return self.heads.active

    @property
    def round(self) -> int:
        head = self.heads.active
        return int(head.meta.get("round", 0)) if head is not None else 0

    def _start(self, what: str) -> None:
        if self.running or self.active.running:
            raise MedSAMError(f"{self.running or self.active.running} is running: wait for it or cancel it")
        self.running = what

    def train(self, force: bool = False) -> None:
        """Train a new head on the labelled objects of every open image (background), guarded."""
        images, labels = self.active.fit_pairs()
        predictor = self.active.predictor()
        self.head  # noqa: B018 - a head that came with the model is the one to beat
        self._start("training the automatic head")
        self.s.on_status(f"MedSAM: training the automatic head on {len(images)} labelled image(s)...")
        self.task = self.s.runner.run_steps(
            _train_steps, self.heads, predictor, images, labels, self.config, bool(force),
            on_step=lambda v: self.on_progress(v[0], v[1]), on_done=self._on_trained, on_error=self._on_error,
            on_cancel=self._on_cancel, desc="MedSAM: training the automatic head",
            total=self.config.epochs)

    def _on_trained(self, rnd) -> None:
        self.running, self.task = None, None
        verdict = ("forced" if rnd.forced else "accepted" if rnd.accepted else
                   "refused: it finds none of the held-out objects (the active one stays)"
                   if rnd.meta.get("finds_none") else "refused (the active one stays)")
        before = "threshold detector" if rnd.meta.get("active_was") != "head" else "previous head"
        self.status = (f"round {rnd.number}: held-out F1 {rnd.f1:.2f} (Dice {rnd.dice:.2f}) vs {before} "
                       f"{rnd.f1_active:.2f}; {verdict}; {rnd.fit.seconds:.0f} s")
        self.s.on_status(f"MedSAM: automatic head {self.status}")
        self.on_finished("trained")

    def accept_round(self) -> None:
        """Make the last (refused) round's head active all the same."""
        if not self.heads.rounds:
            raise MedSAMError("no automatic round yet: Train first")
        self.heads.accept(self.heads.rounds[-1])
        self.status = f"round {self.heads.rounds[-1].number} made active by you"

    def rollback(self) -> None:
        if not self.heads.can_rollback:
            raise MedSAMError("nothing to roll back: no automatic round was made active")
        head = self.heads.rollback()
        self.status = "back to " + (f"the head of round {self.round}" if head is not None else "no head")

    def save(self, path) -> object:
        """Write the served model with the active head inside (checkpoint extra "auto_head")."""
        if self.head is None:
            raise MedSAMError("no automatic head to save: Train first")
        return save_with_model(path, self.s.model, self.heads.active)

    # -- segment everything ----------------------------------------------------------------------
    def segment(self) -> None:
        """Segment every object of the current image (slice) in the background into "MedSAM automatic"."""
        s = self.s
        s.require_layers()
        predictor = self.active.predictor()
        head = self.head
        if head is None:
            raise MedSAMError("no automatic head: label 5 or more objects and press Train (or load a checkpoint "
                              "that has one)")
        plane = s.current_plane()
        image = s.plane_image(plane)
        layer = s.image_layer  # the objects belong to this image layer, whatever is chosen when they are ready
        self._start("segmenting everything")
        s.on_status("MedSAM: segmenting everything...")
        self.task = s.runner.run_steps(
            segment_steps, predictor, head, image, on_step=lambda v: self.on_progress(*v),
            on_done=lambda props: self._on_segmented(props, layer, plane), on_error=self._on_error,
            on_cancel=self._on_cancel, desc="MedSAM: segmenting everything", total=1)

    def layer(self):
        """The "MedSAM automatic" Labels layer, or None."""
        return next((ly for ly in self.s.viewer.layers if ly.name == AUTO_LAYER), None)

    def _on_segmented(self, props, image_layer, plane) -> None:
        from napari.layers import Labels

        from ._objects import PlaneEditor

        self.running, self.task = None, None
        s = self.s
        if L.raw_layer(s.image_layer) is not L.raw_layer(image_layer):
            self.on_finished("error")
            s.on_error(MedSAMError(f"the automatic objects of {image_layer.name!r} were not shown: another image "
                                   f"was picked meanwhile; pick {image_layer.name!r} and Segment everything again"))
            return
        shape, scale, translate = L.labels_geometry(image_layer, s.settings.channel_axis)
        layer = self.layer()
        if layer is None or not isinstance(layer, Labels) or layer.data.shape != shape:
            if layer is not None:
                s.viewer.layers.remove(layer)
            layer = s.viewer.add_labels(np.zeros(shape, np.int32), name=AUTO_LAYER, scale=scale, translate=translate)
        editor = PlaneEditor(layer, s.settings.channel_axis, overwrite=True)
        editor.plane(plane)[...] = props.to_labels()
        for edit in editor.edits():
            L.apply_edit(layer, edit)
        if self.image is not L.raw_layer(image_layer):
            self.by_plane = {}
        self.plane, self.image = plane, L.raw_layer(image_layer)
        self.proposals = {k + 1: (props.masks[k], props.boxes[k]) for k in range(len(props.masks))}
        self.by_plane[plane] = self.proposals
        self.status = (f"{len(self.proposals)} objects on {plane.describe()} in {AUTO_LAYER!r}: edit them there, "
                       "then Accept selected / Accept all")
        if s.shapes_layer is not None and s.shapes_layer in s.viewer.layers:
            s.viewer.layers.selection.active = s.shapes_layer
        s.on_status(f"MedSAM: {self.status}")
        self.on_finished("segmented")

    def cancel(self) -> None:
        if self.running and self.task is not None:
            self.task.cancel()

    def _on_cancel(self, _exc=None) -> None:
        what, self.running, self.task = self.running, None, None
        self.s.on_status(f"MedSAM: {what or 'automatic segmentation'} cancelled; nothing was changed")
        self.on_finished("cancelled")

    def _on_error(self, exc: Exception) -> None:
        self.running, self.task = None, None
        self.on_finished("error")
        self.s.on_error(exc if isinstance(exc, MedSAMError) else MedSAMError(f"automatic segmentation failed: {exc}"))

    # -- accept ----------------------------------------------------------------------------------
    def accept_all(self) -> list[int]:
        layer = self._auto_layer()
        plane = L.read_labels_plane(layer, self._accept_plane(), self.s.settings.channel_axis)
        return self.accept([int(k) for k in np.unique(plane) if k])

    def _accept_plane(self):
        """The slice on screen if it was segmented (a 3D stack: any slice segmented, not only the last),
        else the one segmented last."""
        try:
            here = self.s.current_plane()
        except Exception:  # noqa: BLE001 - no image: the last plane (accept refuses with the reason)
            return self.plane
        return here if here in self.by_plane else self.plane

    def accept_selected(self) -> list[int]:
        return self.accept([int(self._auto_layer().selected_label)])

    def _auto_layer(self):
        layer = self.layer()
        if layer is None or self.plane is None:
            raise MedSAMError("no automatic objects: press Segment everything first")
        return layer

    def accept(self, ids) -> list[int]:
        """Move objects ``ids`` of "MedSAM automatic" into the labels layer (one undoable commit);
        returns their new label ids."""
        from ._objects import PlaneEditor

        s, layer = self.s, self._auto_layer()
        s.require_layers()
        if L.raw_layer(s.image_layer) is not self.image:
            name = getattr(self.image, "name", "?")
            raise MedSAMError(f"the automatic objects were made on {name!r}, not on {s.image_layer.name!r}: pick "
                              f"{name!r} to accept them (or Segment everything on this image)")
        ch = s.settings.channel_axis
        plane = self._accept_plane()
        auto = L.read_labels_plane(layer, plane, ch)
        ids = [int(k) for k in ids if int(k) > 0 and (auto == int(k)).any()]
        if not ids:
            raise MedSAMError(f"no such object in {AUTO_LAYER!r}: pick one with the label picker (or Accept all)")
        editor, new, dup = s.editor(), [], []
        lid = s.next_id()
        for k in ids:
            if editor.write(plane, auto == k, lid):
                new.append((k, lid))
                lid += 1
            else:
                dup.append(k)  # only on pixels the person labelled already
        commit = s.commit(editor, dict(s.objects), f"accept {len(new)} automatic object(s)") if new else None
        if commit is not None:
            self._record(commit, new, plane)
        cleared = PlaneEditor(layer, ch, overwrite=True)
        arr = cleared.plane(plane)
        arr[np.isin(arr, [k for k, _ in new] + dup)] = 0
        edits = cleared.edits()
        for edit in edits:
            L.apply_edit(layer, edit)
        if commit is not None:  # undo puts the objects (as the person edited them) back in the automatic layer
            commit.extra.setdefault("undo_also", []).append(lambda: self._put_back(layer, edits))
        self.status = (f"accepted {len(new)} automatic object(s)"
                       + (f" as label(s) {', '.join(str(n) for _, n in new)}" if new else "")
                       + (f"; {len(dup)} lay on labelled pixels only (removed from {AUTO_LAYER!r})" if dup else ""))
        s.on_status(f"MedSAM: {self.status}")
        return [n for _, n in new]

    def _put_back(self, layer, edits) -> None:
        if layer in self.s.viewer.layers:
            for edit in reversed(edits):
                L.apply_edit(layer, edit.inverse())

    def _record(self, commit, new, plane) -> None:
        """Provenance "automatic, round N" for the accepted objects; undo removes it again."""
        lab = self.s.labels_layer
        if commit is None or lab.ndim not in (2, 3):
            return
        import time

        from medsam_core.effort import Event

        prov, kinds, data = provenance_of(lab), kinds_of(lab), np.asarray(lab.data)
        before = commit.extra.setdefault("provenance_before", {})
        kinds_before = commit.extra.setdefault("kinds_before", {})
        name = f"automatic:{getattr(self.s.model.spec, 'name', 'model')}"
        z = plane_z(plane)
        proposals = self.by_plane.get(plane, self.proposals)
        for k, lid in new:
            model_mask, box = proposals.get(k, (None, None))
            mask = data == lid
            if lab.ndim == 2 and model_mask is not None and model_mask.shape == mask.shape:
                mask = model_mask  # the head's proposal: edits before accepting count as edits
            prompts = [Prompt("box", [float(v) for v in box], z)] if box is not None else []
            before.setdefault(lid, None)
            kinds_before.setdefault(lid, None)
            rec = prov.record_model_mask(lid, mask, prompts, self.s.model, self.round)
            rec.model = name
            kinds[lid] = "automatic"
            events_of(lab).append(Event(time.time(), "commit", lid))
