"""Image series in the real widget: autosave per image, resume, output folder checks, background prefetch."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from medsam_core.provenance import Provenance
from medsam_core.samples import nuclei
from napari_medsam._reader import PROV_KEY

from .conftest import big_objects, dice, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def folder(tmp_path):
    """3 small crops of the shipped sample as TIFFs, and the reference labels of the first."""
    sample = nuclei()
    src = tmp_path / "images"
    src.mkdir()
    crops = [(slice(0, 128), slice(0, 128)), (slice(128, 256), slice(0, 128)), (slice(0, 128), slice(128, 256))]
    for k, crop in enumerate(crops):
        tifffile.imwrite(src / f"img{k}.tif", sample.image[crop])
    return src, sample.image[crops[0]], sample.labels[crops[0]]


def test_series_autosave_resume_and_prefetch(open_widget, folder, tmp_path):
    src, image0, ref0 = folder
    out = tmp_path / "labels"
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    files_before = sorted(p.name for p in src.iterdir())
    with pytest.raises(Exception, match="output folder"):
        widget.open_series(src, src)  # never the input folder
    assert not out.exists() and widget.series.series is None

    assert widget.open_series(src, out) == 0
    layer = widget.session.image_layer
    np.testing.assert_array_equal(layer.data, image0)
    assert widget.series_panel.image_combo.count() == 3
    widget.series.wait_prefetch()  # image 1's embedding computed in the background meanwhile
    obj = big_objects(ref0, 1, min_area=60)[0]
    (lid,) = widget.segment_boxes([ref_box(ref0, obj)])
    drawn = widget.labels_layer.data.copy()
    assert dice(drawn == lid, ref0 == obj) >= 0.7

    calls = widget.session.encoder_calls
    assert widget.next_image() == 1
    saved = tifffile.imread(out / "img0.tif")
    np.testing.assert_array_equal(saved, drawn)  # labels of image 0 written on moving on
    prov = Provenance.load(out / "img0.tif", saved)  # with the provenance sidecar beside them
    assert sorted(prov.records) == [lid] and prov[lid].prompts[0].kind == "box" and prov.events
    assert widget.session.image_layer.data.shape == (128, 128)
    assert not widget.labels_layer.data.any()  # image 1 starts empty
    assert len([ly for ly in viewer.layers if ly.name.startswith("MedSAM labels")]) == 1
    # image 0's layers gone, image 1's shown: the labels drawn into are the viewer's
    assert [ly.name for ly in viewer.layers if type(ly).__name__ in ("Image", "Labels")] == \
        ["MedSAM series", "MedSAM labels"], [ly.name for ly in viewer.layers]
    assert widget.session.labels_layer in viewer.layers and widget.session.image_layer in viewer.layers
    widget.segment_boxes([[30, 30, 60, 60]])  # decoding on image 1: a cache hit thanks to the prefetch
    assert widget.session.encoder_calls == calls
    assert widget.series_panel.image_combo.itemText(0).startswith("\u2713")
    assert sorted(p.name for p in src.iterdir()) == files_before  # inputs untouched

    # a new widget (a later session) resumes at the first image without labels: image 1
    viewer2, widget2 = open_widget()
    widget2.runner.synchronous = True
    assert widget2.open_series(src, out) == 1
    assert widget2.previous_image() == 0  # done images open with their saved labels
    np.testing.assert_array_equal(widget2.labels_layer.data, drawn)
    assert sorted(widget2.labels_layer.metadata[PROV_KEY].records) == [lid]  # provenance read back too


def test_series_shows_and_saves_volumes_and_channels_as_the_reader_does(open_widget, tmp_path):
    """A scan with 3 mm slices and an oblique affine is shown at its spacing and its labels are saved
    with its affine; a 2-channel TIFF is one 2D image with a channel slider, not a stack of 160 x 2
    planes."""
    import nibabel as nib

    sample = nuclei()
    src = tmp_path / "images"
    src.mkdir()
    vol = np.stack([sample.image[k * 8:k * 8 + 96, :96] for k in range(4)])  # (z, y, x)
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    affine = np.array([[-c * 0.9, s * 0.9, 0, 90], [-s * 0.9, -c * 0.9, 0, 126], [0, 0, 3, -72], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), affine), src / "a_scan.nii.gz")
    two = np.stack([sample.image[:96, :112], sample.image[:96, :112][:, ::-1]])  # (C, Y, X)
    tifffile.imwrite(src / "b_two_channels.tif", two, imagej=True, metadata={"axes": "CYX"})
    out = tmp_path / "labels"
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    widget.open_series(src, out)
    layer = widget.session.image_layer
    assert layer.data.shape == (4, 96, 96)
    np.testing.assert_allclose(layer.scale, [3.0, 0.9, 0.9], rtol=1e-6)
    np.testing.assert_allclose(widget.labels_layer.scale, [3.0, 0.9, 0.9], rtol=1e-6)
    viewer.dims.set_current_step(0, 1)
    obj = big_objects(sample.labels[8:104, :96], 1, min_area=60)[0]
    widget.segment_boxes([ref_box(sample.labels[8:104, :96], obj)], z=1)
    drawn = np.asarray(widget.labels_layer.data).copy()
    widget.next_image()
    saved = nib.load(out / "a_scan.nii.gz")
    np.testing.assert_allclose(saved.affine, affine, atol=1e-5)  # overlays the scan in any viewer
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), drawn)
    layer = widget.session.image_layer
    assert layer.data.shape == (2, 96, 112) and widget.labels_layer.data.shape == (96, 112)
    obj = big_objects(sample.labels[:96, :112], 1, min_area=60)[0]
    (lid,) = widget.segment_boxes([ref_box(sample.labels[:96, :112], obj)])
    assert widget.last_error is None
    assert dice(np.asarray(widget.labels_layer.data) == lid, sample.labels[:96, :112] == obj) >= 0.7
