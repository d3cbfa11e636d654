"""The one place napari coordinates become core pixel prompts, and masks become Labels pixels.

Conventions:
- napari world and data coordinates are (..., z, y, x); pixel centres sit on integers.
- A ``Plane`` names one 2D slice of an image layer's data: the data axes shown as rows (y)
  and columns (x), and the integer position along every other non-channel axis.
- Core prompts are XY in that plane's pixels: boxes (4,) XYXY, points (2,) XY.
- The target Labels layer has the image's data shape without its channel axis (and without the
  RGB axis), with the same scale and translate; ``labels_axis`` maps image axes onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsam_core.errors import ImageError, PromptError

#: Largest plane (H * W) the widget holds in memory (the plane and an int32 Labels plane). A larger
#: plane of a 2D multiscale layer (a whole slide) is a slide plane (``is_slide``): boxes segment on
#: level 0 crop by crop into labels on disk (_slide_plane); any other larger plane is refused.
MAX_PLANE_PIXELS = 16384 * 16384


def raw_layer(layer):
    """The layer itself: napari hands plugins a viewer whose layers come wrapped in a new proxy at
    each access (``PublicOnlyProxy``), so two handles on one layer are ``==`` but not ``is``."""
    return getattr(layer, "__wrapped__", layer)


@dataclass(frozen=True)
class Plane:
    """One 2D slice of an image layer: rows/cols axes and the positions of the other axes."""

    rows: int
    cols: int
    index: tuple[tuple[int, int], ...]  # ((axis, position), ...) for non-displayed spatial axes

    def describe(self) -> str:
        return ", ".join(f"axis {a} = {p}" for a, p in self.index) or "2D image"


@dataclass
class Edit:
    """Pixels changed in a Labels layer: nD fancy indices, their old and new values."""

    indices: tuple[np.ndarray, ...]
    old: np.ndarray
    new: np.ndarray

    def inverse(self) -> Edit:
        return Edit(self.indices, self.new, self.old)

    @property
    def size(self) -> int:
        return int(self.old.size)


def image_data(layer) -> np.ndarray:
    """The full-resolution data of an image layer (level 0 of a multiscale pyramid)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def window_volume(layer, channel_axis: int | None = None) -> np.ndarray | None:
    """The 3D array whose intensity window a plane of ``layer`` takes: the data of an in-memory,
    single-channel 3D image (what "Segment in 3D" walks), else None (2D, RGB, channels, 4D, lazy or
    multiscale data: each plane its own window, no volume is read whole for it)."""
    data = getattr(layer, "data", None)
    if (getattr(layer, "multiscale", False) or getattr(layer, "rgb", False) or channel_axis is not None
            or not isinstance(data, np.ndarray) or data.ndim != 3):
        return None
    return data


def is_slide(layer, channel_axis: int | None = None) -> bool:
    """A 2D multiscale layer (grey or RGB) whose plane exceeds MAX_PLANE_PIXELS: segmented as a slide."""
    if not getattr(layer, "multiscale", False) or layer.ndim != 2 or (channel_axis or -1) >= 0:
        return False
    h, w = (int(v) for v in layer.level_shapes[0][:2])
    return h * w > MAX_PLANE_PIXELS


def check_plane_size(layer, rows: int, cols: int) -> None:
    """Refuse, before anything is allocated, a plane too large to hold in memory (a whole slide)."""
    shape = layer.level_shapes[0] if getattr(layer, "multiscale", False) else layer.data.shape
    h, w = int(shape[rows]), int(shape[cols])
    if h * w > MAX_PLANE_PIXELS:
        raise ImageError(
            f"layer {layer.name!r} is {w} x {h} pixels: too large for the MedSAM widget, which keeps a plane and its "
            f"labels in memory (up to {MAX_PLANE_PIXELS:,} pixels). Segment whole slides with `medsam slide` or "
            "medsam_core.slide.segment_slide (labels written chunk by chunk to OME-Zarr), then open the labels here"
        )


def spatial_axes(layer, channel_axis: int | None) -> list[int]:
    """Data axes of ``layer`` (RGB axis excluded by napari already) other than the channel axis."""
    return [a for a in range(layer.ndim) if a != channel_axis]


def check_channel_axis(layer, channel_axis: int | None) -> int | None:
    """Validate the channel axis for ``layer`` (and that its planes fit in memory, check_plane_size)."""
    axes = [a for a in range(layer.ndim) if a != channel_axis]
    if len(axes) >= 2 and not is_slide(layer, channel_axis):
        check_plane_size(layer, axes[-2], axes[-1])
    if channel_axis is None or channel_axis < 0:
        return None
    if getattr(layer, "rgb", False):
        raise ImageError(f"layer {layer.name!r} is RGB: its colour axis is used as is; set channel axis to 'none'")
    if channel_axis >= layer.ndim or layer.ndim < 3:
        raise ImageError(
            f"channel axis {channel_axis} does not fit layer {layer.name!r} of {layer.ndim} dimensions "
            f"(needs at least 3 with the channel axis in 0..{layer.ndim - 1})"
        )
    return channel_axis


