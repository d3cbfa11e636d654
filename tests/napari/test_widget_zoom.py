"""ROI zoom in the widget (issue 13): boxes drawn with the mouse on a 2048 px image give exactly
the labels the scripting API (``medsam_core.roi.segment_large``, mode auto) gives for the same
boxes; small boxes are zoomed in on (one crop encode each), a big one decodes on the whole-image
embedding encoded in the background when the image was picked."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import Predictor, roi

from .conftest import big_objects, ref_box
from .person import drag_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 300_000


def test_drawn_boxes_on_2048_image_match_the_scripting_api(make_napari_viewer, qtbot, lite_model, dsb2018):
    image, ref = dsb2018
    big = np.tile(image, (4, 4))  # 2048 x 2048: nuclei of ~20 px
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    assert widget.zoom_combo.currentText() == "auto"  # the default
    viewer.add_image(big, name="tiled nuclei")
    widget.wait(WAIT)  # the background whole-image encode, started when the image was picked
    assert widget.session.encoder_calls == 1
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    camera.center, camera.zoom = (256, 256), 1.5  # a person zooms in to draw small boxes
    qtbot.wait(100)
    a, b = big_objects(ref, 2)
    boxes = [ref_box(ref, a, 3), ref_box(ref, b, 3)]  # their copies in the top-left tile
    for box in boxes:
        drag_box(viewer, qtbot, box)
        widget.wait(WAIT)
    camera.center, camera.zoom = (1024, 1024), 0.3
    qtbot.wait(100)
    drag_box(viewer, qtbot, (900, 900, 1700, 1500))  # a big box: no zoom needed
    widget.wait(WAIT)
    objects = widget.session.objects
    assert sorted(objects) == [1, 2, 3]
    assert {1, 2} <= set(np.unique(widget.labels_layer.data).tolist())
    drawn = np.array([objects[i].box for i in (1, 2, 3)])
    np.testing.assert_allclose(drawn[:2], np.array(boxes), atol=3)  # the drags landed where aimed
    # the scripting API, box by box as they were drawn (earlier objects keep their pixels)
    predictor, expected = Predictor(lite_model), np.zeros(big.shape, np.int32)
    for label_id, box in enumerate(drawn, start=1):
        (mask,) = roi.predict_boxes(predictor, big, box[None], mode="auto")
        roi.paste_min_id(expected, mask.window, mask.mask[None], np.array([label_id]))
    np.testing.assert_array_equal(widget.labels_layer.data, expected)
    assert roi.choose_roi(drawn, big.shape, "auto").tolist() == [True, True, False]
    assert widget.session.encoder_calls == 1 + roi.count_encodes(drawn[:2], big.shape)  # whole once + crops
