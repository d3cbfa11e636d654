"""The MedSAM dock widget on a real napari viewer with the real bundled LiteMedSAM weights."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import MedSAMError

from .conftest import big_objects, dice, rect, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 120_000  # ms; a loaded 2-core CPU can take long to encode: correctness, not speed, is tested


def nuclei(ref, n):
    """n DSB nuclei that the bundled LiteMedSAM segments well from a 2-px-padded box (core Dice >= 0.9)."""
    objs = big_objects(ref, 100)
    return [objs[i] for i in (2, 3, 8, 10, 12)[:n]]


def test_draw_move_undo_threaded(open_widget, qtbot, dsb2018):
    """Draw a box (encoded in a worker thread), move it onto another nucleus, undo."""
    image, ref = dsb2018
    viewer, widget = open_widget()
    assert not widget.runner.synchronous
    layer = viewer.add_image(image, name="nuclei")
    assert widget.session.image_layer is layer  # picked up automatically
    shapes, labels = widget.shapes_layer, widget.labels_layer
    assert shapes.mode == "add_rectangle" and labels.data.shape == image.shape
    assert "Ctrl+Z" in widget.help_label.text() and "segment all" in widget.help_label.text()
    qtbot.waitUntil(lambda: getattr(viewer.layers.selection.active, "name", "") == shapes.name)  # ready to draw
    a, b = nuclei(ref, 2)

    shapes.add([rect(ref_box(ref, a))], shape_type="rectangle")
    qtbot.waitUntil(lambda: (labels.data > 0).any(), timeout=WAIT)
    assert set(np.unique(labels.data)) == {0, 1}
    assert dice(labels.data == 1, ref == a) >= 0.8
    assert int(shapes.features["label_id"][0]) == 1
    before_move = labels.data.copy()

    shapes.data = [rect(ref_box(ref, b))]  # the user drags the box onto another nucleus
    qtbot.waitUntil(lambda: not np.array_equal(labels.data, before_move), timeout=WAIT)
    assert set(np.unique(labels.data)) == {0, 1}  # same id, old pixels gone
    assert dice(labels.data == 1, ref == b) >= 0.8
    assert dice(labels.data == 1, ref == a) == 0
    assert widget.session.encoder_calls == 1  # decoding never re-encodes
    # The model line says which encoder ran the image (PyTorch, OpenVINO, or PyTorch while the fast
    # one is built in the background), read from the predictors without making a backend.
    assert widget.session.encoder_text.startswith("encoder: ")
    assert widget.device_label.text() == f"lite_medsam on cpu; {widget.session.encoder_text}"

    widget.undo()
    np.testing.assert_array_equal(labels.data, before_move)
    np.testing.assert_allclose(shapes.data[0], rect(ref_box(ref, a)))
    assert int(shapes.features["label_id"][0]) == 1


def test_boxes_become_new_ids_background_only_and_delete(open_widget, qtbot, dsb2018, monkeypatch):
    image, ref = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(image)
    ids = nuclei(ref, 3)
    out = widget.segment_boxes([ref_box(ref, i) for i in ids])
    labels = widget.labels_layer.data
    assert out == [1, 2, 3]
    for new, old in zip(out, ids, strict=True):
        assert dice(labels == new, ref == old) >= 0.8
    # a box over object 1 writes only into background pixels (no overwrite)
    before = labels.copy()
    (new_id,) = widget.segment_boxes([ref_box(ref, ids[0], pad=6)])
    assert new_id == 4
    np.testing.assert_array_equal(labels[before > 0], before[before > 0])
    widget.set_overwrite(True)
    (over_id,) = widget.segment_boxes([ref_box(ref, ids[0], pad=2)])
    assert (labels[ref == ids[0]] == over_id).mean() > 0.8
    # deleting a box removes its object
    widget.shapes_layer.selected_data = {1}
    widget.shapes_layer.remove_selected()
    assert not (labels == 2).any()
    assert 2 not in widget.session.objects


def test_bad_box_changes_nothing_and_notifies(open_widget, qtbot, dsb2018, monkeypatch):
    image, ref = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    shown = []
    monkeypatch.setattr("napari_medsam._widget.show_error", shown.append)
    viewer.add_image(image)
    widget.segment_boxes([ref_box(ref, nuclei(ref, 1)[0])])
    snapshot = {ly.name: np.array(ly.data, copy=True) if not isinstance(ly.data, list) else
                [np.array(d) for d in ly.data] for ly in viewer.layers}

    def unchanged():
        for ly in viewer.layers:
            want = snapshot[ly.name]
            if isinstance(want, list):
                assert len(ly.data) == len(want) and all(np.array_equal(a, b) for a, b in zip(ly.data, want, strict=True))
            else:
                np.testing.assert_array_equal(ly.data, want)

    # drawn outside the image: reported, rectangle taken back, labels untouched
    widget.shapes_layer.add([rect((600, 600, 700, 650))], shape_type="rectangle")
    assert shown and "outside" in str(shown[-1])
    unchanged()
    # a zero-size box from a script raises and changes nothing
    with pytest.raises(MedSAMError, match="empty|thinner"):
        widget.segment_boxes([[100, 100, 100, 140]])
    unchanged()
    # moving a box out of the image puts it back
    widget.shapes_layer.data = [rect((-300, -300, -200, -200))]
    assert "outside" in str(shown[-1])
    unchanged()
    assert len(viewer.layers) == len(snapshot)


def test_refine_with_points_and_undo(open_widget, qtbot, dsb2018):
    image, ref = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(image)
    a = nuclei(ref, 1)[0]
    (lid,) = widget.segment_boxes([ref_box(ref, a, pad=8)])
    before = widget.labels_layer.data.copy()
    yy, xx = np.nonzero(ref == a)
    centre = [float(xx.mean()), float(yy.mean())]
    widget.refine(lid, [centre], [0])  # a negative point in the middle must change the object
    after = widget.labels_layer.data
    assert not np.array_equal(after, before)
    assert len(widget.points_layer.data) == 1 and not widget.points_layer.features["positive"][0]
    widget.undo()
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert len(widget.points_layer.data) == 0
    # a clicked point (napari order y, x) refines the object under it
    widget.points_layer.add(np.array([[centre[1], centre[0]]]))
    assert int(widget.points_layer.features["label_id"][0]) == lid
    assert len(widget.session.history) == 2


def test_a_point_refines_the_object_it_is_on_not_the_last_drawn_box(open_widget, dsb2018):
    """napari leaves the last drawn rectangle selected; every point then refined that object, wherever
    it was clicked (a point on object 1 changed object 2; a click on background "refined label 2")."""
    from scipy import ndimage

    image, ref = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(image)
    a, b = nuclei(ref, 2)
    la, lb = widget.segment_boxes([ref_box(ref, a, pad=8), ref_box(ref, b, pad=8)])
    widget.shapes_layer.selected_data = {1}  # as after drawing box b with the mouse
    before_b = widget.labels_layer.data == lb
    yy, xx = np.nonzero(ref == a)
    widget.points_layer.add(np.array([[yy.mean(), xx.mean()]]))  # a click on object a
    assert int(widget.points_layer.features["label_id"][0]) == la
    np.testing.assert_array_equal(widget.labels_layer.data == lb, before_b)
    far = np.argwhere(ndimage.binary_erosion(ref == 0, iterations=30))[0]  # background, far from every box
    widget.points_layer.add(far[None].astype(float))
    assert len(widget.points_layer.data) == 1  # the background click was taken back, with the reason
    assert "belongs to no MedSAM object" in widget.status_label.text(), widget.status_label.text()
    np.testing.assert_array_equal(widget.labels_layer.data == lb, before_b)


def test_stack_box_segments_only_its_slice(open_widget, qtbot, cells3d):
    image, ref, spacing = cells3d
    viewer, widget = open_widget()
    layer = viewer.add_image(image, scale=spacing)
    z = 30
    viewer.dims.set_current_step(0, z)
    obj = big_objects(ref[z], 1, min_area=200)[0]
    widget.shapes_layer.add([rect(ref_box(ref[z], obj), lead=(z,))], shape_type="rectangle")
    labels = widget.labels_layer
    qtbot.waitUntil(lambda: (labels.data > 0).any(), timeout=WAIT)
    assert labels.data.shape == image.shape and tuple(labels.scale) == tuple(layer.scale)
    assert np.flatnonzero((labels.data > 0).any(axis=(1, 2))).tolist() == [z]
    assert dice(labels.data[z] == 1, ref[z] == obj) >= 0.8
    # a scripted box on another slice
    (lid,) = widget.segment_boxes([ref_box(ref[z + 5], big_objects(ref[z + 5], 1, 200)[0])], z=z + 5)
    assert np.flatnonzero((labels.data == lid).any(axis=(1, 2))).tolist() == [z + 5]


def test_scale_translate_rgb_and_channels(open_widget, qtbot, dsb2018):
    image, ref = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    a = nuclei(ref, 1)[0]
    box = ref_box(ref, a)
    # non-unit scale and translate: draw the box in world coordinates on a unit-scale 2D layer
    layer = viewer.add_image(image, scale=(0.5, 2.0), translate=(10.0, -20.0))
    world = rect(box) * np.array([0.5, 2.0]) + np.array([10.0, -20.0])
    widget.shapes_layer.add([widget.shapes_layer.world_to_data(w) for w in world], shape_type="rectangle")
    labels = widget.labels_layer
    assert tuple(labels.scale) == (0.5, 2.0) and tuple(labels.translate) == (10.0, -20.0)
    assert dice(labels.data == 1, ref == a) >= 0.8
    viewer.layers.remove(layer)
    viewer.layers.remove(labels)  # a fitting labels layer would be reused: start afresh
    # RGB
    rgb = np.repeat((image / image.max() * 255).astype(np.uint8)[..., None], 3, axis=2)
    widget.set_image_layer(viewer.add_image(rgb, rgb=True))
    (lid,) = widget.segment_boxes([box])
    assert widget.labels_layer.data.shape == image.shape and dice(widget.labels_layer.data == lid, ref == a) >= 0.8
    # multichannel (C, H, W) with a channel axis: channel 1 holds the nuclei
    multi = np.stack([np.zeros_like(image) + 7, image])
    multi[0, 0, 0] = 9  # not constant
    viewer.layers.remove(widget.labels_layer)
    widget.set_image_layer(viewer.add_image(multi))
    widget.set_channel(0, 1)
    (lid,) = widget.segment_boxes([box])
    assert widget.labels_layer.data.shape == image.shape and dice(widget.labels_layer.data == lid, ref == a) >= 0.8
    with pytest.raises(MedSAMError, match="channel"):
        widget.set_channel(5, 0)


def test_preview_and_intensity(open_widget, dsb2018):
    image, _ = dsb2018
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(image)
    prev = widget.preview()
    assert prev.data.shape == (256, 256) and 0 <= prev.data.min() and prev.data.max() <= 1
    np.testing.assert_allclose(np.array(prev.scale), (2.0, 2.0))
    widget.set_intensity("contrast")
    assert widget.session.intensity().mode == "range"
    with pytest.raises(MedSAMError):
        widget.set_intensity("banana")


def test_screenshot_of_widget_segmenting_real_data(open_widget, qtbot, dsb2018):
    """Full-window PNG (docs/images/widget.png): dock widget, real nuclei, coloured labels."""
    import imageio.v3 as iio

    from .conftest import REPO_DOCS

    image, ref = dsb2018
    viewer, widget = open_widget(show=True)
    viewer.window.resize(1500, 950)
    widget.runner.synchronous = True
    viewer.add_image(image, name="DSB 2018 nuclei", contrast_limits=(0, float(np.percentile(image, 99.5))))
    ids = nuclei(ref, 5)
    widget.segment_boxes([ref_box(ref, i) for i in ids[:-1]])
    from .test_session_actions import _contour

    widget.segment_polygon(_contour(ref == ids[-1], 10))  # one object from a polygon (magenta)
    viewer.layers.selection.active = widget.shapes_layer
    qtbot.waitUntil(widget.isVisible)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    colour = np.ptp(canvas[..., :3].astype(int), axis=2) > 60  # labels are coloured, the image is grey
    assert colour.sum() > 500
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.shape[1] > canvas.shape[1]  # the dock widget is in the picture
    REPO_DOCS.joinpath("images").mkdir(parents=True, exist_ok=True)
    iio.imwrite(REPO_DOCS / "images" / "widget.png", shot)


def test_model_line_tells_a_pending_fast_encoder(open_widget, monkeypatch):
    """Before any image: no encoder named; while the engine is built: said so; then its name."""
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    session = widget.session
    assert session.encoder_text == "" and widget._model_line() == "lite_medsam on cpu"
    state = {"value": "pending"}
    monkeypatch.setattr(session._encoder, "encoder_state", lambda: state["value"])
    widget.show_status("MedSAM: ready")
    assert "while the fast one is built" in widget.device_label.text()
    state["value"] = "openvino"
    widget.show_status("MedSAM: ready")
    assert widget.device_label.text() == "lite_medsam on cpu; encoder: OpenVINO"
    state["value"] = "openvino bf16"  # MEDSAM_ENCODER_PRECISION=bf16: the user sees it
    widget.show_status("MedSAM: ready")
    assert widget.device_label.text() == "lite_medsam on cpu; encoder: OpenVINO bf16"


def test_another_image_gets_its_own_labels_and_going_back_finds_the_first(open_widget, qtbot, dsb2018):
    """Two images of the same shape: picking the second in **Image** gives it a new labels layer above
    it (before, the first image's labels were reused: the second image's masks went into them, under
    the second image where nobody saw them); going back writes into the first image's labels again."""
    from .person import drag_box

    image, ref = dsb2018
    viewer, widget = open_widget(show=True)
    viewer.add_image(image, name="first")
    s = widget.session
    widget.wait(WAIT)
    first_labels = s.labels_layer
    a, b = nuclei(ref, 2)
    drag_box(viewer, qtbot, ref_box(ref, a))
    widget.wait(WAIT)
    assert set(np.unique(first_labels.data)) == {0, 1}
    assert dice(np.asarray(first_labels.data) == 1, ref == a) > 0.8
    kept = np.asarray(first_labels.data).copy()
    viewer.add_image(image[::-1].copy(), name="second")
    assert s.image_layer.name == "first"  # a new layer does not take the widget's image away

    def choose(name):  # the person picks an item in the Image drop-down
        combo = widget.image_combo
        combo.setCurrentIndex(combo.findText(name))
        combo.activated.emit(combo.currentIndex())
        widget.wait(WAIT)

    choose("second")
    assert widget.last_error is None and s.image_layer.name == "second"
    second_labels = s.labels_layer
    assert second_labels is not first_labels and second_labels.name == "MedSAM labels (second)"
    assert viewer.layers.index(second_labels) > viewer.layers.index(viewer.layers["second"])  # seen
    assert widget.labels_combo.currentText() == "MedSAM labels (second)"
    drag_box(viewer, qtbot, ref_box(ref[::-1], b))
    widget.wait(WAIT)
    assert set(np.unique(second_labels.data)) == {0, 1}
    assert dice(np.asarray(second_labels.data) == 1, ref[::-1] == b) > 0.8
    np.testing.assert_array_equal(first_labels.data, kept)  # the first image's labels untouched

    choose("first")
    assert s.labels_layer is first_labels and widget.labels_combo.currentText() == "MedSAM labels"
    # its work as it was left: the box of object 1 (to move or delete) and its undo step
    assert s.shapes_layer.features["label_id"].tolist() == [1] and len(s.history) == 1
    np.testing.assert_allclose(s.shapes_layer.data[0], s.objects[1].vertices)
    choose("first")  # chosen again: still its labels
    assert s.labels_layer is first_labels and s.shapes_layer.nshapes == 1
    viewer.layers.selection.active = s.shapes_layer
    s.shapes_layer.mode = "add_rectangle"
    drag_box(viewer, qtbot, ref_box(ref, b))
    widget.wait(WAIT)
    assert set(np.unique(first_labels.data)) == {0, 1, 2} and np.array_equal(second_labels.data == 1, second_labels.data > 0)
    widget.undo()
    widget.undo()  # both of the first image's steps, across the visit to the second image
    assert not np.asarray(first_labels.data).any() and s.shapes_layer.nshapes == 0
    assert set(np.unique(second_labels.data)) == {0, 1}