def displayed_axes(layer, dims, channel_axis: int | None = None) -> tuple[int, int]:
    """(rows, cols) data axes of ``layer`` shown on screen, from the viewer's ``dims``."""
    if dims.ndisplay != 2:
        raise ImageError("MedSAM segments 2D slices: switch the viewer to 2D display (ndisplay = 2)")
    offset = dims.ndim - layer.ndim
    rows, cols = (int(d) - offset for d in dims.displayed[-2:])
    if min(rows, cols) < 0:
        raise ImageError(f"layer {layer.name!r} is not shown in the displayed axes {tuple(dims.displayed)}")
    if channel_axis in (rows, cols):
        raise ImageError(
            f"the channel axis {channel_axis} is displayed: show the image's spatial axes, or change the channel axis"
        )
    return rows, cols


def to_image_data(image_layer, world: np.ndarray) -> np.ndarray:
    """(V, D_world) world points -> (V, image.ndim) image data coordinates (float)."""
    world = np.atleast_2d(np.asarray(world, dtype=float))
    return np.array([image_layer.world_to_data(p) for p in world], dtype=float).reshape(len(world), -1)


def layer_to_world(layer, data: np.ndarray, dims_point) -> np.ndarray:
    """(V, layer.ndim) data points of any layer -> (V, D_world) world points.

    World axes the layer does not have (a 2D Shapes layer over a 3D image) take the viewer's
    current position ``dims_point``.
    """
    data = np.atleast_2d(np.asarray(data, dtype=float))
    full = np.tile(np.asarray(dims_point, dtype=float), (len(data), 1))
    for i, v in enumerate(data):
        w = np.asarray(layer.data_to_world(v), dtype=float)
        full[i, full.shape[1] - len(w) :] = w
    return full


def _position(coord: float, size: int, axis: int) -> int:
    pos = int(np.floor(coord + 0.5))
    if not 0 <= pos < size:
        raise PromptError(f"position {coord:.1f} on axis {axis} is outside the image (0..{size - 1})")
    return pos


def plane_of(image_layer, data_coords: np.ndarray, rows: int, cols: int, channel_axis: int | None) -> Plane:
    """The Plane through image data coordinates ``data_coords`` ((V, ndim); their mean is used)."""
    shape = image_layer.level_shapes[0] if getattr(image_layer, "multiscale", False) else image_layer.data.shape
    centre = np.atleast_2d(data_coords).mean(axis=0)
    index = tuple(
        (a, _position(centre[a], shape[a], a)) for a in spatial_axes(image_layer, channel_axis) if a not in (rows, cols)
    )
    return Plane(rows, cols, index)


def current_plane(image_layer, dims, channel_axis: int | None) -> Plane:
    """The plane the viewer shows now (viewer.dims.point, in world coordinates)."""
    rows, cols = displayed_axes(image_layer, dims, channel_axis)
    return plane_of(image_layer, to_image_data(image_layer, dims.point), rows, cols, channel_axis)


def remove_shapes(shapes_layer, indices) -> None:
    """Remove the shapes at ``indices`` (keeping the others' selection), also from inside napari's
    "added" event of a shape being drawn: ``Shapes.remove`` ends by finishing a drawing, and a lasso
    or path still marked as being drawn then fails on its reset index (and every later lasso with it)."""
    indices = sorted(set(int(i) for i in indices))
    if not indices:
        return
    raw = raw_layer(shapes_layer)
    if getattr(raw, "_is_creating", False):
        raw._is_creating = False  # napari clears it right after its "added" event anyway
    keep = set(shapes_layer.selected_data) - set(indices)
    shapes_layer.selected_data = set(indices)
    shapes_layer.remove_selected()
    shapes_layer.selected_data = {k - sum(n < k for n in indices) for k in keep}


def is_click_box(shapes_layer) -> bool:
    """True while napari finishes a rectangle the mouse made without a drag (or a drag of a few screen pixels).

    napari's rectangle tool adds a square half a vertex radius wide on press and resizes it while the
    mouse moves; a click alone leaves that square. Only a shape being drawn with the mouse counts
    (``_is_creating``), so a script's small boxes stay boxes at any zoom.
    """
    shapes_layer = raw_layer(shapes_layer)
    if not getattr(shapes_layer, "_is_creating", False) or not shapes_layer.nshapes:
        return False
    if shapes_layer.shape_type[-1] != "rectangle":
        return False
    extent = np.ptp(np.asarray(shapes_layer.data[-1], float), axis=0).max()
    return bool(extent <= float(getattr(shapes_layer, "_normalized_vertex_radius", 0.0)))


