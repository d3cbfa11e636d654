"""A whole-slide plane in the MedSAM widget (issue 17): a box drawn with the mouse on a multiscale
layer larger than the widget keeps in memory segments on level 0, crop by crop, into labels kept on
disk (an NGFF image-label shown as a multiscale Labels layer); undo writes back only the window the
box changed; the image plane is never read whole. The slide threshold is lowered so that a small
pyramid (1024 x 1536 RGB, made here) is such a slide."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import MedSAMError, Predictor, roi
from napari_medsam import _layers

from .person import drag_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 300_000


class GuardedLevel:
    """Level 0 of the slide: counts reads and fails on any read of more than a quarter of the plane."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.reads.append(out.shape)
        if out.shape[0] * out.shape[1] > self.shape[0] * self.shape[1] // 4:
            raise AssertionError(f"level 0 read whole-ish: {out.shape}")
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("level 0 materialised whole")

    def __len__(self):
        return self.shape[0]


def _tissue(h=1024, w=1536):
    from skimage.data import immunohistochemistry

    return np.ascontiguousarray(np.tile(immunohistochemistry(), (-(-h // 512), -(-w // 512), 1))[:h, :w])


@pytest.fixture
def slide(monkeypatch, tmp_path):
    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 512 * 512)  # 1024 x 1536 counts as a whole slide
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))  # unsaved slide labels are kept
    data = _tissue()
    return data, [GuardedLevel(data), data[::2, ::2].copy(), data[::4, ::4].copy()]


def test_box_drawn_on_a_slide_segments_at_full_resolution_into_chunked_labels(make_napari_viewer, qtbot,
                                                                              lite_model, slide, tmp_path):
    from napari_medsam._slide_plane import slide_labels_of

    data, levels = slide
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    viewer.add_image(levels, multiscale=True, rgb=True, name="slide")
    widget.wait(WAIT)
    s = widget.session
    lab = widget.labels_layer
    store = slide_labels_of(lab).store
    assert lab.multiscale and tuple(lab.level_shapes[0]) == (1024, 1536) and s.slide is not None
    assert s.encoder_calls == 0  # no whole-plane embedding is prefetched on a slide
    viewer.scene.camera.center, viewer.scene.camera.zoom = (230, 330), 3.0  # zoomed in, as a person draws a small box
    qtbot.wait(100)
    drag_box(viewer, qtbot, (300, 200, 340, 236))
    widget.wait(WAIT)
    viewer.scene.camera.center, viewer.scene.camera.zoom = (512, 768), 0.4  # zoomed out: a second box elsewhere
    qtbot.wait(100)
    drag_box(viewer, qtbot, (1000, 700, 1060, 760))
    widget.wait(WAIT)
    assert sorted(s.objects) == [1, 2]
    drawn = np.array([s.objects[i].box for i in (1, 2)])
    np.testing.assert_allclose(drawn, [(300, 200, 340, 236), (1000, 700, 1060, 760)], atol=3)
    # the scripting API on the same pyramid and boxes, pasted in drawing order
    predictor, expected = Predictor(lite_model), np.zeros(data.shape[:2], np.uint32)
    for lid, box in enumerate(drawn, start=1):
        (m,) = roi.predict_boxes(predictor, [data, *levels[1:]], box[None], mode="roi")
        roi.paste_min_id(expected, m.window, m.mask[None], np.array([lid], np.uint32))
    got = np.asarray(store.level0[:])
    assert (got == 1).sum() > 50 and (got == 2).sum() > 50
    np.testing.assert_array_equal(got, expected)  # full resolution, in the chunked store
    assert np.array_equal(np.asarray(lab.data[0][:]), expected)  # the layer shows the store
    assert np.asarray(store.levels[1][:]).max() == 2  # coarser label levels follow
    assert max(r[0] * r[1] for r in levels[0].reads) < 1024 * 1536 // 4
    # undo: only the second box's window is written back, the first object keeps every pixel
    edits = s.history[-1].edits  # one window per label tile it touched (this box straddles x = 1024)
    sizes = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in (e.window for e in edits)]
    assert sum(sizes) < 80 * 80 and sum(e.old.size for e in edits) == sum(sizes)
    s.undo()
    after = np.asarray(store.level0[:])
    np.testing.assert_array_equal(after, np.where(expected == 2, 0, expected))
    assert sorted(s.objects) == [1]
    # the polygon layer opens on a slide and opening it changes nothing (segmenting: test_slide_import)
    assert s.polygon_layer() is not None
    np.testing.assert_array_equal(np.asarray(store.level0[:]), after)
    # File > Save through the plugin's OME-Zarr writer: the labels leave the temporary store
    out = tmp_path / "slide_labels.zarr"
    written = lab.save(str(out), plugin="napari-medsam")
    from medsam_core import ngff

    assert written and np.array_equal(np.asarray(ngff.open_ngff(out).levels[0][:]), after)


