"""QuPath GeoJSON opened onto a whole slide (issue 17): the polygons are drawn tile by tile into labels on
disk, marked imported, which the widget targets; a box dragged on one object (or a point clicked in one)
redoes only that object, undo puts it back, and the plugin's writer saves the corrected polygons with
their classes. The slide threshold is lowered so that a small pyramid (1024 x 1536 RGB) is a slide."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.geojson import read_geojson, write_geojson
from napari_medsam import _layers

from .person import drag_box, file_open
from .test_wsi_widget import GuardedLevel, _click, _tissue

WAIT = 300_000


def _imported():
    from skimage.draw import disk

    labels = np.zeros((1024, 1536), np.uint32)
    for lid, (y, x, r) in enumerate([(320, 220, 18), (350, 262, 16), (600, 900, 20), (900, 1300, 15)], 1):
        labels[disk((y, x), r, shape=labels.shape)] = lid
    labels[600:610, 905:915] = 0  # a hole in object 3
    return labels


def _only_changed(before, after, lid):
    diff = before != after
    assert diff.any()
    assert set(np.unique(before[diff]).tolist()) <= {0, lid} and set(np.unique(after[diff]).tolist()) <= {0, lid}


@pytest.mark.gui
@pytest.mark.slow
def test_geojson_on_a_slide_is_the_target_and_one_object_is_redone(make_napari_viewer, qtbot, lite_model,
                                                                   monkeypatch, tmp_path):
    from napari_medsam._reader import PROV_KEY
    from napari_medsam._slide_plane import slide_labels_of

    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 512 * 512)
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    data, imported = _tissue(), _imported()
    classes = {1: "Tumor", 2: "Stroma", 3: "Tumor", 4: "Immune cells"}
    write_geojson(tmp_path / "slide.geojson", imported, classes)
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    level0 = GuardedLevel(data)
    viewer.add_image([level0, data[::2, ::2].copy(), data[::4, ::4].copy()], multiscale=True, rgb=True, name="slide")
    widget.wait(WAIT)
    file_open(viewer, qtbot, tmp_path / "slide.geojson")  # onto the slide: drawn into labels on disk
    geo = viewer.layers["slide.geojson"]
    s = widget.session
    slide = slide_labels_of(geo)
    assert geo.multiscale and s.labels_layer is geo and s.slide is slide
    assert slide.folder.parent == tmp_path / "cache" / "slide-labels"
    before = np.asarray(slide.store.level0[:])
    np.testing.assert_array_equal(before, imported)
    prov = geo.metadata[PROV_KEY]
    assert prov[3].model == "imported from slide.geojson" and prov.classes.names[prov[3].class_id] == "Tumor"
    # a box dragged on object 1 redoes it; object 2, touching its box, keeps every pixel
    viewer.layers.selection.active = s.shapes_layer
    s.shapes_layer.mode = "add_rectangle"
    viewer.scene.camera.center, viewer.scene.camera.zoom = (330, 240), 3.0
    qtbot.wait(100)
    drag_box(viewer, qtbot, (200, 300, 240, 340))
    widget.wait(WAIT)
    after = np.asarray(slide.store.level0[:])
    _only_changed(before, after, 1)
    assert set(np.unique(after).tolist()) == {0, 1, 2, 3, 4} and list(s.objects) == [1]
    assert "redid label 1 (an object imported from slide.geojson)" in widget.status_label.text()
    assert max(r[0] * r[1] for r in level0.reads) < data.shape[0] * data.shape[1] // 4
    # a point clicked inside object 3 adopts it with its tight box and refines it on that box's crop
    s.shapes_layer.selected_data = set()  # (a selected box would name the object the point refines)
    viewer.layers.selection.active = s.points_layer
    s.points_layer.mode = "add"
    viewer.scene.camera.center = (600, 900)
    qtbot.wait(100)
    _click(viewer, qtbot, (590.0, 890.0))
    widget.wait(WAIT)
    third = np.asarray(slide.store.level0[:])
    _only_changed(after, third, 3)
    assert sorted(s.objects) == [1, 3] and s.shapes_layer.nshapes == 2
    widget.undo()
    widget.undo()  # both imported objects come back as they were
    np.testing.assert_array_equal(np.asarray(slide.store.level0[:]), imported)
    assert s.objects == {} and s.shapes_layer.nshapes == 0
    # saved as GeoJSON through the plugin's writer: the imported objects and classes; then the folder goes
    geo.save(str(tmp_path / "out.geojson"), plugin="napari-medsam")
    back = read_geojson(tmp_path / "out.geojson", imported.shape)
    np.testing.assert_array_equal(back.labels, imported)
    assert back.classes == classes
    viewer.layers.remove(geo)
    assert not slide.folder.exists()


def test_ome_zarr_labels_of_a_slide_are_copied_into_a_store_the_widget_corrects(monkeypatch, tmp_path):
    """An OME-Zarr slide with a ``labels/`` group: its labels open as a copy in the widget's own store
    (marked imported, every object's window known), never written into the file."""
    from medsam_core.ngff import write_ngff_image, write_ngff_labels
    from napari_medsam import _slide_plane as SP
    from napari_medsam._import_reader import IMPORT_KEY
    from napari_medsam._reader import PROV_KEY, napari_get_reader

    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 512 * 512)
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    imported = _imported()
    path = write_ngff_image(tmp_path / "slide.ome.zarr", [_tissue()[:, :, 0]], axes="yx")
    write_ngff_labels(path, imported, name="qupath")
    before = sorted(f.stat().st_mtime_ns for f in path.rglob("*") if f.is_file())
    layers = napari_get_reader(str(path))(str(path))
    (data, kwargs, kind), = [t for t in layers if t[2] == "labels"]
    slide = kwargs["metadata"][SP.SLIDE_KEY]
    assert kind == "labels" and kwargs["multiscale"] and kwargs["metadata"][IMPORT_KEY] == "qupath"
    assert slide.folder.parent == tmp_path / "cache" / "slide-labels"
    np.testing.assert_array_equal(np.asarray(data[0][:]), imported)
    assert sorted(slide.extents) == [1, 2, 3, 4] and slide.top_id() == 4
    box = SP.object_box_on_slide(slide, 3)
    rows, cols = np.nonzero(imported == 3)
    np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max(), rows.max()])
    assert kwargs["metadata"][PROV_KEY][3].model == "imported from qupath"
    assert sorted(f.stat().st_mtime_ns for f in path.rglob("*") if f.is_file()) == before  # only read
    assert SP.release(slide) and not slide.folder.exists()  # nothing unsaved: the copy goes with its layer


@pytest.mark.gui
@pytest.mark.slow
def test_a_polygon_on_a_slide_segments_its_window_into_the_labels_on_disk(make_napari_viewer, lite_model,
                                                                          monkeypatch, tmp_path):
    from napari_medsam._prompt_kinds import kinds

    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 512 * 512)
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "cache"))
    data = _tissue()
    level0 = GuardedLevel(data)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    viewer.add_image([level0, data[::2, ::2].copy(), data[::4, ::4].copy()], multiscale=True, rgb=True, name="slide")
    s = widget.session
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    xy = np.c_[900 + 30 * np.cos(t), 600 + 22 * np.sin(t)]
    lid = kinds()["polygon"].segment_polygon(s, xy)
    got = np.asarray(s.slide.store.level0[:])
    ys, xs = np.nonzero(got == lid)
    assert lid == 1 and len(ys) > 200 and set(np.unique(got).tolist()) == {0, 1}
    assert 560 <= ys.min() and ys.max() <= 640 and 860 <= xs.min() and xs.max() <= 940  # near the polygon
    assert max(r[0] * r[1] for r in level0.reads) < data.shape[0] * data.shape[1] // 4
    widget.undo()
    assert not np.asarray(s.slide.store.level0[:]).any()