def shape_to_box(shapes_layer, i: int, image_layer, dims, channel_axis: int | None) -> tuple[Plane, np.ndarray]:
    """Shape ``i`` of ``shapes_layer`` -> (its Plane, (4,) XYXY box in that plane's pixels).

    Each vertex goes shapes data -> world -> image data (scale, translate, rotation of both
    layers respected); the box is the vertices' extent along the displayed axes, and the plane
    is the shape's own position along the other axes.
    """
    return vertices_to_box(shapes_layer, shapes_layer.data[i], image_layer, dims, channel_axis)


def vertices_to_box(shapes_layer, vertices, image_layer, dims, channel_axis: int | None) -> tuple[Plane, np.ndarray]:
    """(V, shapes.ndim) rectangle vertices of ``shapes_layer`` -> (Plane, (4,) XYXY box), as shape_to_box."""
    rows, cols = displayed_axes(image_layer, dims, channel_axis)
    coords = to_image_data(image_layer, layer_to_world(shapes_layer, vertices, dims.point))
    plane = plane_of(image_layer, coords, rows, cols, channel_axis)
    y, x = coords[:, rows], coords[:, cols]
    return plane, np.array([x.min(), y.min(), x.max(), y.max()])


def point_to_xy(points_layer, i: int, image_layer, dims, channel_axis: int | None) -> tuple[Plane, np.ndarray]:
    """Point ``i`` of ``points_layer`` -> (its Plane, (2,) XY pixel position)."""
    rows, cols = displayed_axes(image_layer, dims, channel_axis)
    coords = to_image_data(image_layer, layer_to_world(points_layer, points_layer.data[i], dims.point))
    return plane_of(image_layer, coords, rows, cols, channel_axis), np.array([coords[0, cols], coords[0, rows]])


def plane_to_world(yx, plane: Plane, image_layer, dims_point) -> np.ndarray:
    """(V, 2) (y, x) pixel positions on ``plane`` -> (V, D_world) world points."""
    base = to_image_data(image_layer, dims_point)[0]
    for a, p in plane.index:
        base[a] = p
    coords = np.tile(base, (len(yx), 1))
    coords[:, plane.rows], coords[:, plane.cols] = np.asarray(yx, float)[:, 0], np.asarray(yx, float)[:, 1]
    return layer_to_world(image_layer, coords, dims_point)


def plane_to_layer(yx, plane: Plane, image_layer, target_layer, dims_point) -> np.ndarray:
    """(V, 2) (y, x) pixel positions on ``plane`` -> (V, target.ndim) data coordinates of ``target_layer``."""
    world = plane_to_world(yx, plane, image_layer, dims_point)
    return np.array([target_layer.world_to_data(w) for w in world], dtype=float)


def box_to_world(box, plane: Plane, image_layer, dims_point) -> tuple[np.ndarray, np.ndarray]:
    """XYXY box on ``plane`` -> (centre (D_world,), corners (4, D_world)) in world coordinates."""
    x0, y0, x1, y1 = np.asarray(box, dtype=float)
    corners = plane_to_world([(y0, x0), (y0, x1), (y1, x1), (y1, x0)], plane, image_layer, dims_point)
    return corners.mean(axis=0), corners


def box_to_vertices(box, plane: Plane, image_layer, target_layer, dims_point) -> np.ndarray:
    """Inverse of shape_to_box: XYXY box on ``plane`` -> (4, target.ndim) rectangle vertices."""
    x0, y0, x1, y1 = np.asarray(box, dtype=float)
    return plane_to_layer([(y0, x0), (y0, x1), (y1, x1), (y1, x0)], plane, image_layer, target_layer, dims_point)


def plane_size(image_layer, plane: Plane) -> tuple[int, int]:
    """(H, W) of a plane of the image layer."""
    shape = image_layer.level_shapes[0] if getattr(image_layer, "multiscale", False) else image_layer.data.shape
    return int(shape[plane.rows]), int(shape[plane.cols])


def extract_plane(image_layer, plane: Plane, channel_axis: int | None) -> np.ndarray:
    """The plane's pixels as (H, W) grey or (H, W, C) channels-last (RGB or the channel axis)."""
    check_plane_size(image_layer, plane.rows, plane.cols)
    data = image_data(image_layer)
    pos = dict(plane.index)
    key = tuple(pos.get(a, slice(None)) for a in range(image_layer.ndim))
    kept = [a for a in range(image_layer.ndim) if a not in pos]  # rows, cols, channel: in data order
    arr = np.asarray(data[key])
    order = [kept.index(plane.rows), kept.index(plane.cols)]
    if channel_axis is not None:
        order.append(kept.index(channel_axis))
    if getattr(image_layer, "rgb", False):
        order.append(arr.ndim - 1)
    return np.ascontiguousarray(np.transpose(arr, order))


