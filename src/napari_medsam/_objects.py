"""Objects (one per prompt rectangle), commits for undo, and a scratch editor of Labels planes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _layers as L

POSITIVE_COLOR, NEGATIVE_COLOR = "#33ff33", "#ff3333"  # the Points layer's positive / negative prompts


@dataclass(eq=False)
class ObjectRecord:
    """One segmented object: its label id, plane, (4,) XYXY box in plane pixels, its prompt shape's
    vertices in its layer's data coordinates (the rectangle on "MedSAM boxes", or the polygon), the
    decoder's (1, 256, 256) low-res logits, the prompt kind that made it (``_prompt_kinds.KINDS``)
    and that kind's own geometry in plane XY pixels (a RECIST line (2, 2), a polygon (V, 2))."""

    label_id: int
    plane: L.Plane
    box: tuple[float, float, float, float]
    vertices: np.ndarray
    logits: np.ndarray | None = None
    kind: str = "box"
    source: np.ndarray | None = None


@dataclass(eq=False)
class Commit:
    """What one action changed: Labels edits, the objects before it, optionally the points before."""

    edits: list[L.Edit]
    objects_before: dict[int, ObjectRecord]
    description: str
    points_before: tuple | None = None  # (data, features) of the Points layer
    extra: dict = field(default_factory=dict)


class PlaneEditor:
    """Collects label changes on (H, W) copies of Labels planes; ``edits()`` lists the differences.

    Nothing touches the Labels layer until the session commits, so a failure half-way leaves it as is.
    """

    def __init__(self, labels_layer, channel_axis: int | None, overwrite: bool):
        self.labels_layer = labels_layer
        self.channel_axis = channel_axis
        self.overwrite = overwrite
        self._planes: dict[L.Plane, tuple[np.ndarray, np.ndarray]] = {}

    def plane(self, plane: L.Plane) -> np.ndarray:
        if plane not in self._planes:
            before = L.read_labels_plane(self.labels_layer, plane, self.channel_axis)
            # edited at least as int32: a uint8 layer (labels reopened from a file of <= 255 objects)
            # takes id 256 once the commit widens it (History.commit); was numpy's OverflowError
            work = before.astype(np.promote_types(before.dtype, np.int32))
            self._planes[plane] = (before, work)
        return self._planes[plane][1]

    def clear(self, plane: L.Plane, label_id: int) -> None:
        """Remove object ``label_id`` from ``plane`` (its pixels become background)."""
        arr = self.plane(plane)
        arr[arr == label_id] = 0

    def write(self, plane: L.Plane, mask: np.ndarray, label_id: int) -> int:
        """Paint (H, W) bool ``mask`` as ``label_id``: background pixels only unless overwriting."""
        arr = self.plane(plane)
        sel = mask if self.overwrite else mask & ((arr == 0) | (arr == label_id))
        arr[sel] = label_id
        return int(sel.sum())

    def edits(self) -> list[L.Edit]:
        ndim = self.labels_layer.ndim
        out = [L.make_edit(p, b, a, self.channel_axis, ndim) for p, (b, a) in self._planes.items()]
        return [e for e in out if e.size]
