"""One box on an MRI volume, as a person does it (issue 12): File > Open a NIfTI, Plugins > MedSAM, go
to the structure's largest slice, drag a box on the canvas, 3D tab > Segment in 3D; the stop of each
direction is listed with a button that shows its slice; File > Save writes labels that overlay the
image in the NIfTI's own orientation. Then docs/3d.md's advice for a structure that bends out of the
start box: tick "New box = key box of the last 3D object", drag a box half way to the structure's far
end, past where the walk stopped, and Segment in 3D again. Real viewer, real weights, the colin27 T1
volume."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from .conftest import REPO_DOCS, dice, ref_box
from .person import drag_box, file_open

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 900_000  # ms: every walked slice is encoded on demand; a loaded 2-core CPU takes seconds each
STRUCTURE = "Amygdala_L"


def colin27_nifti(tmp_path, structure: str):
    """colin27 cut to ``structure``'s slices +-4 (fewer encodes), written as a NIfTI (x, y, z) file
    with 1 mm voxels and an oblique affine, and the reference mask in the reader's (z, y, x) order."""
    import nibabel as nib

    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "mri_t1_colin27_aal_dev.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: CI provides ../shared beside the checkout")
    with np.load(path) as d:
        names = [str(n) for n in d["label_names"]]
        image, labels = d["image"], d["labels"]
    ref = labels == 1 + names.index(structure)
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    cut = slice(max(0, zs[0] - 4), zs[-1] + 5)
    image, ref = np.ascontiguousarray(image[cut]), ref[cut]
    out = tmp_path / "colin27_t1.nii.gz"
    # a scanner's affine: axes flipped (LPS), rotated 12 degrees in-plane, origin off the corner; the
    # identity would equal the writer's fallback and let labels saved without the image's affine pass
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    affine = np.array([[-c, s, 0, 90], [-s, -c, 0, 126], [0, 0, 1, -72], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), affine), str(out))
    return out, image, ref


@pytest.fixture
def mri(tmp_path):
    return colin27_nifti(tmp_path, STRUCTURE)


def drag_and_walk(viewer, widget, qtbot, ref, z):
    """Show slice ``z``, drag the reference box (+ 3 px) on the canvas (its slice is segmented in 2D),
    select it, 3D tab > Segment in 3D; returns a copy of the labels once the walk has finished."""
    n = widget.shapes_layer.nshapes
    viewer.dims.set_current_step(0, z)
    qtbot.wait(100)
    viewer.layers.selection.active = widget.shapes_layer
    widget.shapes_layer.mode = "add_rectangle"
    drag_box(viewer, qtbot, ref_box(ref[z], True, 3))
    widget.wait(WAIT)
    assert widget.shapes_layer.nshapes == n + 1  # the drag made one box
    assert (widget.labels_layer.data[z] != 0).any()  # and segmented its slice
    widget.shapes_layer.selected_data = {n}
    widget.tabs.setCurrentIndex([widget.tabs.tabText(i) for i in range(widget.tabs.count())].index("3D"))
    widget.volume_panel.segment_btn.click()
    widget.wait(WAIT)
    assert not widget.volume.running
    return np.asarray(widget.labels_layer.data).copy()


