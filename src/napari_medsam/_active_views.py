"""Where the "Active learning" ranking looks: one image layer as a ``View`` (displayed axes, slice
axis, a lazy stack of its slices) and the camera helpers the jump to a suggestion uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _layers as L

__all__ = ["Slices", "View", "camera_of", "canvas_size"]


def camera_of(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer) -> tuple[float, float]:
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) or getattr(viewer, "_canvas_size", None) or (600, 800)
    return float(size[0]), float(size[1])


@dataclass
class View:
    """One image layer as ranking sees it: displayed (rows, cols) axes and the slice axis (None in 2D)."""

    layer: object
    labels: object | None
    rows: int
    cols: int
    zaxis: int | None
    channel_axis: int | None

    @property
    def name(self) -> str:
        return self.layer.name

    def plane(self, z: int | None) -> L.Plane:
        return L.Plane(self.rows, self.cols, () if z is None else ((self.zaxis, int(z)),))

    def image(self):
        """(H, W[, C]) plane in 2D; in 3D a lazy stack whose item z is that slice (read in the worker)."""
        return L.extract_plane(self.layer, self.plane(None), self.channel_axis) if self.zaxis is None else Slices(self)

    def labels_stack(self) -> np.ndarray:
        """A copy of the labels as (H, W) or (Z, H, W) in (slice, rows, cols) order."""
        ax = [L.labels_axis(a, self.channel_axis) for a in (self.zaxis, self.rows, self.cols) if a is not None]
        return np.array(np.transpose(np.asarray(self.labels.data), ax))


class Slices:
    def __init__(self, view: View):
        self.view = view

    def __len__(self) -> int:
        return int(L.image_data(self.view.layer).shape[self.view.zaxis])

    def __getitem__(self, z: int) -> np.ndarray:
        return L.extract_plane(self.view.layer, self.view.plane(z), self.view.channel_axis)
