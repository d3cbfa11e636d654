"""Correcting other tools' labels in the widget (issue 17): a Cellpose-style label TIFF and a QuPath
GeoJSON open through the plugin's reader as Labels layers marked imported; a box drawn over one of
their objects (or a point clicked in it) redoes that object only, its neighbours keep every byte, its
provenance says it was imported and then refined, and undo puts the imported object back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from .conftest import REPO_DOCS, big_objects, dice, ref_box
from .person import canvas_point, drag_box, file_open

WAIT = 300_000


# -- without a viewer ---------------------------------------------------------------------------
def test_label_file_names_and_box_iou():
    from napari_medsam._import_reader import is_label_name
    from napari_medsam._import_session import box_iou

    for name in ("img_cp_masks.tif", "img_masks.tif", "a_labels.tif", "b-labels.ome.tif", "c_seg.tiff", "masks.tif"):
        assert is_label_name(name), name
    for name in ("nuclei.tif", "image.ome.tif", "brain.nii.gz", "masked_image.tif"):
        assert not is_label_name(name), name
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou([0, 0, 9, 9], [10, 10, 19, 19]) == 0.0
    assert box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)


def test_source_of_an_adopted_object_names_the_file_or_the_layer():
    from types import SimpleNamespace

    from medsam_core.provenance import Provenance
    from napari_medsam._import_session import source_of

    prov = Provenance()
    prov.record_model_mask(4, np.ones((2, 2), bool), model="imported from qupath.geojson")
    prov.record_model_mask(5, np.ones((2, 2), bool), model="lite_medsam")
    layer = SimpleNamespace(name="painted", metadata={"medsam_provenance": prov})
    assert source_of(layer, 4) == "an object imported from qupath.geojson"
    assert source_of(layer, 5) == source_of(layer, 6) == "an existing object of layer 'painted'"
    layer.metadata["medsam_imported"] = "img_cp_masks.tif"
    assert source_of(layer, 5) == "an object imported from img_cp_masks.tif"


def test_reader_opens_a_cellpose_mask_as_imported_labels_and_an_image_as_image(tmp_path):
    import tifffile

    from napari_medsam._reader import PROV_KEY, napari_get_reader

    lab = np.zeros((40, 50), np.uint16)
    lab[5:15, 5:15], lab[20:30, 30:45] = 3, 7
    tifffile.imwrite(tmp_path / "img_cp_masks.tif", lab)
    tifffile.imwrite(tmp_path / "img.tif", lab)
    ((data, kwargs, kind),) = napari_get_reader(str(tmp_path / "img_cp_masks.tif"))(None)
    assert kind == "labels" and np.array_equal(data, lab)
    prov = kwargs["metadata"][PROV_KEY]
    assert kwargs["metadata"]["medsam_imported"] == "img_cp_masks.tif"
    assert sorted(prov.records) == [3, 7] and prov[7].model == "imported from img_cp_masks.tif"
    assert prov.sync_with_labels(lab) == {"edited": [], "painted": [], "removed": []}  # masks recorded exactly
    assert napari_get_reader(str(tmp_path / "img.tif"))(None)[0][2] == "image"
    tifffile.imwrite(tmp_path / "thresholded_mask.tif", ((lab > 0) * 255).astype(np.uint8))  # a binary mask
    ((data, kwargs, kind),) = napari_get_reader(str(tmp_path / "thresholded_mask.tif"))(None)
    assert kind == "labels" and sorted(np.unique(data).tolist()) == [0, 1, 2]  # one label per object
    assert np.array_equal(data > 0, lab > 0) and len(kwargs["metadata"][PROV_KEY]) == 2
    tifffile.imwrite(tmp_path / "bool_mask.tif", lab > 0)  # numpy's own 0/1 mask: was opened as an image
    ((data, kwargs, kind),) = napari_get_reader(str(tmp_path / "bool_mask.tif"))(None)
    assert kind == "labels" and sorted(np.unique(data).tolist()) == [0, 1, 2]


def test_geojson_reader_without_a_viewer_uses_the_polygons_extent(tmp_path):
    from medsam_core.geojson import write_geojson
    from napari_medsam._reader import PROV_KEY, napari_get_reader

    lab = np.zeros((60, 80), np.uint32)
    lab[10:20, 10:25], lab[40:55, 60:75] = 1, 2
    path = write_geojson(tmp_path / "cells.geojson", lab, {1: "Tumor", 2: "Stroma"})
    ((data, kwargs, kind),) = napari_get_reader(str(path))(None)
    assert kind == "labels" and data.shape == (55, 75)  # the polygons' extent: no image open
    np.testing.assert_array_equal(data, lab[:55, :75])
    prov = kwargs["metadata"][PROV_KEY]
    assert {prov.classes.names[r.class_id] for r in prov.records.values()} == {"Tumor", "Stroma"}
    assert napari_get_reader(str(tmp_path / "missing.geojson")) is None
    huge = tmp_path / "slide.geojson"  # a whole slide's polygons are not rasterised in memory
    huge.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": '
                    '"Polygon", "coordinates": [[[90000, 90000], [90010, 90000], [90010, 90010], [90000, 90000]]]}}]}')
    assert napari_get_reader(str(huge))(None) is None


# -- a person in a real viewer, real weights ----------------------------------------------------
@pytest.fixture
def cellpose_files(dsb2018, tmp_path):
    """cells.tif + cells_cp_masks.tif (a Cellpose-style label image with one object 4 px too big)."""
    import tifffile

    image, ref = dsb2018
    image, ref = np.ascontiguousarray(image[:256, :256]), ref[:256, :256].astype(np.uint16)
    lid = big_objects(ref, 3)[1]
    imported = ref.copy()
    imported[ndimage.binary_dilation(ref == lid, iterations=4) & (ref == 0)] = lid
    tifffile.imwrite(tmp_path / "cells.tif", image)
    tifffile.imwrite(tmp_path / "cells_cp_masks.tif", imported)
    return tmp_path, image, ref, imported, lid


def _widget(viewer, model):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(model)
    return widget


def _only_changed(before, after, lid):
    diff = before != after
    assert diff.any()
    assert set(np.unique(before[diff]).tolist()) <= {0, lid} and set(np.unique(after[diff]).tolist()) <= {0, lid}
    np.testing.assert_array_equal(np.where(before == lid, 0, before), np.where(after == lid, 0, after))


@pytest.mark.gui
@pytest.mark.slow
def test_cellpose_labels_opened_and_one_object_redone_with_a_drawn_box(make_napari_viewer, qtbot, lite_model,
                                                                        cellpose_files):
    from napari_medsam._reader import PROV_KEY

    folder, image, ref, imported, lid = cellpose_files
    viewer = make_napari_viewer(show=True)
    file_open(viewer, qtbot, folder / "cells.tif")
    file_open(viewer, qtbot, folder / "cells_cp_masks.tif")
    masks = viewer.layers["cells_cp_masks"]
    assert type(masks).__name__ == "Labels" and np.array_equal(masks.data, imported)
    widget = _widget(viewer, lite_model)  # opened after the files: it targets the imported labels
    widget.wait(WAIT)
    s = widget.session
    assert s.labels_layer.name == "cells_cp_masks" and "MedSAM labels" not in viewer.layers
    viewer.layers.selection.active = s.shapes_layer
    s.shapes_layer.mode = "add_rectangle"
    drag_box(viewer, qtbot, ref_box(ref, lid, 2))
    widget.wait(WAIT)
    after = np.asarray(masks.data).copy()
    _only_changed(imported, after, lid)  # every other object byte for byte as imported
    assert set(np.unique(after).tolist()) == set(np.unique(imported).tolist())  # no new object
    assert dice(after == lid, ref == lid) > dice(imported == lid, ref == lid) + 0.05  # measured 0.76 -> 0.91
    assert list(s.objects) == [lid] and s.shapes_layer.nshapes == 1
    rec = masks.metadata[PROV_KEY][lid]
    assert "imported from cells_cp_masks.tif" in rec.model and rec.model.startswith("lite_medsam, refining")
    other = next(k for k in masks.metadata[PROV_KEY].records if k != lid)
    assert masks.metadata[PROV_KEY][other].model == "imported from cells_cp_masks.tif"
    assert f"redid label {lid} (an object imported from cells_cp_masks.tif)" in widget.status_label.text()
    _shot(viewer, widget, qtbot, ref_box(ref, lid, 2))
    # a box over empty background still makes a new object
    yy, xx = np.nonzero(ndimage.binary_erosion(imported == 0, iterations=14))
    y, x = int(yy[len(yy) // 2]), int(xx[len(xx) // 2])
    drag_box(viewer, qtbot, (x - 8, y - 8, x + 8, y + 8))
    widget.wait(WAIT)
    assert sorted(s.objects) == [lid, int(imported.max()) + 1]
    # a box that only grazes an imported object (IoU < 0.3) is a new object; that object keeps its pixels
    nb = next(k for k in big_objects(ref, 8) if k != lid)
    x0, y0, x1, y1 = ref_box(imported, nb, 0)
    graze = [x1 - (x1 - x0) // 3, y0, x1 + (x1 - x0), y1]
    (new_id,) = widget.segment_boxes([graze])
    assert new_id == int(imported.max()) + 2 and np.array_equal(masks.data == nb, imported == nb)
    widget.undo()
    widget.undo()
    widget.undo()  # the imported object comes back, with its record; its box goes
    np.testing.assert_array_equal(masks.data, imported)
    assert masks.metadata[PROV_KEY][lid].model == "imported from cells_cp_masks.tif"
    assert s.objects == {} and s.shapes_layer.nshapes == 0


def _shot(viewer, widget, qtbot, box):
    """docs/images/import_refine_1280x800.png: the imported masks with one object redone."""
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1280, 800)
    qtbot.wait(100)
    viewer.scene.camera.center = ((box[1] + box[3]) / 2, (box[0] + box[2]) / 2)
    viewer.scene.camera.zoom = 5.0
    viewer.layers.selection.active = widget.session.shapes_layer
    qtbot.wait(300)
    assert win.grab().save(str(REPO_DOCS / "images" / "import_refine_1280x800.png"))


def _click(viewer, qtbot, yx):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    native = viewer.window._qt_viewer.canvas.native
    p = canvas_point(viewer, yx)
    QTest.mouseMove(native, p)
    qtbot.wait(20)
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, p)
    qtbot.wait(50)


@pytest.mark.gui
@pytest.mark.slow
def test_qupath_geojson_opened_and_one_object_refined_with_a_point(make_napari_viewer, qtbot, lite_model,
                                                                   cellpose_files):
    from medsam_core.geojson import write_geojson
    from napari_medsam._reader import PROV_KEY

    folder, image, ref, imported, lid = cellpose_files
    classes = {int(k): ("Tumor" if k % 2 else "Stroma") for k in np.unique(imported) if k}
    write_geojson(folder / "cells.geojson", imported, classes)
    viewer = make_napari_viewer(show=True)
    file_open(viewer, qtbot, folder / "cells.tif")
    widget = _widget(viewer, lite_model)
    widget.wait(WAIT)
    file_open(viewer, qtbot, folder / "cells.geojson")  # the image is open: the polygons go on its grid
    geo = viewer.layers["cells.geojson"]
    assert type(geo).__name__ == "Labels" and geo.data.shape == image.shape
    before = np.asarray(geo.data).copy()
    assert set(np.unique(before).tolist()) == set(np.unique(imported).tolist())
    prov = geo.metadata[PROV_KEY]
    assert prov.classes.names[prov[lid].class_id] == classes[lid]
    s = widget.session
    assert s.labels_layer.name == "cells.geojson"  # opened after the widget: it becomes the target
    assert widget.labels_combo.currentText() == "cells.geojson"
    widget.toggle_negative()  # a negative point on the part that grew into the background
    grown = (before == lid) & (ref != lid)
    dist = ndimage.distance_transform_edt(grown)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    viewer.layers.selection.active = s.points_layer
    s.points_layer.mode = "add"
    _click(viewer, qtbot, (float(y), float(x)))
    widget.wait(WAIT)
    after = np.asarray(geo.data).copy()
    _only_changed(before, after, lid)
    assert dice(after == lid, ref == lid) > dice(before == lid, ref == lid) + 0.05  # measured 0.76 -> 0.90
    assert list(s.objects) == [lid] and s.shapes_layer.nshapes == 1  # adopted: its tight box is its box
    assert "imported from cells.geojson" in prov[lid].model
    assert prov.classes.names[prov[lid].class_id] == classes[lid]  # its class stays
    widget.undo()
    np.testing.assert_array_equal(geo.data, before)
    assert s.objects == {} and s.shapes_layer.nshapes == 0 and len(s.points_layer.data) == 0
    assert prov[lid].model == "imported from cells.geojson"
