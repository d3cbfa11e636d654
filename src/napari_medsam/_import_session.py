"""Correcting labels made elsewhere (Cellpose, StarDist, QuPath, painted by hand) with MedSAM prompts.

The target Labels layer may be any Labels layer: a label TIFF or GeoJSON opened through this
plugin's reader (``_import_reader``), a layer another plugin made, or labels saved earlier. An
object in it that no MedSAM prompt of this session made ("foreign") is *adopted* when a person
prompts it, and from then on is an ordinary MedSAM object (box, points, undo):

* a new box whose rectangle matches the object's tight box (IoU >= ``ADOPT_IOU``) redoes that
  object instead of adding one: the box sync clears its pixels and writes the model's mask with the
  same label id, on background and its own pixels only (unless "Overwrite" is on), so its
  neighbours keep every pixel. A box over empty space, or one that only grazes an object, still
  makes a new object. This holds for every foreign object, whether the layer came from a file or
  not, because a person correcting labels expects the same whatever made them;
* a point clicked inside it refines it from its tight box plus the point (the box appears on
  "MedSAM boxes", where it can be moved like a drawn one).

On a whole slide (labels on disk, e.g. a QuPath GeoJSON drawn by ``_import_reader.slide_geojson_layer``)
the same rule holds; only the labels under the box and each candidate's window are read
(``_slide_plane.object_box_on_slide``), and undo writes back the window the redo changed.

The drawn box is the prompt; the object's old mask is not given as a mask prompt (on the DSB nuclei
that measured worse than the box alone: ``medsam_core.imported.refine_object``, docs/pathology.md).

Undo: the commit that first writes an adopted object lists it as absent before (``objects_before``),
so undo restores its imported pixels and provenance record and removes its rectangle. Provenance:
after the hook records the new mask, the record's model reads "<model>, refining an object imported
from <file>" (the file the reader opened), or "<model>, refining an existing object of layer '<name>'"
when no file is known.
"""

from __future__ import annotations

import numpy as np

from medsam_core import MedSAMError
from medsam_core.preprocess import check_boxes

from . import _layers as L
from ._import_reader import IMPORT_KEY
from ._objects import ObjectRecord
from ._prompt_kinds import shape_ids
from ._reader import PROV_KEY
from ._slide_plane import check_slide_labels, object_box_on_slide, read_window

#: A new box redoes a foreign object when IoU(box, the object's tight box) is at least this.
ADOPT_IOU = 0.3


def box_iou(a, b) -> float:
    """IoU of two (4,) XYXY inclusive pixel boxes."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ix <= 0 or iy <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    inter = ix * iy
    return float(inter / (area(a) + area(b) - inter))


def tight_box(plane2d: np.ndarray, label_id: int, near=None) -> np.ndarray | None:
    """(4,) XYXY tight box of ``label_id`` in (H, W) ``plane2d``, or None. ``near``: an XYXY box the
    object overlaps; the search starts in a window around it and takes the whole plane only when the
    object reaches that window's edge (a 2048 px plane: a few ms instead of tens)."""
    h, w = plane2d.shape
    y0, y1, x0, x1 = 0, h, 0, w
    if near is not None:
        pad = max(64, int(max(near[2] - near[0], near[3] - near[1])))
        y0, x0 = max(int(near[1]) - pad, 0), max(int(near[0]) - pad, 0)
        y1, x1 = min(int(near[3]) + pad + 1, h), min(int(near[2]) + pad + 1, w)
    rows, cols = np.nonzero(plane2d[y0:y1, x0:x1] == label_id)
    if not len(rows):
        return None if near is None else tight_box(plane2d, label_id)
    box = np.array([cols.min() + x0, rows.min() + y0, cols.max() + x0, rows.max() + y0], float)
    touches = (box[0] == x0 > 0) or (box[1] == y0 > 0) or (box[2] == x1 - 1 < w - 1) or (box[3] == y1 - 1 < h - 1)
    return tight_box(plane2d, label_id) if touches else box


def source_of(labels_layer, label_id: int) -> str:
    """Where object ``label_id`` of ``labels_layer`` came from, as the provenance says it: "an object
    imported from <file>" (the file the reader marked, or the record's "imported from X"), else "an
    existing object of layer '<name>'" (painted, another plugin's, saved earlier)."""
    src = labels_layer.metadata.get(IMPORT_KEY)
    if src:
        return f"an object imported from {src}"
    prov = labels_layer.metadata.get(PROV_KEY)
    rec = getattr(prov, "records", {}).get(int(label_id)) if prov is not None else None
    model = getattr(rec, "model", None) or ""
    if model.startswith("imported from "):
        return f"an object {model}"
    return f"an existing object of layer {labels_layer.name!r}"


