"""Session actions that turn prompts into committed labels: box sync, scripted boxes, point refinement.

Every action computes its result on copies (PlaneEditor), validates first, and commits once;
on any MedSAMError the layers stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from medsam_core import MedSAMError, PromptError
from medsam_core.preprocess import check_boxes

from . import _layers as L
from ._objects import NEGATIVE_COLOR, POSITIVE_COLOR, ObjectRecord
from ._prompt_kinds import kind_of, shape_ids


@dataclass
class Job:
    index: int  # shape index in the prompt layer
    label_id: int  # 0: a new object
    plane: L.Plane
    box: np.ndarray  # (4,) XYXY, clipped to the plane


@dataclass
class SyncPlan:
    jobs: list[Job]
    removed: list[int]
    errors: list[tuple[int, int, MedSAMError]]
    ids: np.ndarray  # label_id per shape after de-duplication
    ignored: dict[str, int] = field(default_factory=dict)  # shapes that are no prompt: type -> count




def plan_sync(s) -> SyncPlan:
    """Compare the prompt rectangles with the session's objects."""
    shapes, ca = s.shapes_layer, s.settings.channel_axis
    ids = shape_ids(shapes)
    jobs, errors, seen, ignored = [], [], set(), {}
    for i in range(shapes.nshapes):
        if shapes.shape_type[i] != "rectangle":
            ignored[shapes.shape_type[i]] = ignored.get(shapes.shape_type[i], 0) + 1
            continue
        lid = int(ids[i])
        if lid < 0:  # a key box of 3D object -lid (_volume_session): not a 2D object
            continue
        if lid in seen or lid not in s.objects:  # copies of a box and stale ids become new objects
            lid = ids[i] = 0
        seen.add(lid)
        try:
            plane, box = L.shape_to_box(shapes, i, s.image_layer, s.viewer.dims, ca)
            box = check_boxes(box, L.plane_size(s.image_layer, plane))[0]
        except MedSAMError as exc:
            errors.append((i, lid, exc))
            continue
        rec = s.objects.get(lid)
        if rec is not None and rec.plane == plane and np.allclose(rec.box, box):
            continue
        jobs.append(Job(i, lid, plane, box))
    # objects of kinds without a rectangle here (polygons) are not this layer's to remove
    removed = [lid for lid, rec in s.objects.items() if lid not in seen and kind_of(rec).in_boxes_layer]
    return SyncPlan(jobs, removed, errors, ids, ignored)


def run_sync(s, plan: SyncPlan, blocking: bool) -> list[int]:
    """Decode the planned jobs whose slice is encoded (starting encoders for the others), commit once."""
    editor, objects = s.editor(), dict(s.objects)
    next_id = s.next_id()
    written = []
    redone = set()  # existing objects decoded again from their box alone
    empty = []  # (label id, the model found something): objects that got no pixel
    for plane in dict.fromkeys(j.plane for j in plan.jobs):
        jobs = [j for j in plan.jobs if j.plane == plane]
        image2d = s.plane_image(plane)
        boxes = np.array([j.box for j in jobs])
        if not s.ensure_embedding(image2d, blocking, boxes):
            continue  # pending: sync_shapes runs again when the embeddings are ready
        for job, mask in zip(jobs, s.decode_boxes(image2d, boxes), strict=True):
            lid = job.label_id
            if lid:
                editor.clear(objects[lid].plane, lid)
                redone.add(lid)
                old = objects[lid]  # a moved box keeps its kind; a RECIST short axis brings both lines
                kind = old.kind
                source = s.new_source if s.new_kind == kind and s.new_source is not None else old.source
            else:
                lid = max([next_id, *(k + 1 for k in objects)])
                plan.ids[job.index] = lid
                kind, source = s.new_kind, s.new_source
            if not editor.write(plane, mask, lid):
                found = bool(np.asarray(getattr(mask, "mask", mask)).any())
                empty.append((lid, found))
            verts = np.array(s.shapes_layer.data[job.index], copy=True)
            objects[lid] = ObjectRecord(lid, plane, tuple(map(float, job.box)), verts, kind=kind, source=source)
            written.append(lid)
    for lid in plan.removed:
        if s.settings.delete_removes:
            editor.clear(objects[lid].plane, lid)
        del objects[lid]
    what = describe_boxes(len(written), len(plan.removed))
    # a moved box is decoded alone and a deleted box's object is gone: their points go with them (undo
    # brings them back), or they would prompt whichever object gets the id next and stay in its provenance
    points_before = drop_points(s, redone | set(plan.removed))
    s.commit(editor, objects, what, points_before=points_before)
    with s.quiet():
        s.set_shape_ids(plan.ids)
        _take_back(s, plan.errors)
    if written:
        s.on_status(f"MedSAM: segmented {what} (labels {', '.join(map(str, written))}){_no_pixels(empty)}")
    elif plan.removed:  # the status kept the previous action's line
        kept = "" if s.settings.delete_removes else " (their pixels stay: 'Deleting a box removes its object' is off)"
        s.on_status(f"MedSAM: box(es) deleted: label(s) {', '.join(map(str, plan.removed))} removed{kept}")
    elif plan.ignored:
        kinds_drawn = ", ".join(f"{n} {kind}" for kind, n in plan.ignored.items())
        s.on_status(f"MedSAM: only rectangles on '{s.shapes_layer.name}' are prompts ({kinds_drawn} left as they "
                    "are): draw a rectangle, or outline an object with 'Polygon / lasso prompt'")
    return written


