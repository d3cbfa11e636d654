"""RECIST lines (prompt kind "recist", ``_prompt_kinds.RecistKind``): a lesion's long axis (and a
crossing short axis) -> box -> 2D object, recorded with kind "recist" and its line(s).

A mixin of ``_volume_session.VolumeActions`` (it uses the session ``self.s``, ``self._shape_ids()``
and ``self._last_line``), kept apart so each module stays about one action. The kind's layer and
provenance live in the registry; the box it makes is then an ordinary rectangle of the box sync.
"""

from __future__ import annotations

import numpy as np

from medsam_core import PromptError

from . import _layers as L
from ._prompt_kinds import LINES, kinds

__all__ = ["LINES", "RecistLines"]


class RecistLines:
    """Draw RECIST lines on the "MedSAM lines" layer; each becomes a box prompt."""

    def lines_layer(self):
        """The "MedSAM lines" Shapes layer (created on first use) in line mode."""
        s, kind = self.s, kinds()["recist"]
        layer = kind.find_layer(s)
        if layer is None:
            layer = s.viewer.add_layer(kind.make_layer(s))
            layer.events.data.connect(self._on_lines_data)
        s.viewer.layers.selection.active = layer
        layer.mode = kind.draw_mode
        return layer

    def _on_lines_data(self, event) -> None:
        if str(getattr(event, "action", "")) != "added":
            return
        layer = event.source
        if layer.nshapes and layer.shape_type[-1] == "line":
            s = self.s
            coords = L.to_image_data(s.image_layer, L.layer_to_world(layer, layer.data[-1], s.viewer.dims.point))
            rows, cols = L.displayed_axes(s.image_layer, s.viewer.dims, s.settings.channel_axis)
            plane = L.plane_of(s.image_layer, coords, rows, cols, s.settings.channel_axis)
            s.safe(self.segment_recist, coords[:, [cols, rows]], None, plane)

    def segment_recist(self, long_axis, short_axis=None, plane: L.Plane | int | None = None) -> int:
        """A RECIST line ((2, 2) XY pixels) -> box prompt -> 2D object on ``plane`` (a Plane, a slice
        index, or the current slice). A line crossing the previous line on the same slice is taken
        as that lesion's short axis: its box is recomputed from both. Returns the label id."""
        from medsam_core import box_from_recist

        s = self.s
        s.require_layers()
        if plane is None or not isinstance(plane, L.Plane):
            cur = s.current_plane()
            if plane is not None:
                if len(cur.index) != 1:
                    raise PromptError("a slice index needs a 3D image")
                cur = L.Plane(cur.rows, cur.cols, ((cur.index[0][0], int(plane)),))
            plane = cur
        size = L.plane_size(s.image_layer, plane)
        line = np.asarray(long_axis, float).reshape(2, 2)
        last = self._last_line
        if short_axis is None and last is not None and last[0] == plane and _crosses(last[1], line):
            lid = int(self._shape_ids()[last[2]]) if last[2] < s.shapes_layer.nshapes else 0
            if lid > 0 and lid in s.objects:
                box = box_from_recist(last[1], line, image_size=size)
                verts = L.box_to_vertices(box, plane, s.image_layer, s.shapes_layer, s.viewer.dims.point)
                data = list(s.shapes_layer.data)
                with s.making("recist", np.stack([last[1], line])):
                    s.shapes_layer.data = data[: last[2]] + [verts] + data[last[2] + 1 :]
                    s.sync_shapes(blocking=True)  # the box sync follows the moved rectangle
                self._last_line = None
                return lid
        box = box_from_recist(line, short_axis, image_size=size)
        z = None if not plane.index else tuple(p for _, p in plane.index)
        with s.making("recist", line[None] if short_axis is None else np.stack([line, np.reshape(short_axis, (2, 2))])):
            (lid,) = s.segment_boxes(box[None], z if z is None or len(z) > 1 else z[0])
        i = int(np.flatnonzero(self._shape_ids() == lid)[-1])
        s.shapes_layer.selected_data = {i}
        self._last_line = (plane, line, i)
        return lid


def _crosses(a: np.ndarray, b: np.ndarray) -> bool:
    """True when 2D segments a and b ((2, 2) XY) intersect."""

    def orient(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))

    return bool(orient(a[0], a[1], b[0]) != orient(a[0], a[1], b[1])
                and orient(b[0], b[1], a[0]) != orient(b[0], b[1], a[1]))