def test_one_box_on_an_mri_structure_by_mouse(make_napari_viewer, qtbot, lite_model, mri, tmp_path):
    import nibabel as nib

    path, image, ref = mri
    viewer = make_napari_viewer(show=True)
    file_open(viewer, qtbot, path)
    layer = viewer.layers["colin27_t1"]
    np.testing.assert_array_equal(np.asarray(layer.data), image)  # the reader's (z, y, x) order
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    widget.wait(WAIT)
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    labels = drag_and_walk(viewer, widget, qtbot, ref, z)
    assert set(np.unique(labels)) == {0, 1}  # one 3D object, one label id
    walked = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    assert len(walked) >= 8 and walked[0] < z < walked[-1]  # it went both ways from the box's slice
    d = dice(labels == 1, ref)
    # bench_3d: the walk 0.51 on this structure, the per-slice oracle (reference box on every slice) 0.57
    assert d >= 0.35, d
    bar = widget.volume_panel.progress
    assert bar.value() == bar.maximum() > 1 and bar.format().endswith("slices, done")
    stops = widget.volume.stops(1)
    rows = widget.volume_panel.stops.rows
    assert [label.text() for label, _ in rows] == [f"object 1 {s}: {stops[s]}" for s in ("up", "down")]
    for (_, button), s in zip(rows, ("up", "down"), strict=True):
        button.click()
        assert viewer.dims.current_step[0] == stops[s].slice
    _shot(viewer, widget, qtbot, z, ref_box(ref[z], True, 3))
    # File > Save of the labels as NIfTI: same orientation and affine as the opened file
    saved = tmp_path / "colin27_labels.nii.gz"
    viewer.layers.selection.active = widget.labels_layer
    viewer.layers.save(str(saved), selected=True, plugin="napari-medsam")
    back = nib.load(str(saved))
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), labels)
    np.testing.assert_array_equal(back.affine, nib.load(str(path)).affine)


def _shot(viewer, widget, qtbot, z, box):
    """docs/images/volume_mri_1280x800.png: the 3D tab with both stops, the structure on its slice."""
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1280, 800)
    viewer.dims.set_current_step(0, z)
    qtbot.wait(100)
    viewer.scene.camera.center = ((box[1] + box[3]) / 2, (box[0] + box[2]) / 2)
    viewer.scene.camera.zoom = 4.0
    widget.wait(WAIT)  # the slice shown again is embedded for 2D boxes (from the cache after the walk)
    qtbot.waitUntil(lambda: "computing" not in widget.status_label.text(), timeout=WAIT)
    qtbot.wait(300)
    assert win.grab().save(str(REPO_DOCS / "images" / "volume_mri_1280x800.png"))


def test_a_key_box_past_the_walk_extends_a_structure_that_bends(make_napari_viewer, qtbot, lite_model, tmp_path):
    """ParaHippocampal_R leaves its start box about 12 slices above the largest slice (docs/3d.md):
    the one-box walk stops there, a dozen slices short of its end. The key-box checkbox makes a box
    drawn past that stop a key box of the same object, and the walk goes on through it."""
    path, image, ref = colin27_nifti(tmp_path, "ParaHippocampal_R")
    viewer = make_napari_viewer(show=True)
    file_open(viewer, qtbot, path)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    widget.wait(WAIT)
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    one = drag_and_walk(viewer, widget, qtbot, ref, z)
    walked = np.flatnonzero((one == 1).any(axis=(1, 2)))
    assert walked[-1] < zs[-1] - 4, (walked, zs)  # the one-box walk stops short of the end (measured: 26 vs 38)
    key_z = int(round((walked[-1] + zs[-1]) / 2))  # half way from where the walk stopped to the far end
    d_one = dice(one == 1, ref)
    qtbot.mouseClick(widget.volume_panel.key_check, Qt.MouseButton.LeftButton)
    assert widget.volume_panel.key_check.isChecked() and widget.volume.key_mode
    two = drag_and_walk(viewer, widget, qtbot, ref, key_z)
    assert set(np.unique(two)) == {0, 1}  # the box joined object 1, no second object
    assert sorted(widget.shapes_layer.features["label_id"].tolist()) == [-1, 1]  # its key box
    extended = np.flatnonzero((two == 1).any(axis=(1, 2)))
    assert extended[-1] > key_z and extended[0] == walked[0]  # on through the key; the down side kept
    # the down side as it was (the slice vote reaches 2 slices, so z - 1 may move with the new up side)
    np.testing.assert_array_equal(two[: z - 1], one[: z - 1])
    d_two = dice(two == 1, ref)
    # core, same crop: 0.467 -> 0.597 (key on slice 32; without `follow` the walk stopped at 24 and a key
    # on 25 gave 0.489 -> 0.578)
    assert d_two >= d_one + 0.05, (d_one, d_two)
    stops = widget.volume.stops(1)
    assert [label.text() for label, _ in widget.volume_panel.stops.rows] == [
        f"object 1 {s}: {stops[s]}" for s in ("up", "down")]
    assert stops["up"].slice > key_z
