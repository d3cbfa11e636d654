"""Object-level prompt actions of a ``Session`` (a mixin): refine an object with points, and the
polygon / lasso prompt (``_polygon.PolygonKind``). Each validates before it changes anything."""

from __future__ import annotations

from ._prompt_kinds import kinds


class PromptActions:
    """Mixed into ``_session.Session`` (uses its ``require_layers`` and ``check_boxes_only``)."""

    def refine(self, label_id: int, points=None, labels=None) -> int:
        """Refine object ``label_id`` with its box, its points (plus ``points`` (P, 2) XY pixels with
        ``labels`` (P,) 1/0 given here) and its last low-res logits. Returns ``label_id``."""
        from ._sync import refine

        return refine(self, int(label_id), points, labels)

    # -- polygons (_polygon.PolygonKind) ---------------------------------------------------------
    def polygon_layer(self):
        """The "MedSAM polygons" Shapes layer, active in lasso mode: each polygon drawn becomes an object."""
        self.require_layers()
        self.check_boxes_only()
        return kinds()["polygon"].layer(self)

    def segment_polygon(self, xy, z=None) -> int:
        """Segment the (V, 2) XY pixel polygon ``xy`` on the current slice (or slice ``z``); returns its label id."""
        self.check_boxes_only()
        return kinds()["polygon"].segment_polygon(self, xy, z)