def test_renamed_layers_are_renamed_in_the_drop_downs(open_widget):
    """A person renames layers in napari's layer list: MedSAM's Image and Labels lists follow, and a
    name that went away between filling the list and picking it gets a message, not a KeyError."""
    rng = np.random.default_rng(0)
    viewer, widget = open_widget()
    viewer.add_image(rng.integers(0, 255, (64, 64)).astype(np.uint8), name="A")
    viewer.add_image(rng.integers(0, 255, (48, 48)).astype(np.uint8), name="B")
    widget.wait(WAIT)
    viewer.layers["A"].name = "nuclei"
    widget.labels_layer.name = "my nuclei labels"
    combo = widget.image_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["nuclei", "B"]
    assert combo.currentText() == "nuclei" and widget.labels_combo.currentText() == "my nuclei labels"

    def choose(name):
        combo.setCurrentIndex(combo.findText(name))
        combo.activated.emit(combo.currentIndex())
        widget.wait(WAIT)

    choose("B")
    choose("nuclei")
    assert widget.last_error is None and widget.session.image_layer.name == "nuclei"
    assert widget.labels_layer.name == "my nuclei labels"  # its own labels, found again
    combo.addItem("gone")
    choose("gone")
    assert "no layer 'gone' any more" in widget.last_error and widget.session.image_layer.name == "nuclei"
    assert combo.findText("gone") == -1  # the list was filled again


def test_closing_the_image_while_it_is_encoded_is_not_an_error(open_widget):
    """The image is closed while its embedding is computed in the background: when the encode ends
    the person is told so, not shown "no image layer chosen" for something they did not do."""
    rng = np.random.default_rng(1)
    viewer, widget = open_widget()
    image = viewer.add_image(rng.integers(0, 255, (96, 96)).astype(np.uint8), name="A")
    assert widget.session._encoding is not None  # the encode runs in a worker
    viewer.layers.remove(image)
    widget.wait(WAIT)
    assert widget.last_error is None, widget.last_error
    assert "closed while it was encoded" in widget.status_label.text()


def test_an_ellipse_on_the_boxes_layer_is_no_prompt_and_the_status_says_so(open_widget):
    rng = np.random.default_rng(2)
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(rng.integers(0, 255, (64, 64)).astype(np.uint8), name="A")
    widget.shapes_layer.add([rect([10, 10, 30, 30])], shape_type="ellipse")
    assert not np.asarray(widget.labels_layer.data).any() and widget.last_error is None
    assert "only rectangles on 'MedSAM boxes' are prompts (1 ellipse left as they are)" in widget.status_label.text()
