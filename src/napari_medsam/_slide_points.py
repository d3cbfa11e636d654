"""Positive / negative points on a whole-slide plane (``_slide_plane``): they refine an object on the
crop its box is segmented on, never on the whole plane.

A point clicked on a slide goes to the object whose box is selected, else the object under it (one
label pixel is read from the store; an imported object there is adopted with its tight box, as
``_import_session`` does on planes in memory), else the last object whose box holds it. The object's box gives
the crop (``roi.plan_rois`` for that one box: the crop a box drawn alone is encoded on, so a point
right after its box costs a decode only); the decoder gets the box, every point of the object in that
crop's pixels and the object's last low-res logits. The new mask replaces the object's pixels inside
the crop (``SlideEditor``: only the tiles it touches), one undoable commit with the points.
"""

from __future__ import annotations

import numpy as np

from medsam_core import MedSAMError, PromptError, roi

from . import _layers as L
from ._sync import commit_refined, refine_points, restore_points, set_point_features, target_of_point


def slide_target_of_point(s, plane: L.Plane, xy) -> int:
    """The object a point clicked on the slide refines (``_sync.target_of_point``'s rule): the label under
    the point is read from the store on disk; an imported object there is adopted (refined from its box)."""
    h, w = s.slide.store.shape

    def id_under(x: int, y: int) -> int:
        inside = 0 <= y < h and 0 <= x < w
        return int(np.asarray(s.slide.store.read_region((y, y + 1, x, x + 1)))[0, 0]) if inside else 0

    return target_of_point(s, plane, xy, id_under, lambda lid: s.imports.adopt_on_slide(plane, lid, xy))


def refine_on_slide(s, lid: int, points=None, labels=None, points_before=None) -> int:
    """Re-segment slide object ``lid`` from its box, its points (+ new (P, 2) XY ``points`` with (P,)
    1/0 ``labels``) and its last logits, on its box's crop. Returns ``lid``."""
    rp = refine_points(s, lid, points, labels)
    rec, xy, lab = rp.rec, rp.xy, rp.labels
    image2d = s.plane_image(rec.plane)
    shape = image2d.shape[:2]
    if not ((xy >= 0).all() and (xy[:, 0] < shape[1]).all() and (xy[:, 1] < shape[0]).all()):
        raise PromptError(f"a point lies outside the {shape[1]} x {shape[0]} slide")
    box = np.asarray(rec.box, float)
    window = roi.plan_rois(box[None], shape)[0].window
    y0, y1, x0, x1 = window
    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    if not inside.all():
        raise PromptError(f"a point of object {lid} lies outside the region its box is segmented on "
                          f"(x {x0}..{x1 - 1}, y {y0}..{y1 - 1}): move or redraw the box to include it")
    s.model_ready(blocking=True)
    s.predictor.set_image(roi.read_crop(image2d, window), intensity=s.model_intensity(image2d),
                          channel=s.settings.channel)  # the box's crop: cached when the box was segmented alone
    offset = np.array([x0, y0], float)
    local_box = box - np.array([x0, y0, x0, y0], float)
    logits = None if rec.logits is None else rec.logits[None]
    pred = s.predictor.predict(boxes=local_box[None], points=(xy - offset)[None], point_labels=lab[None],
                               mask_input=logits)
    mask = roi.BoxMask(window, np.asarray(pred.masks[0], bool), float(np.asarray(pred.scores)[0]), True)
    editor = s.editor()
    editor.clear(rec.plane, lid)
    editor.write(rec.plane, mask, lid)
    return commit_refined(s, editor, lid, rp, pred.low_res_logits[0], points_before,
                          f"MedSAM: refined label {lid} with {len(xy)} point(s) on its {x1 - x0} x {y1 - y0} crop")


def refine_from_slide_point(s) -> None:
    """A point was clicked on a slide: attach it to its object and refine that object; on failure remove it."""
    pts = s.points_layer
    k = len(pts.data) - 1
    before = (np.array(pts.data[:-1], copy=True), pts.features.iloc[:-1].copy())
    lid = None
    try:
        plane, xy = L.point_to_xy(pts, k, s.image_layer, s.viewer.dims, s.settings.channel_axis)
        lid = slide_target_of_point(s, plane, xy)
        with s.quiet():
            feats = pts.features.copy()
            feats.loc[k, "label_id"] = lid
            set_point_features(s, feats)
        refine_on_slide(s, lid, points_before=before)
    except MedSAMError:
        restore_points(s, before)
        if lid is not None:
            s.imports.drop(lid)  # an adoption the refinement did not write is taken back
        raise
    s.imports.report()
