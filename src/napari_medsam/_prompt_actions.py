"""Object-level prompt actions of a ``Session`` (a mixin): refine an object with points (on a plane in
memory, ``_sync``; on a whole-slide plane, ``_slide_points``), a point clicked on an imported object
(``_import_session``), and the polygon / lasso prompt (``_polygon.PolygonKind``). Each validates
before it changes anything."""

from __future__ import annotations

from medsam_core import MedSAMError

from ._prompt_kinds import kinds


class PromptActions:
    """Mixed into ``_session.Session`` (uses its ``require_layers``, ``check_boxes_only``, ``slide``,
    ``imports`` and ``safe``)."""

    def refine(self, label_id: int, points=None, labels=None) -> int:
        """Refine object ``label_id`` with its box, its points (plus ``points`` (P, 2) XY pixels with
        ``labels`` (P,) 1/0 given here) and its last low-res logits. Returns ``label_id``."""
        if self.slide is not None:  # on the crop its box was segmented on
            from ._slide_points import refine_on_slide

            return refine_on_slide(self, int(label_id), points, labels)
        from ._sync import refine

        return refine(self, int(label_id), points, labels)

    def points_added(self, event) -> None:
        """The Points layer changed: a point a person added refines its object (adopting an imported one)."""
        if self.quiet_depth or str(getattr(event, "action", "")) != "added":
            return
        if self.slide is not None:
            from ._slide_points import refine_from_slide_point

            self.safe(refine_from_slide_point, self)
            return
        from ._sync import refine_from_new_point

        adopted = self.safe(self.imports.adopt_point)
        try:
            refine_from_new_point(self)
            self.imports.report()
        except MedSAMError as exc:  # the point is taken back; so is the adoption
            if adopted:
                self.imports.drop(adopted)
            self.on_error(exc)

    # -- polygons (_polygon.PolygonKind) ---------------------------------------------------------
    def polygon_layer(self):
        """The "MedSAM polygons" Shapes layer, active in lasso mode: each polygon drawn becomes an object."""
        self.require_layers()
        return kinds()["polygon"].layer(self)

    def segment_polygon(self, xy, z=None) -> int:
        """Segment the (V, 2) XY pixel polygon ``xy`` on the current slice (or slice ``z``); returns its label id."""
        return kinds()["polygon"].segment_polygon(self, xy, z)  # on a slide: its window only