def _no_pixels(empty) -> str:
    """The status line's note on objects that got no pixel (a box on other objects with Overwrite
    off, e.g. a pasted copy of a box; or nothing found in the box)."""
    covered = [str(lid) for lid, found in empty if found]
    nothing = [str(lid) for lid, found in empty if not found]
    parts = []
    if covered:
        parts.append(f"label {', '.join(covered)} got no pixels: its mask lies on other objects (turn on "
                     "Overwrite to take them, or move the box)")
    if nothing:
        parts.append(f"label {', '.join(nothing)} is empty: the model found no object in its box")
    return "; " + "; ".join(parts) if parts else ""


def _boxes(n: int) -> str:
    return f"{n} box" if n == 1 else f"{n} boxes"


def describe_boxes(written: int, removed: int) -> str:
    """Commit description: "1 box", "3 boxes", "2 boxes, 1 removed", "removing 1 box" (undo: "undid ...")."""
    if not written:
        return f"removing {_boxes(removed)}"
    return _boxes(written) + (f", {removed} removed" if removed else "")


def _take_back(s, errors) -> None:
    """Undo the user's invalid rectangle edits: new ones removed, moved ones put back."""
    shapes = s.shapes_layer
    moved = [(i, lid) for i, lid, _ in errors if lid]
    if moved:
        data = list(shapes.data)
        for i, lid in moved:
            data[i] = s.objects[lid].vertices
        shapes.data = data
    L.remove_shapes(shapes, [i for i, lid, _ in errors if not lid])


def add_boxes(s, boxes, z=None) -> list[int]:
    """Add (N, 4) XYXY boxes (image pixels) as prompt rectangles on the current slice or slice z; segment them."""
    arr = np.asarray(boxes, dtype=float)
    arr = arr[None] if arr.ndim == 1 else arr
    plane = s.plane_at(z)
    check_boxes(arr, L.plane_size(s.image_layer, plane))
    verts = [L.box_to_vertices(b, plane, s.image_layer, s.shapes_layer, s.viewer.dims.point) for b in arr]
    n0 = s.shapes_layer.nshapes
    with s.quiet():
        s.shapes_layer.add(verts, shape_type="rectangle")
    try:
        s.sync_shapes(blocking=True)
    except MedSAMError:
        with s.quiet():
            s.shapes_layer.selected_data = set(range(n0, s.shapes_layer.nshapes))
            s.shapes_layer.remove_selected()
        raise
    return [int(v) for v in shape_ids(s.shapes_layer)[n0:]]


