"""The polygon / lasso prompt as a person uses it: the Boxes tab's button, a lasso drawn with the mouse
on the real canvas, a label, undo, and the kind in the provenance."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import big_objects, dice
from .person import lasso
from .test_session_actions import _contour

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def _lasso_ready(open_widget, qtbot, dsb2018):
    """A shown viewer with a 256-px nuclei crop, the widget's polygon button pressed: (viewer, widget, ref)."""
    image, labels = dsb2018
    viewer, widget = open_widget(show=True)
    widget.runner.synchronous = True
    viewer.add_image(np.ascontiguousarray(image[:256, :256]), name="nuclei")
    widget.wait(300_000)
    qtbot.wait(100)  # a person clicks later than the widget's focus hand-back to the boxes layer
    widget.polygon_btn.click()
    return viewer, widget, labels[:256, :256]


def test_lasso_drawn_with_the_mouse_becomes_a_label(open_widget, qtbot, dsb2018):
    from napari_medsam._provenance_hook import kinds_of, provenance_of

    viewer, widget, ref = _lasso_ready(open_widget, qtbot, dsb2018)
    poly = viewer.layers["MedSAM polygons"]
    assert viewer.layers.selection.active is poly and poly.mode == "add_polygon_lasso"
    (b,) = big_objects(ref, 1)
    lasso(viewer, qtbot, _contour(ref == b, 12))
    qtbot.waitUntil(lambda: poly.nshapes == 1 and bool(widget.session.objects), timeout=60_000)
    lid = next(iter(widget.session.objects))
    assert poly.shape_type == ["polygon"] and int(poly.features["label_id"][0]) == lid
    assert widget.shapes_layer.nshapes == 0  # drawn on the polygon layer, not as a box
    assert dice(widget.labels_layer.data == lid, ref == b) > 0.75
    assert kinds_of(widget.labels_layer)[lid] == "polygon" and lid in provenance_of(widget.labels_layer).records
    assert widget.undo() == "1 polygon"
    assert poly.nshapes == 0 and not widget.labels_layer.data.any()
    assert lid not in kinds_of(widget.labels_layer)


def test_a_refused_lasso_then_a_deleted_layer_keep_the_polygons_working(open_widget, qtbot, dsb2018):
    """Three faults a person met: (1) a lasso outside the image was taken back from inside napari's
    own "added" event, which broke the layer (raw TypeErrors, every later lasso lost); (2) after the
    polygons layer was deleted (or the image picked again) the button gave an empty layer and the next
    lasso erased the earlier polygon's object; (3) Ctrl+Z did nothing with the polygons layer active."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    viewer, widget, ref = _lasso_ready(open_widget, qtbot, dsb2018)
    poly = viewer.layers["MedSAM polygons"]
    viewer.scene.camera.zoom *= 0.3  # room on the canvas beside the image
    qtbot.wait(50)
    lasso(viewer, qtbot, [[270, 200], [300, 200], [300, 240], [270, 240]])  # right of the 256-px image
    qtbot.wait(100)
    assert poly.nshapes == 0 and not widget.session.objects
    assert "outside" in widget.status_label.text(), widget.status_label.text()
    a, b = big_objects(ref, 2)
    lasso(viewer, qtbot, _contour(ref == a, 12))
    qtbot.waitUntil(lambda: len(widget.session.objects) == 1, timeout=60_000)
    (la,) = widget.session.objects
    kept = widget.labels_layer.data == la
    assert dice(kept, ref == a) > 0.6  # drawn zoomed out: a coarser lasso
    viewer.layers.remove(poly)  # the person deletes the layer, then presses the button again
    widget.polygon_btn.click()
    poly = viewer.layers["MedSAM polygons"]
    assert poly.nshapes == 1 and int(poly.features["label_id"][0]) == la  # drawn again
    lasso(viewer, qtbot, _contour(ref == b, 12))
    qtbot.waitUntil(lambda: len(widget.session.objects) == 2, timeout=60_000)
    np.testing.assert_array_equal(widget.labels_layer.data == la, kept)  # not erased
    assert widget.session.history[-1].description == "1 polygon"
    assert viewer.layers.selection.active is poly
    native = viewer.window._qt_viewer.canvas.native
    native.setFocus()
    QTest.keyClick(native, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Z on the polygons layer
    qtbot.waitUntil(lambda: len(widget.session.objects) == 1, timeout=5_000)
    np.testing.assert_array_equal(widget.labels_layer.data == la, kept)
