"""The polygon (lasso) prompt kind: a polygon drawn around an object on "MedSAM polygons" -> a label.

The layer is a Shapes layer in ``add_polygon_lasso`` mode (napari's polygon and lasso tools both
give polygons); each polygon's ``label_id`` feature names its object, as the boxes' does. Drawing
segments it, editing its vertices re-segments it under the same id, deleting it removes the object
(unless "Deleting a box removes its object" is off). The decoder gets what measured best
(``_polygon_prompts.DEFAULT_VARIANT``: the polygon's box through the usual ROI-zoom path; inside the
polygon shrunk by 3 px is object, outside it grown by 3 px background, and in that band along the
drawn edge the model's mask decides). Each change is one commit; undo puts the layer
back from the objects (``rebuild``), and provenance records the polygon's box and its kind.
On a whole-slide plane the polygon's window only is decoded and written (labels on disk).
"""

from __future__ import annotations

import numpy as np

from medsam_core import MedSAMError

from . import _layers as L
from ._objects import ObjectRecord
from ._polygon_prompts import DEFAULT_VARIANT, check_polygon, decode_polygon, polygon_box
from ._prompt_kinds import POLYGONS, PromptKind, plane_z, set_shape_ids, shape_ids


class PolygonKind(PromptKind):
    name, layer_name, draw_mode = "polygon", POLYGONS, "add_polygon_lasso"
    variant = DEFAULT_VARIANT

    def __init__(self):
        self._busy: dict[int, bool] = {}  # id(session) -> a nested sync asked for another pass

    # -- the layer ------------------------------------------------------------------------------
    def layer(self, session, activate: bool = True):
        """The "MedSAM polygons" layer (made on first use), active in lasso mode when ``activate``."""
        from napari.layers import Shapes

        layer = self.find_layer(session)
        if layer is None:
            layer = Shapes(name=POLYGONS, edge_color="magenta", face_color="transparent", edge_width=2,
                           features={"label_id": np.zeros(0, int)}, feature_defaults={"label_id": 0},
                           **session.layer_geometry())
            session.viewer.add_layer(layer)
            layer.events.data.connect(lambda event, s=session: self._on_data(s, event))
            # the image's polygon objects (picked again, or the layer was deleted): drawn again, or
            # the next sync would take them for deleted polygons and erase their pixels
            self.rebuild(session)
        if activate:
            session.viewer.layers.selection.active = layer
            layer.mode = self.draw_mode
        return layer

    def _on_data(self, session, event) -> None:
        if session.quiet_depth or str(getattr(event, "action", "")) not in ("added", "changed", "removed"):
            return
        session.safe(self.sync, session)

    # -- conversion -----------------------------------------------------------------------------
    def to_plane(self, session, vertices) -> tuple[L.Plane, np.ndarray]:
        """(V, layer.ndim) polygon vertices -> (its Plane, (V, 2) XY plane pixels), checked."""
        s = session
        rows, cols = L.displayed_axes(s.image_layer, s.viewer.dims, s.settings.channel_axis)
        coords = L.to_image_data(s.image_layer, L.layer_to_world(self.layer(s, False), vertices, s.viewer.dims.point))
        plane = L.plane_of(s.image_layer, coords, rows, cols, s.settings.channel_axis)
        xy = check_polygon(coords[:, [cols, rows]], L.plane_size(s.image_layer, plane))
        return plane, xy

    def provenance(self, session, rec) -> list:
        from medsam_core.provenance import PROMPT_KINDS, Prompt

        if rec.kind == "polygon" and "polygon" in PROMPT_KINDS and rec.source is not None:
            return [Prompt("polygon", np.asarray(rec.source, float).ravel(), plane_z(rec.plane))]
        return []  # the polygon's box is recorded by the box kind; the kind by the provenance hook

    # -- actions --------------------------------------------------------------------------------
    def segment_polygon(self, session, xy, z=None) -> int:
        """Segment (V, 2) XY pixel polygon ``xy`` on the current slice (or slice ``z`` of a 3D image);
        it is added to "MedSAM polygons". Blocks until done. Returns the new label id."""
        s = session
        s.require_layers()
        plane = s.plane_at(z)
        xy = check_polygon(xy, L.plane_size(s.image_layer, plane))
        layer = self.layer(s, activate=False)
        verts = L.plane_to_layer(np.asarray(xy, float)[:, ::-1], plane, s.image_layer, layer, s.viewer.dims.point)
        n0 = layer.nshapes
        with s.quiet():
            layer.add(verts, shape_type="polygon")
        try:
            written = self.sync(s, blocking=True)
        except MedSAMError:
            if layer.nshapes > n0:
                self._take_back(s, layer, [n0])
            raise
        if not written:
            raise MedSAMError("internal: the polygon was not segmented")
        return written[-1]

    def sync(self, session, blocking: bool = False) -> list[int]:
        """Segment new polygons, follow edited ones, remove deleted ones; one commit per pass. Invalid
        new polygons are taken back (moved ones put back) and reported after the valid ones are committed."""
        layer = self.find_layer(session)
        if layer is None or session.image_layer is None:
            return []
        key = id(session)
        if key in self._busy:  # re-entered from a synchronous encode's callback: the outer call loops again
            self._busy[key] = True
            return []
        session.require_layers()
        written = []
        try:
            while True:
                self._busy[key] = False
                written += self._sync_once(session, layer, blocking)
                if not self._busy[key]:
                    return written
        finally:
            del self._busy[key]

    def _sync_once(self, s, layer, blocking: bool) -> list[int]:
        ids, objects, editor = shape_ids(layer), dict(s.objects), s.editor()
        seen, written, bad, error = set(), [], [], None
        for i in range(layer.nshapes):
            lid = int(ids[i])
            rec = objects.get(lid)
            if rec is None or rec.kind != self.name or lid in seen:
                lid = ids[i] = 0
                rec = None
            seen.add(lid)
            verts = np.asarray(layer.data[i], float)
            if rec is not None and rec.vertices.shape == verts.shape and np.allclose(rec.vertices, verts):
                continue
            try:
                plane, xy = self.to_plane(s, verts)
                image2d = s.plane_image(plane)
                box = polygon_box(xy)
                if not s.ensure_embedding(image2d, blocking, box[None]):
                    continue  # encoding in the background: synced again when it is done
                res = decode_polygon(s.predictor, image2d, xy, s.roi_mode(), s.model_intensity(image2d),
                                     s.settings.channel, self.variant)
                # the plane editor works on whole planes (_objects); a slide's editor on windows (_slide_plane)
                mask = res if s.slide is not None else res.full(image2d.shape[:2])
            except MedSAMError as exc:
                bad.append((i, rec))
                error = error or exc
                continue
            if rec is not None:
                editor.clear(rec.plane, lid)
            else:
                lid = ids[i] = max([s.next_id(), *(k + 1 for k in objects)])
                seen.add(lid)
            editor.write(plane, mask, lid)
            objects[lid] = ObjectRecord(lid, plane, tuple(map(float, box)), verts.copy(), kind=self.name, source=xy)
            written.append(lid)
        removed = [lid for lid, r in s.objects.items() if r.kind == self.name and lid not in seen]
        for lid in removed:
            if s.settings.delete_removes:
                editor.clear(objects[lid].plane, lid)
            del objects[lid]
        n = len(written)
        what = f"{n} polygon{'s' if n != 1 else ''}" if n else f"removing {len(removed)} polygon(s)"
        s.commit(editor, objects, what + (f", {len(removed)} removed" if n and removed else ""))
        with s.quiet():
            set_shape_ids(layer, ids)
        self._take_back(s, layer, [i for i, rec in bad if rec is None], [(i, rec) for i, rec in bad if rec])
        if written:
            s.on_status(f"MedSAM: segmented {what} (labels {', '.join(map(str, written))})")
        if error is not None:
            raise error
        return written

    def _take_back(self, session, layer, new, moved=()) -> None:
        """Undo a person's invalid edits: ``new`` polygons removed, ``moved`` (index, record) put back."""
        with session.quiet():
            if moved:
                data = list(layer.data)
                for i, rec in moved:
                    data[i] = rec.vertices
                layer.data = data
            L.remove_shapes(layer, new)

    def rebuild(self, session) -> None:
        layer = self.find_layer(session)
        if layer is None:
            return
        recs = [r for r in session.objects.values() if r.kind == self.name]
        with session.quiet():
            layer.selected_data = set(range(layer.nshapes))
            layer.remove_selected()
            if recs:
                layer.add([r.vertices for r in recs], shape_type="polygon")
            set_shape_ids(layer, [r.label_id for r in recs])

