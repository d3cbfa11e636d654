"""The session's commits and undo: every change is one ``Commit`` that ``undo`` reverts exactly
(labels pixels, objects, prompt rectangles and points). Mixed into ``_session.Session``, whose
state (``labels_layer``, ``shapes_layer``, ``objects``, ``history``, ``settings``) it uses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from medsam_core import MedSAMError, PromptError

from . import _layers as L
from ._objects import Commit, ObjectRecord, PlaneEditor
from ._prompt_kinds import kind_of, rebuild_layers, set_shape_ids


class History:
    """Commit, undo and the prompt-rectangle bookkeeping of a Session."""

    def editor(self) -> PlaneEditor:
        slide = getattr(self, "slide", None)
        if slide is not None:  # a whole slide: windows of its labels on disk
            from ._slide_plane import SlideEditor

            return SlideEditor(slide, self.settings.overwrite)
        return PlaneEditor(self.labels_layer, self.settings.channel_axis, self.settings.overwrite)

    def next_id(self) -> int:
        slide = getattr(self, "slide", None)
        if slide is not None:  # never scan a slide's labels: ids come from what this session wrote
            return max([slide.top_id(), *self.objects]) + 1
        top = int(np.max(self.labels_layer.data)) if self.labels_layer.data.size else 0
        return max([top, *self.objects]) + 1

    def commit(self, editor: PlaneEditor, objects: dict[int, ObjectRecord], description: str,
               points_before=None) -> Commit | None:
        """Write the editor's changes into the Labels layer as one undoable step."""
        edits = editor.edits()
        if not edits and objects == self.objects and points_before is None:
            return None
        imports = getattr(self, "imports", None)  # _import_session.ImportActions: adopted foreign objects
        current = dict(self.objects)
        before = current if imports is None else imports.objects_before(current, objects)
        commit = Commit(edits, before, description, points_before)
        L.widen_for(self.labels_layer, edits)
        for edit in edits:
            L.apply_edit(self.labels_layer, edit)
        self.objects = objects
        self.history.append(commit)
        self._provenance_hook(self.on_commit, commit)
        if imports is not None:
            imports.after_commit(current, objects)
        return commit

    def _provenance_hook(self, hook, commit: Commit) -> None:
        if getattr(self, "slide", None) is not None:  # provenance compares whole label planes: not on a slide
            return
        self._hook(hook, commit)

    def _hook(self, hook, commit: Commit) -> None:
        if hook is None:
            return
        try:
            hook(commit)
        except Exception as exc:  # noqa: BLE001 - the labels are written; only the bookkeeping failed
            import warnings

            warnings.warn(f"MedSAM: provenance not recorded for {commit.description}: {exc}", stacklevel=2)
            self.on_status(f"MedSAM: provenance not recorded ({exc})")

    def undo(self) -> str:
        """Revert the last commit exactly: pixels, objects and prompt rectangles."""
        if not self.history:
            raise MedSAMError("nothing to undo: no MedSAM change has been made yet")
        commit = self.history.pop()
        kept = sum(L.undo_edit(self.labels_layer, edit) for edit in reversed(commit.edits))
        for put_back in reversed(commit.extra.get("undo_also", [])):  # e.g. accepted automatic objects
            put_back()
        self.objects = commit.objects_before
        self._provenance_hook(self.on_undo, commit)
        rebuild_layers(self)  # every prompt kind's layer shows the objects' prompts again
        if commit.points_before is not None:
            from ._sync import restore_points

            restore_points(self, commit.points_before)
        since = f"; {kept} pixel(s) painted or erased by hand since were kept" if kept else ""
        self.on_status(f"MedSAM: undid {commit.description}{since}")
        return commit.description

    def rebuild_shapes(self) -> None:
        """Make the prompt rectangles exactly the boxes of the objects that have one (after undo)."""
        with self.quiet():
            recs = [r for r in self.objects.values() if kind_of(r).in_boxes_layer]
            boxes = [(r.vertices, r.label_id) for r in recs]
            boxes += [(v, -r.label_id) for r in recs for v in getattr(r, "key_vertices", ())]  # 3D key boxes
            self.shapes_layer.selected_data = set(range(self.shapes_layer.nshapes))
            self.shapes_layer.remove_selected()  # unlike data = [], this also drops the features rows
            if boxes:
                self.shapes_layer.add([v for v, _ in boxes], shape_type="rectangle")
            self.set_shape_ids(np.array([lid for _, lid in boxes], int))

    def set_shape_ids(self, ids: np.ndarray) -> None:
        set_shape_ids(self.shapes_layer, ids)

    def quiet(self):
        return _Quiet(self)

    def object(self, label_id: int) -> ObjectRecord:
        if label_id not in self.objects:
            known = ", ".join(map(str, sorted(self.objects))) or "none yet"
            raise PromptError(f"no MedSAM object with label {label_id} (objects: {known})")
        return self.objects[label_id]

    def update_record(self, rec: ObjectRecord, **changes) -> ObjectRecord:
        return replace(rec, **changes)

class _Quiet:
    """Context manager: the session's own prompt-layer edits do not trigger syncing."""

    def __init__(self, session):
        self.session = session

    def __enter__(self):
        self.session.quiet_depth += 1

    def __exit__(self, *exc):
        self.session.quiet_depth -= 1