def labels_axis(image_axis: int, channel_axis: int | None) -> int:
    return image_axis if channel_axis is None or image_axis < channel_axis else image_axis - 1


def labels_geometry(image_layer, channel_axis: int | None) -> tuple[tuple[int, ...], tuple, tuple]:
    """(shape, scale, translate) of a Labels layer matching the image's spatial axes."""
    shape = image_layer.level_shapes[0] if getattr(image_layer, "multiscale", False) else image_layer.data.shape
    axes = spatial_axes(image_layer, channel_axis)
    return (tuple(int(shape[a]) for a in axes), tuple(image_layer.scale[a] for a in axes),
            tuple(image_layer.translate[a] for a in axes))


def check_labels_fit(labels_layer, image_layer, channel_axis: int | None) -> None:
    shape, _, _ = labels_geometry(image_layer, channel_axis)
    if tuple(labels_layer.data.shape) != shape:
        raise ImageError(
            f"labels layer {labels_layer.name!r} has shape {tuple(labels_layer.data.shape)}, but image layer "
            f"{image_layer.name!r} needs {shape}: pick a matching labels layer or let MedSAM create one"
        )


def _labels_key(plane: Plane, channel_axis: int | None, ndim: int):
    pos = {labels_axis(a, channel_axis): p for a, p in plane.index}
    return tuple(pos.get(a, slice(None)) for a in range(ndim)), pos


def read_labels_plane(labels_layer, plane: Plane, channel_axis: int | None) -> np.ndarray:
    """A copy of the labels on ``plane`` as (H, W) (rows, cols)."""
    from ._slide_plane import ONLY_BOXES, slide_labels_of

    if slide_labels_of(labels_layer) is not None:  # never read a slide's labels whole
        raise PromptError(ONLY_BOXES)
    key, _ = _labels_key(plane, channel_axis, labels_layer.ndim)
    arr = np.array(labels_layer.data[key])
    return arr.T if labels_axis(plane.rows, channel_axis) > labels_axis(plane.cols, channel_axis) else arr


def make_edit(plane: Plane, before: np.ndarray, after: np.ndarray, channel_axis: int | None, ndim: int) -> Edit:
    """The Edit turning (H, W) ``before`` into ``after`` on ``plane`` of an ndim Labels layer."""
    rr, cc = np.nonzero(before != after)
    _, pos = _labels_key(plane, channel_axis, ndim)
    r_ax, c_ax = labels_axis(plane.rows, channel_axis), labels_axis(plane.cols, channel_axis)
    idx = []
    for a in range(ndim):
        idx.append(rr if a == r_ax else cc if a == c_ax else np.full(rr.shape, pos[a], dtype=rr.dtype))
    return Edit(tuple(idx), before[rr, cc].copy(), after[rr, cc].copy())


def widen_for(labels_layer, edits) -> None:
    """Give an in-memory Labels layer an integer type that holds every id ``edits`` write (int32 at
    least): labels reopened from a uint8 file of 255 objects could not take object 256."""
    data = labels_layer.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biu":
        return
    top = max((int(e.new.max()) for e in edits if not hasattr(e, "apply") and e.size), default=0)
    if data.dtype == bool or top > np.iinfo(data.dtype).max:
        labels_layer.data = data.astype(np.promote_types(data.dtype, np.int32))


def undo_edit(labels_layer, edit: Edit) -> int:
    """Revert ``edit`` where the pixels still hold what it wrote; pixels the person painted or erased
    since are theirs and stay. Returns how many were left so."""
    if hasattr(edit, "apply") or not edit.size:  # a slide's window on disk: reverted as a whole
        apply_edit(labels_layer, edit.inverse())
        return 0
    now = np.asarray(labels_layer.data[edit.indices])
    ours = now == edit.new
    if ours.all():
        apply_edit(labels_layer, edit.inverse())
        return 0
    if ours.any():
        apply_edit(labels_layer, Edit(tuple(i[ours] for i in edit.indices), edit.new[ours], edit.old[ours]))
    return int((~ours).sum())


def apply_edit(labels_layer, edit: Edit) -> None:
    """Write an Edit into the Labels layer, refreshing only the changed region."""
    if hasattr(edit, "apply"):  # _slide_plane.WindowEdit: a window of labels on disk
        edit.apply(labels_layer)
    elif edit.size:
        labels_layer.data_setitem(edit.indices, edit.new)
