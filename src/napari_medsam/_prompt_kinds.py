"""Prompt kinds as one concept: box, positive/negative point, RECIST line, polygon (lasso).

A ``PromptKind`` knows its napari layer (name, how it is made, the mode a person draws in), which
core prompts an object made from it is recorded with in provenance, whether its objects keep a
rectangle in the "MedSAM boxes" layer (the 2D box sync owns those), and how its layer is put back
after an undo. Every ``ObjectRecord`` names the kind that made it (``rec.kind``).

``KINDS`` is the registry. Adding a kind is a module with a ``PromptKind`` subclass (its layer,
its conversion to decoder prompts, its sync) plus one line in ``KINDS``: the session, the undo
and the provenance hook ask the registry and need no edit. The kinds' actions:

| kind | layer | action (module) | decoder prompts |
|---|---|---|---|
| box | MedSAM boxes (rectangles) | box sync (``_sync``) | box, ROI zoom |
| point | MedSAM points | refinement (``_sync.refine``) | box + points + previous logits |
| recist | MedSAM lines | ``_volume_recist.RecistLines`` | box from the line(s) |
| polygon | MedSAM polygons | ``_polygon.PolygonKind`` | box; the model decides near the drawn edge |
"""

from __future__ import annotations

import numpy as np

from medsam_core.provenance import PROMPT_KINDS, Prompt

from ._objects import POSITIVE_COLOR

BOXES, POINTS, LINES, POLYGONS = "MedSAM boxes", "MedSAM points", "MedSAM lines", "MedSAM polygons"


def shape_ids(layer) -> np.ndarray:
    """(nshapes,) ``label_id`` feature of a prompt Shapes layer: the object each shape made (0: none yet)."""
    feats = layer.features
    if "label_id" in feats and len(feats) == layer.nshapes:
        return feats["label_id"].to_numpy().astype(int)
    return np.zeros(layer.nshapes, int)


def set_shape_ids(layer, ids) -> None:
    """Set the ``label_id`` feature of every shape of a prompt Shapes layer (new shapes get 0)."""
    feats = layer.features.copy()
    feats["label_id"] = np.asarray(ids, int)
    layer.features = feats
    layer.feature_defaults = {"label_id": 0}


def plane_z(plane) -> int | None:
    """The slice of a plane of a 2D image (None) or 3D stack; 4D planes keep their last position."""
    return int(plane.index[-1][1]) if plane.index else None


class PromptKind:
    """One way a person prompts the model. Subclasses set the class attributes and override what differs."""

    name = ""  # ObjectRecord.kind, the provenance kind
    layer_name: str | None = None
    draw_mode: str | None = None  # the layer mode a person draws in
    in_boxes_layer = False  # its objects keep a rectangle on "MedSAM boxes" (synced by _sync)

    def find_layer(self, session):
        for layer in session.viewer.layers:
            if layer.name == self.layer_name:
                return layer
        return None

    def provenance(self, session, rec) -> list[Prompt]:
        """The prompts this kind adds to object ``rec``'s provenance record."""
        return []

    def rebuild(self, session) -> None:
        """After an undo: make this kind's layer show exactly the objects' prompts again."""


class BoxKind(PromptKind):
    name, layer_name, draw_mode, in_boxes_layer = "box", BOXES, "add_rectangle", True

    @staticmethod
    def make_layer(session):
        from napari.layers import Shapes

        return Shapes(name=BOXES, edge_color="yellow", face_color="transparent", edge_width=2,
                      features={"label_id": np.zeros(0, int)}, feature_defaults={"label_id": 0},
                      **session.layer_geometry())

    def provenance(self, session, rec) -> list[Prompt]:
        from . import _layers as L

        out = [Prompt("box", rec.box, plane_z(rec.plane))]
        for verts in getattr(rec, "key_vertices", ()):  # key boxes of a 3D object
            plane, box = L.vertices_to_box(session.shapes_layer, verts, session.image_layer, session.viewer.dims,
                                           session.settings.channel_axis)
            out.append(Prompt("key_box", box, plane_z(plane)))
        return out

    def rebuild(self, session) -> None:
        session.rebuild_shapes()


class PointKind(PromptKind):
    name, layer_name, draw_mode = "point", POINTS, "add"

    @staticmethod
    def make_layer(session):
        from napari.layers import Points

        return Points(name=POINTS, features={"positive": np.zeros(0, bool), "label_id": np.zeros(0, int)},
                      feature_defaults={"positive": True, "label_id": 0}, face_color=POSITIVE_COLOR,
                      size=6, **session.layer_geometry())

    def provenance(self, session, rec) -> list[Prompt]:
        from . import _layers as L

        pts, out = session.points_layer, []
        if pts is None or not len(pts.data):
            return out
        feats = pts.features
        for k in np.flatnonzero(feats["label_id"].to_numpy() == rec.label_id):
            plane, xy = L.point_to_xy(pts, int(k), session.image_layer, session.viewer.dims,
                                      session.settings.channel_axis)
            if plane == rec.plane:
                out.append(Prompt("point", xy, plane_z(plane), bool(feats["positive"].iloc[k])))
        return out  # (the points' undo: Commit.points_before, restored by the session)


class RecistKind(PromptKind):
    """A RECIST long axis (and short axis) -> a box on "MedSAM boxes": the box sync then owns it."""

    name, layer_name, draw_mode, in_boxes_layer = "recist", LINES, "add_line", True

    @staticmethod
    def make_layer(session):
        from napari.layers import Shapes

        return Shapes(name=LINES, edge_color="cyan", edge_width=2, **session.layer_geometry())

    def provenance(self, session, rec) -> list[Prompt]:
        line = rec.source if rec.kind == "recist" else None
        if "recist" in PROMPT_KINDS and line is not None:  # medsam_core records the line itself
            return [Prompt("recist", np.asarray(line, float).ravel(), plane_z(rec.plane))]
        return []


def _kinds() -> dict[str, PromptKind]:
    from ._polygon import PolygonKind

    return {k.name: k for k in (BoxKind(), PointKind(), RecistKind(), PolygonKind())}


KINDS: dict[str, PromptKind] = {}


def kinds() -> dict[str, PromptKind]:
    """The registry, name -> kind (made on first use: the polygon module imports this one)."""
    if not KINDS:
        KINDS.update(_kinds())
    return KINDS


def kind_of(rec) -> PromptKind:
    return kinds()[getattr(rec, "kind", "box")]


def provenance_prompts(session, rec) -> list[Prompt]:
    """Every prompt object ``rec`` was made with, each kind adding its own."""
    return [p for kind in kinds().values() for p in kind.provenance(session, rec)]


def rebuild_layers(session) -> None:
    """After an undo: every kind's layer shows the objects' prompts again."""
    for kind in kinds().values():
        kind.rebuild(session)