@pytest.mark.gui
def test_a_100k_slide_layer_gets_labels_on_disk_without_allocating_a_plane(make_napari_viewer):
    import tracemalloc

    import zarr

    levels = [zarr.create_array(store={}, shape=(100_000 // 2**k, 100_000 // 2**k, 3), chunks=(1024, 1024, 3),
                                dtype="u1", fill_value=200) for k in (0, 4, 7)]
    viewer = make_napari_viewer()
    layer = viewer.add_image(levels, multiscale=True, rgb=True, name="slide")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    tracemalloc.start()
    widget.session.set_image_layer(layer)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    lab = widget.labels_layer
    assert lab.multiscale and tuple(lab.level_shapes[0]) == (100_000, 100_000)  # an NGFF label image on disk
    assert widget.session.slide is not None and peak < 200 * 2**20  # no 40 GB labels plane, no image plane
    assert widget.session.polygon_layer() is not None  # polygons segment on slides (test_slide_import)
    plane = widget.session.plane_image(widget.session.current_plane())
    with pytest.raises(MedSAMError, match="whole-plane tools"):  # nothing decodes the whole 100k plane
        widget.session.predict(plane, np.array([[10.0, 10.0, 50.0, 50.0]]))


def _click(viewer, qtbot, yx):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from .person import canvas_point

    native = viewer.window._qt_viewer.canvas.native
    p = canvas_point(viewer, yx)
    QTest.mouseMove(native, p)
    qtbot.wait(20)
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, p)
    qtbot.wait(50)


def test_a_point_clicked_on_a_slide_refines_its_object_on_its_box_crop(make_napari_viewer, qtbot, lite_model,
                                                                       slide):
    """Points on a whole-slide plane: a negative point clicked inside an object re-segments it on the
    crop its box was segmented on (a decode; the plane is never read whole); the other object keeps
    every pixel; undo writes the window back and takes the point away."""
    from napari_medsam._slide_plane import slide_labels_of

    data, levels = slide
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    viewer.add_image(levels, multiscale=True, rgb=True, name="slide")
    widget.wait(WAIT)
    s = widget.session
    store = slide_labels_of(widget.labels_layer).store
    assert widget.segment_boxes([[200, 300, 236, 340], [700, 1000, 760, 1060]]) == [1, 2]
    before = np.asarray(store.level0[:]).copy()
    encodes = s.encoder_calls
    yy, xx = np.nonzero(before == 1)
    y, x = int(np.median(yy)), int(np.median(xx))
    widget.toggle_negative()
    viewer.scene.camera.center, viewer.scene.camera.zoom = (y, x), 3.0
    qtbot.wait(100)  # (the widget hands the focus to the boxes after the layers were added)
    viewer.layers.selection.active = s.points_layer
    s.points_layer.mode = "add"
    _click(viewer, qtbot, (y, x))
    widget.wait(WAIT)
    after = np.asarray(store.level0[:])
    diff = after != before
    assert diff.any() and set(np.unique(after[diff]).tolist()) <= {0, 1}
    assert set(np.unique(before[diff]).tolist()) <= {0, 1}
    np.testing.assert_array_equal(after == 2, before == 2)  # the other object keeps every pixel
    y0, y1, x0, x1 = roi.plan_rois(np.array([s.objects[1].box]), (1024, 1536))[0].window
    rows, cols = np.nonzero(diff)
    assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1  # inside its crop
    assert s.encoder_calls == encodes  # the box's crop was cached: a decode only
    assert len(s.points_layer.data) == 1 and int(s.points_layer.features["label_id"].iloc[0]) == 1
    assert max(r[0] * r[1] for r in levels[0].reads) < 1024 * 1536 // 4
    s.undo()
    np.testing.assert_array_equal(np.asarray(store.level0[:]), before)
    assert len(s.points_layer.data) == 0


