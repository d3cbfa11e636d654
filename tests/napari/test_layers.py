"""World <-> pixel conversion and mask writing (_layers.py) on napari layer models (no Qt, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Labels, Shapes

from medsam_core import ImageError
from napari_medsam import _layers as L

from .conftest import rect


def _viewer_with(image, **kw):
    v = ViewerModel()
    layer = v.add_image(image, **kw)
    return v, layer


def test_box_from_world_with_scale_and_translate():
    img = np.random.default_rng(0).random((40, 60))
    v, layer = _viewer_with(img, scale=(0.5, 2.0), translate=(10.0, -20.0))
    shapes = v.add_layer(Shapes(ndim=2))  # unit scale: its data are world coordinates
    # pixel box x 5..25, y 4..30 -> world y = 10 + 0.5 * y, x = -20 + 2 * x
    shapes.add([rect((-20 + 2 * 5, 10 + 0.5 * 4, -20 + 2 * 25, 10 + 0.5 * 30))], shape_type="rectangle")
    plane, box = L.shape_to_box(shapes, 0, layer, v.dims, None)
    assert plane == L.Plane(0, 1, ())
    np.testing.assert_allclose(box, [5, 4, 25, 30])
    verts = L.box_to_vertices(box, plane, layer, shapes, v.dims.point)
    np.testing.assert_allclose(verts, shapes.data[0])


def test_stack_plane_from_the_box_and_mask_round_trip():
    img = np.random.default_rng(1).random((6, 20, 30))
    v, layer = _viewer_with(img, scale=(3.0, 0.5, 0.5), translate=(1.0, 2.0, 4.0))
    shape, scale, translate = L.labels_geometry(layer, None)
    labels = v.add_layer(Labels(np.zeros(shape, np.int32), scale=scale, translate=translate))
    shapes = v.add_layer(Shapes(ndim=3, scale=layer.scale, translate=layer.translate))
    shapes.add([rect((3, 2, 12, 9), lead=(4,))], shape_type="rectangle")  # on slice z = 4
    v.dims.set_current_step(0, 1)  # the viewer shows another slice: the box's own z counts
    plane, box = L.shape_to_box(shapes, 0, layer, v.dims, None)
    assert plane.index == ((0, 4),) and (plane.rows, plane.cols) == (1, 2)
    np.testing.assert_allclose(box, [3, 2, 12, 9])
    mask = np.zeros((20, 30), bool)
    mask[2:10, 3:13] = True
    before = L.read_labels_plane(labels, plane, None)
    after = before.copy()
    after[mask] = 7
    edit = L.make_edit(plane, before, after, None, labels.ndim)
    L.apply_edit(labels, edit)
    assert np.flatnonzero(labels.data.any(axis=(1, 2))).tolist() == [4]
    np.testing.assert_array_equal(labels.data[4] == 7, mask)
    # the written pixels sit, in world coordinates, exactly under the box's world position
    world_corner = labels.data_to_world((4, 2, 3))
    np.testing.assert_allclose(layer.world_to_data(world_corner), (4, 2, 3))
    L.apply_edit(labels, edit.inverse())
    assert not labels.data.any()


def test_transposed_display_axes():
    img = np.random.default_rng(2).random((5, 8, 9))
    v, layer = _viewer_with(img)
    v.dims.order = (1, 0, 2)  # show (z, x) with y as the slider
    v.dims.set_current_step(1, 3)
    plane = L.current_plane(layer, v.dims, None)
    assert (plane.rows, plane.cols, plane.index) == (0, 2, ((1, 3),))
    np.testing.assert_array_equal(L.extract_plane(layer, plane, None), img[:, 3, :])
    labels = Labels(np.zeros(img.shape, np.int32))
    before = L.read_labels_plane(labels, plane, None)
    after = before.copy()
    after[1, 2] = 5  # z = 1, x = 2
    L.apply_edit(labels, L.make_edit(plane, before, after, None, 3))
    assert labels.data[1, 3, 2] == 5 and labels.data.sum() == 5


def test_channel_axis_and_rgb_planes():
    img = np.random.default_rng(3).random((3, 8, 10))
    v, layer = _viewer_with(img)
    plane = L.current_plane(layer, v.dims, 0)
    assert plane.index == ()
    assert L.extract_plane(layer, plane, 0).shape == (8, 10, 3)
    assert L.labels_geometry(layer, 0)[0] == (8, 10)
    with pytest.raises(ImageError, match="channel axis"):
        L.check_channel_axis(layer, 3)
    rgb = v.add_image(np.zeros((8, 10, 3), np.uint8), rgb=True)
    assert L.extract_plane(rgb, L.Plane(0, 1, ()), None).shape == (8, 10, 3)
    assert L.labels_geometry(rgb, None)[0] == (8, 10)