class ImportActions:
    """Adoption of foreign objects for one ``_session.Session`` (``session.imports``)."""

    def __init__(self, session):
        self.s = session
        self.pending: dict[int, str] = {}  # adopted, not committed yet: label id -> source
        self.origins: dict[int, str] = {}  # adopted objects of the current labels layer -> source
        self.redone: list[int] = []  # adopted objects first written since ``report`` was last called

    def reset(self) -> None:
        """A new target layer: nothing adopted."""
        self.pending, self.origins, self.redone = {}, {}, []

    def imported_layer(self):
        """The last Labels layer opened for correction (``IMPORT_KEY``) that fits the image, else None."""
        from napari.layers import Labels

        s = self.s
        for layer in reversed(list(s.viewer.layers)):
            if isinstance(layer, Labels) and layer.metadata.get(IMPORT_KEY) and s.image_layer is not None:
                try:
                    L.check_labels_fit(layer, s.image_layer, s.settings.channel_axis)
                    check_slide_labels(layer, s.image_layer, s.settings.channel_axis)
                except MedSAMError:
                    continue
                return layer
        return None

    def take_opened(self, layer) -> bool:
        """A layer was just opened: when it holds imported labels that fit the image and nothing was drawn
        yet, make it the target (a person opens a Cellpose mask to correct it). True when it switched."""
        s = self.s
        if self._take_reopened(layer):
            return True
        if s.image_layer is None or s.objects or not layer.metadata.get(IMPORT_KEY) or layer is s.labels_layer:
            return False
        if self.imported_layer() is None or layer.name != self.imported_layer().name:
            return False
        s.set_labels_layer(layer)
        s.on_status(f"MedSAM: correcting {layer.name!r}: draw a box on an object to redo it, or click a point in it")
        return True

    def _take_reopened(self, layer) -> bool:
        """Labels saved by MedSAM (a provenance sidecar) opened while the image's own labels layer is still
        empty and nothing was drawn: continue in them (day 2), rather than restart ids at 1 in an empty layer."""
        from ._reader import LABELS_FILE_KEY, PROV_KEY

        s = self.s
        if (s.image_layer is None or s.objects or layer is s.labels_layer or not layer.metadata.get(LABELS_FILE_KEY)
                or layer.metadata.get(PROV_KEY) is None or s.labels_layer is None
                or np.asarray(s.labels_layer.data).any()):
            return False
        try:
            L.check_labels_fit(layer, s.image_layer, s.settings.channel_axis)
        except MedSAMError:
            return False
        s.set_labels_layer(layer)
        n = len(np.unique(np.asarray(layer.data))) - 1
        s.on_status(f"MedSAM: continuing in {layer.name!r} ({n} objects kept); new objects get ids from "
                    f"{s.next_id()}; pick another layer in Labels to start afresh")
        return True

    def _usable(self) -> bool:
        s = self.s
        return s.image_layer is not None and s.labels_layer is not None and s.labels_layer in s.viewer.layers

    def foreign_under_box(self, plane: L.Plane, box) -> tuple[int, np.ndarray] | None:
        """(label id, tight XYXY box) of the foreign object the box matches best, if IoU >= ADOPT_IOU.
        On a whole slide only the labels under the box and each candidate's own window are read."""
        slide = self.s.slide
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if slide is not None:
            h, w = slide.store.shape
            arr = read_window(slide, (max(y0, 0), min(y1 + 1, h), max(x0, 0), min(x1 + 1, w)))[0]
            ids = np.unique(arr)
        else:
            arr = L.read_labels_plane(self.s.labels_layer, plane, self.s.settings.channel_axis)
            ids = np.unique(arr[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1])
        best, best_iou = None, ADOPT_IOU
        for lid in ids[ids > 0].tolist():
            if lid in self.s.objects:
                continue
            tight = object_box_on_slide(slide, lid, near=box) if slide is not None else tight_box(arr, lid, near=box)
            if tight is None:
                continue
            iou = box_iou(box, tight)
            if iou >= best_iou:
                best, best_iou = (int(lid), tight), iou
        return best

    def adopt_boxes(self) -> list[int]:
        """New rectangles matching a foreign object take its label id (the sync then redoes it)."""
        s = self.s
        if not self._usable() or s.shapes_layer is None:
            return []
        shapes, ids, out = s.shapes_layer, shape_ids(s.shapes_layer), []
        for i in range(shapes.nshapes):
            if shapes.shape_type[i] != "rectangle" or ids[i] != 0:
                continue
            try:
                plane, box = L.shape_to_box(shapes, i, s.image_layer, s.viewer.dims, s.settings.channel_axis)
                box = check_boxes(box, L.plane_size(s.image_layer, plane))[0]
            except MedSAMError:
                continue  # the sync reports it and takes the rectangle back
            found = self.foreign_under_box(plane, box)
            if found is None:
                continue
            lid = found[0]
            # box NaN: never equal to the drawn box, so the sync always redoes the object
            s.objects[lid] = ObjectRecord(lid, plane, (np.nan,) * 4, np.array(shapes.data[i], copy=True))
            self.pending[lid] = source_of(s.labels_layer, lid)
            ids[i] = lid
            out.append(lid)
        if out:
            with s.quiet():
                s.set_shape_ids(ids)
        return out

    def adopt_point(self) -> int | None:
        """The last point clicked lies in a foreign object: adopt it with its tight box as its rectangle."""
        s = self.s
        pts = s.points_layer
        if not self._usable() or pts is None or not len(pts.data):
            return None
        plane, xy = L.point_to_xy(pts, len(pts.data) - 1, s.image_layer, s.viewer.dims, s.settings.channel_axis)
        from ._sync import selected_box_holding

        if selected_box_holding(s, plane, xy) is not None:
            return None  # a selected box holding the point names the object it refines
        arr = L.read_labels_plane(s.labels_layer, plane, s.settings.channel_axis)
        x, y = int(round(xy[0])), int(round(xy[1]))
        if not (0 <= y < arr.shape[0] and 0 <= x < arr.shape[1]):
            return None
        lid = int(arr[y, x])
        if lid == 0 or lid in s.objects:
            return None
        return self.adopt(plane, lid, tight_box(arr, lid, near=(x, y, x, y)))

    def adopt_on_slide(self, plane: L.Plane, lid: int, xy) -> int | None:
        """A point at ``xy`` (x, y) on a whole slide lies in foreign object ``lid``: adopt it with its tight
        box (read from its window of the labels on disk) as its rectangle."""
        if not self._usable() or self.s.slide is None or lid in self.s.objects:
            return None
        box = object_box_on_slide(self.s.slide, lid, near=(xy[0], xy[1], xy[0], xy[1]))
        return None if box is None else self.adopt(plane, lid, box)

    def adopt(self, plane: L.Plane, lid: int, box) -> int:
        """Make foreign object ``lid`` a MedSAM object with XYXY ``box`` as its rectangle (pending its commit)."""
        s = self.s
        verts = L.box_to_vertices(box, plane, s.image_layer, s.shapes_layer, s.viewer.dims.point)
        with s.quiet():
            s.shapes_layer.add([verts], shape_type="rectangle")
            ids = shape_ids(s.shapes_layer)
            ids[-1] = lid
            s.set_shape_ids(ids)
        s.objects[lid] = ObjectRecord(lid, plane, tuple(map(float, box)), verts)
        self.pending[lid] = source_of(s.labels_layer, lid)
        return lid

    def drop(self, lid: int) -> None:
        """Take back an adoption whose action failed: its record and its rectangle go."""
        s = self.s
        if self.pending.pop(lid, None) is None:
            return
        s.objects.pop(lid, None)
        with s.quiet():
            s.rebuild_shapes()

    def report(self) -> None:
        """Say on the status line which imported objects the last action redid (after the sync's own line)."""
        if self.redone:
            lids, self.redone = self.redone, []
            src = "; ".join(dict.fromkeys(self.origins.get(lid, "?") for lid in lids))
            self.s.on_status(f"MedSAM: redid label {', '.join(map(str, lids))} ({src}); "
                             "the other objects are unchanged (Ctrl+Z puts it back)")

    # -- the session's commit calls these ----------------------------------------------------------
    def objects_before(self, current: dict, new: dict) -> dict:
        """The objects before a commit: pending adoptions this commit writes were not objects yet."""
        written = {lid for lid in self.pending if new.get(lid) is not current.get(lid)}
        return {k: v for k, v in current.items() if k not in written}

    def after_commit(self, current_before: dict, new: dict) -> None:
        """Pending adoptions written by the commit become origins; their provenance says so."""
        for lid in [lid for lid in self.pending if new.get(lid) is not current_before.get(lid)]:
            self.origins[lid] = self.pending.pop(lid)
            self.redone.append(lid)
        lab = self.s.labels_layer
        prov = lab.metadata.get(PROV_KEY) if lab is not None else None
        if prov is None or isinstance(prov, dict):
            return
        for lid, src in self.origins.items():
            rec = prov.records.get(lid)
            if lid in new and rec is not None and rec.model and ", refining " not in rec.model:
                rec.model = f"{rec.model}, refining {src}"