@pytest.mark.gui
def test_slide_label_folders_go_with_their_layer_unless_unsaved(make_napari_viewer, monkeypatch, tmp_path):
    """Slide labels live under $MEDSAM_CACHE_DIR/slide-labels: an empty or saved store goes when its layer
    is removed; an unsaved one is kept (the only copy) with a warning; kept folders of an exited napari
    older than KEEP_DAYS go the next time a slide gets labels."""
    import json
    import time

    from napari_medsam import _slide_plane as SP

    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 512 * 512)
    stale = tmp_path / "slide-labels" / "old"
    stale.mkdir(parents=True)
    (stale / SP.MARKER).write_text(json.dumps({"pid": 2**22 + 12345, "created": time.time() - 8 * 86400}))
    alien = tmp_path / "slide-labels" / "not-ours"  # no marker: never touched
    alien.mkdir()
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    data = _tissue()
    img = viewer.add_image([data, data[::2, ::2].copy()], multiscale=True, rgb=True, name="slide")
    s = widget.session
    folder = s.slide.folder
    assert folder.parent == tmp_path / "slide-labels" and folder.is_dir()
    assert not stale.exists() and alien.exists()
    # an empty store goes with its layer
    viewer.layers.remove(s.labels_layer)
    assert not folder.exists()
    # unsaved labels are kept, and the status line says where
    kept = _one_object(s, img)
    viewer.layers.remove(s.labels_layer)
    assert kept.folder.is_dir() and "unsaved whole-slide labels are kept" in widget.status_label.text()
    # saved through the plugin's writer: the folder goes with the layer
    saved = _one_object(s, img)
    s.labels_layer.save(str(tmp_path / "saved.zarr"), plugin="napari-medsam")
    viewer.layers.remove(s.labels_layer)
    assert not saved.folder.exists()
    SP.mark_saved({SP.SLIDE_KEY: kept})  # (as a writer does)
    assert SP.release(kept) and not kept.folder.exists()
    assert sorted(p.name for p in (tmp_path / "slide-labels").iterdir()) == ["not-ours"]
    # closing napari clears the layers (napari.Viewer.close): an empty store goes then too
    from napari.components import ViewerModel

    model = ViewerModel()
    SP.new_slide_labels(model, "labels", (1024, 1536), (1, 1), (0, 0))
    assert len(list((tmp_path / "slide-labels").iterdir())) == 2
    model.layers.clear()
    assert sorted(p.name for p in (tmp_path / "slide-labels").iterdir()) == ["not-ours"]


def _one_object(s, img):
    """New slide labels for ``img`` holding one 20 x 20 object, committed as the widget does."""
    s.set_image_layer(img)
    mask = roi.BoxMask((10, 30, 20, 40), np.ones((20, 20), bool), 1.0, True)
    editor = s.editor()
    editor.write(None, mask, 1)
    s.commit(editor, dict(s.objects), "test object")
    return s.slide
