"""The widget as a person meets it (issue 15): real viewer, real weights, mouse drags on the canvas,
File > Open, switching layers, in the orders people do them."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import big_objects, ref_box
from .person import drag_box, file_open

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 300_000


@pytest.fixture
def crop(dsb2018):
    image, labels = dsb2018
    return np.ascontiguousarray(image[:256, :256]), labels[:256, :256]


def _add_plugin(viewer, model):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(model)
    return widget


def same(a, b) -> bool:
    """Identity through npe2's PublicOnlyProxy (the widget gets the viewer wrapped in one)."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def _ids(layer) -> set[int]:
    return set(np.unique(layer.data).tolist()) - {0}


def test_image_first_then_plugin_drag_draws(make_napari_viewer, qtbot, lite_model, crop):
    """Bug 3 (order 1): open the image, then Plugins > MedSAM: prompt layers appear, a drag draws a box.
    Bug 6: "Preview model input" must not steal the selection: the next drag draws too."""
    image, ref = crop
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="nuclei")
    widget = _add_plugin(viewer, lite_model)
    assert same(widget.session.image_layer, viewer.layers["nuclei"])
    assert widget.shapes_layer is not None and widget.shapes_layer in viewer.layers
    widget.wait(WAIT)
    # the boxes layer is active in rectangle mode (handed back after napari's own selection)
    qtbot.waitUntil(lambda: same(viewer.layers.selection.active, widget.shapes_layer), timeout=2000)
    a, b = big_objects(ref, 2)
    drag_box(viewer, qtbot, ref_box(ref, a, 3))
    widget.wait(WAIT)
    assert widget.shapes_layer.nshapes == 1 and _ids(widget.labels_layer) == {1}
    widget.preview_btn.click()
    assert "MedSAM model input" in viewer.layers
    drag_box(viewer, qtbot, ref_box(ref, b, 3))
    widget.wait(WAIT)
    assert widget.shapes_layer.nshapes == 2 and _ids(widget.labels_layer) == {1, 2}


def test_plugin_first_then_file_open_drag_draws(make_napari_viewer, qtbot, lite_model, crop, tmp_path):
    """Bug 3 (order 2): Plugins > MedSAM, then File > Open a TIFF: a drag draws a box at once."""
    import tifffile

    image, ref = crop
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer(show=True)
    widget = _add_plugin(viewer, lite_model)
    file_open(viewer, qtbot, path)
    assert same(widget.session.image_layer, viewer.layers["nuclei"])
    widget.wait(WAIT)
    qtbot.waitUntil(lambda: same(viewer.layers.selection.active, widget.shapes_layer), timeout=2000)
    drag_box(viewer, qtbot, ref_box(ref, big_objects(ref, 1)[0], 3))
    widget.wait(WAIT)
    assert _ids(widget.labels_layer) == {1}


def test_switching_labels_layer_does_not_resegment_old_boxes(make_napari_viewer, qtbot, lite_model, crop):
    """Bug 2: after choosing another Labels layer, the next box is the only thing written into it."""
    image, ref = crop
    viewer = make_napari_viewer(show=True)
    widget = _add_plugin(viewer, lite_model)
    viewer.add_image(image, name="nuclei")
    widget.wait(WAIT)
    qtbot.wait(50)
    a, b, c = big_objects(ref, 3)
    drag_box(viewer, qtbot, ref_box(ref, a, 3))
    drag_box(viewer, qtbot, ref_box(ref, b, 3))
    widget.wait(WAIT)
    first = widget.labels_layer
    assert _ids(first) == {1, 2}
    kept = np.array(first.data)
    other = viewer.add_labels(np.zeros(image.shape, np.int32), name="second")
    combo = widget.labels_combo
    combo.setCurrentText("second")
    combo.activated.emit(combo.currentIndex())  # what choosing it in the combo does
    assert same(widget.labels_layer, other)
    viewer.layers.selection.active = widget.shapes_layer  # back to drawing
    widget.shapes_layer.mode = "add_rectangle"
    drag_box(viewer, qtbot, ref_box(ref, c, 3))
    widget.wait(WAIT)
    assert _ids(other) == {1}, _ids(other)  # not the two old boxes again
    np.testing.assert_array_equal(first.data, kept)
    assert "1 box" in widget.status_label.text()
    assert len(widget.session.history) == 1 and sorted(widget.session.objects) == [1]


