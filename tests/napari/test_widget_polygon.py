"""The polygon / lasso prompt as a person uses it: the Boxes tab's button, a lasso drawn with the mouse
on the real canvas, a label, undo, and the kind in the provenance."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import big_objects, dice
from .person import lasso
from .test_session_actions import _contour

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_lasso_drawn_with_the_mouse_becomes_a_label(open_widget, qtbot, dsb2018):
    from napari_medsam._provenance_hook import kinds_of, provenance_of

    image, labels = dsb2018
    ref = labels[:256, :256]
    viewer, widget = open_widget(show=True)
    widget.runner.synchronous = True
    viewer.add_image(np.ascontiguousarray(image[:256, :256]), name="nuclei")
    widget.wait(300_000)
    qtbot.wait(100)  # a person clicks later than the widget's focus hand-back to the boxes layer
    widget.polygon_btn.click()
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
