"""npe2 reader, writers and sample data, called directly (no viewer needed)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_medsam._reader import META_KEY, napari_get_reader
from napari_medsam._sample_data import nuclei_sample, nuclei_sample_with_reference
from napari_medsam._writer import SaveRefused, write_labels_nifti, write_labels_tiff


def oblique_affine():
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0.0, 0.0, 2.0], [-0.7, 0.0, 0.0], [0.0, 0.7, 0.0]])  # axes permuted, a flip
    aff[:3, 3] = [5.0, 60.0, -3.0]
    return aff


@pytest.fixture
def nifti_file(tmp_path):
    xyz = np.random.default_rng(0).integers(0, 500, (20, 16, 6)).astype(np.int16)  # (x, y, z)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(xyz, oblique_affine()), path)
    return path, xyz


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "bad.tif").write_bytes(b"garbage" * 20)
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage" * 20)
    for p in ["a.png", "bad.tif", "bad.nii.gz", "missing.tif"]:
        assert napari_get_reader(str(tmp_path / p)) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(str(tmp_path)) is None


def test_reader_tiff_scale_from_imagej_spacing(tmp_path):
    vol = np.random.default_rng(1).integers(0, 999, (4, 10, 12)).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 0.26, 1 / 0.26),
                     metadata={"spacing": 0.29, "unit": "um", "axes": "ZYX"})
    reader = napari_get_reader(str(path))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "cells"
    np.testing.assert_array_equal(data, vol)
    assert kwargs["scale"] == pytest.approx([0.29, 0.26, 0.26])
    assert kwargs["metadata"][META_KEY]["spacing"] == pytest.approx([0.29, 0.26, 0.26])


def test_reader_nifti_zyx_with_affine_in_metadata(nifti_file):
    path, xyz = nifti_file
    [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert data.shape == (6, 16, 20)
    np.testing.assert_array_equal(data, xyz.T)
    assert kwargs["name"] == "ct"
    assert kwargs["scale"] == pytest.approx([2.0, 0.7, 0.7])
    np.testing.assert_allclose(kwargs["metadata"][META_KEY]["affine"], oblique_affine())


def test_reader_multichannel_tiff_splits_channels(tmp_path):
    img = np.random.default_rng(2).integers(0, 999, (2, 8, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "mc.tif", img, imagej=True, metadata={"axes": "CYX"})
    [(data, kwargs, _)] = napari_get_reader(str(tmp_path / "mc.tif"))(None)
    assert data.shape == (8, 9, 2) and kwargs["channel_axis"] == 2
    assert len(kwargs["name"]) == 2 and kwargs["scale"] == [1.0, 1.0]


def test_nifti_labels_written_from_layer_overlay_the_image(tmp_path, nifti_file):
    path, _ = nifti_file
    [(data, kwargs, _)] = napari_get_reader(str(path))(str(path))
    labels = np.zeros(data.shape, np.int32)
    labels[2, 3:7, 4:9] = 1
    labels[4, 10:12, 1:3] = 300  # needs uint16
    layer_meta = {"scale": kwargs["scale"], "metadata": kwargs["metadata"], "name": "labels"}
    written = write_labels_nifti(str(tmp_path / "labels.nii.gz"), labels, layer_meta)
    assert written == [str(tmp_path / "labels.nii.gz")]
    back = nib.load(written[0])
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-5)
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels.T)  # file order (x, y, z)


def test_tiff_writer_uses_layer_scale(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:5, 2:5] = 7
    out = write_labels_tiff(str(tmp_path / "l.tif"), labels, {"scale": (2.0, 0.5, 0.25), "metadata": {}})
    with tifffile.TiffFile(out[0]) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.25)
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_writer_without_matching_image_meta_falls_back_to_scale(tmp_path, nifti_file):
    path, _ = nifti_file
    [(_, kwargs, _)] = napari_get_reader(str(path))(str(path))
    wrong_shape = np.zeros((6, 16, 19), np.uint8)
    wrong_shape[0, 0, 0] = 1
    out = write_labels_nifti(str(tmp_path / "w.nii"), wrong_shape,
                             {"scale": (2.0, 0.7, 0.7), "metadata": kwargs["metadata"]})
    np.testing.assert_allclose(np.diag(nib.load(out[0]).affine), [0.7, 0.7, 2.0, 1.0])


def test_writers_refuse_bad_input_and_write_nothing(tmp_path):
    with pytest.raises(SaveRefused, match=".tif"):
        write_labels_tiff(str(tmp_path / "l.png"), np.zeros((4, 4), np.uint8), {})
    with pytest.raises(SaveRefused, match="2D"):
        write_labels_nifti(str(tmp_path / "l.nii"), np.zeros((2, 2, 4, 4), np.uint8), {})
    with pytest.raises(SaveRefused, match=">= 0"):
        write_labels_tiff(str(tmp_path / "l.tif"), -np.ones((4, 4), np.int32), {})
    assert not list(tmp_path.iterdir())


def test_save_layer_shows_why_the_labels_were_not_saved(tmp_path, make_napari_viewer):
    """Through napari's own save path (File > Save Layer): the reason reaches the user. A ValueError
    from a writer is read by napari as "not a valid writer" and the reason is lost."""
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((2, 3, 8, 8), np.uint8), name="t_z_labels")
    with pytest.raises(SaveRefused, match=r"l.nii.gz was not saved: only 2D \(Y, X\) or 3D \(Z, Y, X\) labels"):
        viewer.layers.save(str(tmp_path / "l.nii.gz"), plugin="napari-medsam")
    assert not list(tmp_path.iterdir())


def test_labels_opened_from_a_file_save_back_over_it(tmp_path, make_napari_viewer):
    """Corrections to labels reopened from their file (a MedSAM save with its sidecar, or Cellpose's
    masks) could not be saved over that file: "writing it would destroy the input". Labels drawn on
    an image still never replace the image."""
    from medsam_core.errors import OutputError

    lab = np.zeros((40, 50), np.uint16)
    lab[5:15, 5:20], lab[25:35, 30:45] = 1, 2
    masks = tmp_path / "cells_cp_masks.tif"
    tifffile.imwrite(masks, lab)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(masks), plugin="napari-medsam")
    assert type(layer).__name__ == "Labels"
    layer.data[layer.data == 2] = 0  # the person erases a wrong object
    viewer.layers.selection = {layer}
    viewer.layers.save(str(masks), selected=True, plugin="napari-medsam")
    np.testing.assert_array_equal(tifffile.imread(masks), np.where(lab == 2, 0, lab))
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.arange(40 * 50, dtype=np.uint16).reshape(40, 50))
    (img_layer,) = viewer.open(str(image), plugin="napari-medsam")
    drawn = viewer.add_labels(lab.astype(np.int32), metadata=dict(img_layer.metadata))  # as the widget makes it
    with pytest.raises((SaveRefused, OutputError), match="input"):
        viewer.layers.selection = {drawn}
        viewer.layers.save(str(image), selected=True, plugin="napari-medsam")
    assert tifffile.imread(image).max() == 40 * 50 - 1


def test_opening_a_damaged_file_shows_why(tmp_path, make_napari_viewer):
    """The reader claimed the file (its header is fine), then returned None on a read error: napari
    said only that the plugin "returned no data"; the reason went to the terminal's log."""
    from napari_medsam._reader import ReadRefused

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.arange(16 * 32 * 32, dtype=np.uint16).reshape(16, 32, 32), imagej=True,
                     metadata={"axes": "ZYX"})
    path.write_bytes(path.read_bytes()[: 20_000])  # an interrupted copy
    viewer = make_napari_viewer()
    with pytest.raises(ReadRefused, match="an ImageJ stack of 16 images, but only 1 could be read"):
        viewer.open(str(path), plugin="napari-medsam")
    assert len(viewer.layers) == 0


def test_sample_data_layers():
    [(image, kwargs, kind)] = nuclei_sample()
    assert kind == "image" and image.shape == (256, 256) and kwargs["name"] == "nuclei (DSB2018)"
    layers = nuclei_sample_with_reference()
    assert [k for *_, k in layers] == ["image", "labels"]
    assert layers[1][0].max() == 25