def test_file_save_picks_the_medsam_writer_and_adds_tif(make_napari_viewer, qtbot, lite_model, crop, tmp_path):
    """Bug 5: File > Save Selected Layer on the MedSAM labels preselects the plugin's writer; the
    suggested name has no extension and gets .tif; the sidecar is written; reopening gives Labels."""
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication, QFileDialog, QLineEdit

    image, ref = crop
    viewer = make_napari_viewer(show=True)
    widget = _add_plugin(viewer, lite_model)
    viewer.add_image(image, name="nuclei")
    widget.segment_boxes(ref_box(ref, big_objects(ref, 1)[0], 3))
    labels = widget.labels_layer
    qtbot.waitUntil(lambda: same(viewer.layers.selection.active, widget.shapes_layer), timeout=2000)
    viewer.layers.selection.active = labels  # the person clicks the labels layer, then File > Save
    seen = {}

    def answer():
        dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, QFileDialog) and w.isVisible()]
        if not dialogs:
            QTimer.singleShot(50, answer)
            return
        dlg = dialogs[0]
        seen["filter"], seen["name"] = dlg.selectedNameFilter(), dlg.selectedFiles()[0]
        name_edit = dlg.findChild(QLineEdit)  # the dialog is Qt's own (getSaveFileName): type and press Enter
        name_edit.setText(str(tmp_path / "MedSAM labels"))  # the suggested name, in a folder of ours
        QTest.keyClick(name_edit, Qt.Key.Key_Return)

    QTimer.singleShot(50, answer)
    viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert seen["filter"].startswith("MedSAM"), seen  # not "napari builtins labels"
    assert seen["name"].endswith("MedSAM labels")
    saved = tmp_path / "MedSAM labels.tif"
    assert saved.exists() and (tmp_path / "MedSAM labels.provenance.json").exists()
    file_open(viewer, qtbot, saved)
    reopened = viewer.layers[-1]
    assert type(reopened).__name__ == "Labels"
    np.testing.assert_array_equal(reopened.data, labels.data)


def test_a_click_without_a_drag_makes_no_box_and_no_object(make_napari_viewer, qtbot, lite_model, crop):
    """A click in rectangle mode (and a jitter of a screen pixel) used to leave napari's 2.5-px
    starter square, segmented as a junk object or left pending for 'G'. It is taken back with a
    hint; a real drag and a script's small box at a far zoom-out still segment."""
    from .person import drag

    image, ref = crop
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="nuclei")
    widget = _add_plugin(viewer, lite_model)
    widget.wait(WAIT)
    qtbot.waitUntil(lambda: same(viewer.layers.selection.active, widget.shapes_layer), timeout=2000)
    a, b = big_objects(ref, 2)
    x0, y0, x1, y1 = ref_box(ref, a, 3)
    for auto in (True, False):
        widget.auto_check.setChecked(auto)
        drag(viewer, qtbot, (y0 + 4, x0 + 4), (y0 + 4, x0 + 4), steps=1)  # a click
        widget.wait(WAIT)
        assert widget.shapes_layer.nshapes == 0 and _ids(widget.labels_layer) == set()
        assert "a click draws no box" in widget.status_label.text()
    widget.segment_all()  # 'G': nothing pending
    assert _ids(widget.labels_layer) == set() and len(widget.session.history) == 0
    widget.auto_check.setChecked(True)
    drag_box(viewer, qtbot, (x0, y0, x1, y1))
    widget.wait(WAIT)
    assert widget.shapes_layer.nshapes == 1 and _ids(widget.labels_layer) == {1}
    viewer.scene.camera.zoom = 0.02  # a script's 6-px box at a zoom where it is under a screen pixel
    bx0, by0, _, _ = ref_box(ref, b, 0)
    widget.shapes_layer.add_rectangles([[by0, bx0], [by0 + 6, bx0 + 6]])
    widget.wait(WAIT)
    assert widget.shapes_layer.nshapes == 2 and _ids(widget.labels_layer) == {1, 2}