def object_points(s, lid: int, plane: L.Plane) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) XY pixels and (P,) 1/0 labels of the points already attached to object ``lid`` on ``plane``."""
    pts = s.points_layer
    feats = pts.features
    xy, lab = [], []
    for k in np.flatnonzero(feats["label_id"].to_numpy() == lid):
        p_plane, p_xy = L.point_to_xy(pts, int(k), s.image_layer, s.viewer.dims, s.settings.channel_axis)
        if p_plane == plane:
            xy.append(p_xy)
            lab.append(int(bool(feats["positive"].iloc[k])))
    return np.array(xy, float).reshape(-1, 2), np.array(lab, int)


@dataclass
class RefinePoints:
    """What refining object ``lid`` is prompted with: its record, all its points (``xy``, ``labels``) and
    the new ones among them (``new_xy``, ``new_labels``: added to the points layer on commit)."""

    rec: ObjectRecord
    xy: np.ndarray
    labels: np.ndarray
    new_xy: np.ndarray
    new_labels: np.ndarray


def refine_points(s, lid: int, points=None, labels=None) -> RefinePoints:
    """Object ``lid``'s points on its plane + new (P, 2) XY ``points`` with (P,) 1/0 ``labels``; PromptError
    (nothing changed) when the counts differ or the object ends up with no point."""
    rec = s.object(lid)
    xy, lab = object_points(s, lid, rec.plane)
    new_xy, new_lab = np.zeros((0, 2)), np.zeros(0, int)
    if points is not None:
        new_xy = np.asarray(points, float).reshape(-1, 2)
        new_lab = np.asarray(labels if labels is not None else np.ones(len(new_xy)), int).reshape(-1)
        if len(new_lab) != len(new_xy):
            raise PromptError(f"{len(new_xy)} points but {len(new_lab)} labels: give one 1/0 label per point")
        xy, lab = np.concatenate([xy, new_xy]), np.concatenate([lab, new_lab])
    if not len(xy):
        raise PromptError(f"object {lid} has no points on its slice: add positive/negative points first")
    return RefinePoints(rec, xy, lab, new_xy, new_lab)


def commit_refined(s, editor, lid: int, rp: RefinePoints, low_res_logits, points_before, status: str) -> int:
    """Record object ``lid``'s new logits, add the new points to the points layer, commit (one undo step)."""
    objects = dict(s.objects)
    objects[lid] = replace(rp.rec, logits=np.array(low_res_logits, copy=True))
    if points_before is None:
        points_before = (np.array(s.points_layer.data, copy=True), s.points_layer.features.copy())
    if len(rp.new_xy):
        coords = L.plane_to_layer(rp.new_xy[:, ::-1], rp.rec.plane, s.image_layer, s.points_layer,
                                  s.viewer.dims.point)
        add_points(s, coords, lid, rp.new_labels)
    s.commit(editor, objects, f"refine label {lid}", points_before=points_before)
    s.on_status(status)
    return lid


def refine(s, lid: int, points=None, labels=None, points_before=None) -> int:
    """Re-segment object ``lid`` from its box, its points (+ new ``points``/``labels``) and last logits."""
    rp = refine_points(s, lid, points, labels)
    rec = rp.rec
    image2d = s.plane_image(rec.plane)
    s.ensure_embedding(image2d, blocking=True)
    logits = None if rec.logits is None else rec.logits[None]  # the last refinement's, if any
    pred = s.predict(image2d, np.array([rec.box]), rp.xy[None], rp.labels[None], logits)
    editor = s.editor()
    editor.clear(rec.plane, lid)
    editor.write(rec.plane, pred.masks[0], lid)
    return commit_refined(s, editor, lid, rp, pred.low_res_logits[0], points_before,
                          f"MedSAM: refined label {lid} with {len(rp.xy)} point(s)")


def add_points(s, coords, lid: int, labels) -> None:
    """Add (P, D) layer ``coords`` to the points layer as object ``lid``'s points with (P,) 1/0 ``labels``."""
    pts = s.points_layer
    n0 = len(pts.data)
    with s.quiet():
        pts.add(coords)
        feats = pts.features.copy()
        feats.loc[n0:, "label_id"] = lid
        feats.loc[n0:, "positive"] = np.asarray(labels, bool)
        set_point_features(s, feats)


def set_point_features(s, feats) -> None:
    pts = s.points_layer
    defaults = dict(pts.feature_defaults.iloc[0]) if hasattr(pts.feature_defaults, "iloc") else None
    pts.features = feats
    if len(feats):
        pts.face_color = [POSITIVE_COLOR if p else NEGATIVE_COLOR for p in feats["positive"]]
    pts.feature_defaults = defaults or {"positive": not s.settings.negative, "label_id": 0}


def target_of_point(s, plane: L.Plane, xy, id_under=None, adopt=None) -> int:
    """The object a clicked point at XY ``xy`` refines: the object of a selected box holding the point,
    else the object under the point (``id_under(x, y)`` -> label id; default: the labels plane in memory;
    an id the session did not make is taken only when ``adopt(id)`` returns it), else the last box on
    ``plane`` holding the point. A selected box elsewhere does not count: napari leaves the last drawn
    rectangle selected, unseen from the points layer, and every point went to that object."""
    lid = selected_box_holding(s, plane, xy)
    if lid is not None:
        return lid
    x, y = int(round(xy[0])), int(round(xy[1]))
    if id_under is None:
        lid = int(L.read_labels_plane(s.labels_layer, plane, s.settings.channel_axis)[y, x])
    else:
        lid = int(id_under(x, y))
    if lid in s.objects or (lid and adopt is not None and adopt(lid) == lid):
        return lid
    for lid, rec in reversed(s.objects.items()):
        if rec.plane == plane and _holds(rec.box, xy):
            return lid
    raise PromptError("this point belongs to no MedSAM object: click inside an object or its box")


def selected_box_holding(s, plane: L.Plane, xy) -> int | None:
    """The object of a selected box on ``plane`` that holds XY ``xy``, if any."""
    ids = shape_ids(s.shapes_layer)
    for i in s.shapes_layer.selected_data:
        rec = s.objects.get(int(ids[i]))
        if rec is not None and rec.plane == plane and _holds(rec.box, xy):
            return rec.label_id
    return None


def _holds(box, xy) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= xy[0] <= x1 and y0 <= xy[1] <= y1


def refine_from_new_point(s) -> None:
    """A point was clicked: attach it to its object and refine that object; on failure remove it."""
    pts = s.points_layer
    k = len(pts.data) - 1
    before = (np.array(pts.data[:-1], copy=True), pts.features.iloc[:-1].copy())
    try:
        plane, xy = L.point_to_xy(pts, k, s.image_layer, s.viewer.dims, s.settings.channel_axis)
        lid = target_of_point(s, plane, xy)
        positive = bool(pts.features["positive"].iloc[k])
        with s.quiet():
            feats = pts.features.copy()
            feats.loc[k, "label_id"] = lid
            set_point_features(s, feats)
        refine(s, lid, points_before=before)
    except MedSAMError:
        restore_points(s, before)
        raise
    s.on_status(f"MedSAM: {'positive' if positive else 'negative'} point refined label {lid}")


def drop_points(s, label_ids) -> tuple | None:
    """Remove the points attached to ``label_ids``; returns the layer's state before (for the commit's
    undo), or None when there were none."""
    pts = s.points_layer
    if not label_ids or pts is None or not len(pts.data):
        return None
    feats = pts.features
    gone = np.isin(feats["label_id"].to_numpy(), list(label_ids))
    if not gone.any():
        return None
    before = (np.array(pts.data, copy=True), feats.copy())
    with s.quiet():
        pts.data = np.asarray(pts.data)[~gone]
        set_point_features(s, feats[~gone].reset_index(drop=True))
    return before


def restore_points(s, before) -> None:
    data, feats = before
    with s.quiet():
        s.points_layer.data = data
        set_point_features(s, feats.reset_index(drop=True))
