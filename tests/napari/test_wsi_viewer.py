"""Slides in napari: pyramidal TIFF and OME-Zarr open as lazy multiscale layers through the plugin's
reader, labels are saved as OME-Zarr (into the slide's labels/) and GeoJSON, and the MedSAM widget
segments a box drawn on a multiscale RGB layer. Pyramids are small (a few MB) and made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from medsam_core import ngff

from .conftest import rect


def _tissue(h=1024, w=1536):
    from skimage.data import immunohistochemistry

    return np.ascontiguousarray(np.tile(immunohistochemistry(), (-(-h // 512), -(-w // 512), 1))[:h, :w])


@pytest.fixture
def slide_zarr(tmp_path):
    data = _tissue()
    path = ngff.write_ngff_image(tmp_path / "slide.ome.zarr", [data, data[::2, ::2], data[::4, ::4]], axes="yxc",
                                 spacing=(0.5, 0.5), chunk=256)
    return path, data


@pytest.fixture
def slide_tiff(tmp_path):
    data = _tissue()
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=(256, 256), photometric="rgb", compression="zlib")
        tw.write(data, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **kw)
        tw.write(data[::2, ::2], subfiletype=1, **kw)
        tw.write(data[::4, ::4], subfiletype=1, **kw)
    return path, data


def test_reader_gives_lazy_multiscale_rgb_layers_and_labels(slide_zarr, slide_tiff):
    from napari_medsam._reader import PYRAMID_KEY, napari_get_reader

    path, data = slide_zarr
    labels = np.zeros(data.shape[:2], np.uint16)
    labels[100:200, 300:420] = 5
    ngff.write_ngff_labels(path, labels, name="nuclei", chunk=256)
    layers = napari_get_reader(str(path))(str(path))
    (img, kw, kind), (lab, lkw, lkind) = layers
    assert kind == "image" and kw["multiscale"] and kw["rgb"] and kw["scale"] == [0.5, 0.5]
    assert [lv.shape for lv in img] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
    assert not isinstance(img[0], np.ndarray)  # lazy: a view over the zarr array
    assert np.array_equal(img[0][100:110, 200:230], data[100:110, 200:230])
    assert kw["metadata"][PYRAMID_KEY].kind == "ome-zarr"
    assert lkind == "labels" and lkw["multiscale"] and np.array_equal(np.asarray(lab[0][:]), labels)
    tpath, tdata = slide_tiff
    ((timg, tkw, _),) = napari_get_reader(str(tpath))(str(tpath))
    assert tkw["rgb"] and tkw["scale"] == [0.25, 0.25] and len(timg) == 3
    assert np.array_equal(timg[1][10:20, 30:40], tdata[::2, ::2][10:20, 30:40])


def test_reader_declines_folders_and_broken_stores_without_raising(tmp_path):
    from napari_medsam._reader import napari_get_reader

    (tmp_path / "plain").mkdir()
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / ".zattrs").write_text("{not json")
    (bad / ".zgroup").write_text('{"zarr_format": 2}')
    assert napari_get_reader(str(tmp_path / "plain")) is None
    assert napari_get_reader(str(bad)) is None
    assert napari_get_reader(str(tmp_path / "missing.zarr")) is None


def test_writers_put_labels_into_the_slide_and_geojson(slide_zarr, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_medsam._writer import write_labels_geojson, write_labels_zarr

    path, data = slide_zarr
    labels = np.zeros(data.shape[:2], np.int32)
    labels[10:60, 20:90], labels[500:530, 700:760] = 1, 2
    meta = {"name": "MedSAM labels", "scale": [0.5, 0.5], "metadata": {}}
    (written,) = write_labels_zarr(str(path), [labels, labels[::2, ::2]], meta)
    assert written.endswith("labels/MedSAM_labels") and ngff.label_names(path) == ["MedSAM_labels"]
    node = next(n for n in Reader(parse_url(str(path)))() if n.metadata.get("name") == "MedSAM_labels")
    assert np.array_equal(np.asarray(node.data[0]), labels)
    (gj,) = write_labels_geojson(str(tmp_path / "labels"), labels, meta)
    feats = json.loads(open(gj).read())["features"]
    assert [f["properties"]["medsam_label"] for f in feats] == [1, 2]


@pytest.mark.gui
def test_viewer_opens_slide_lazily_and_shows_it(make_napari_viewer, slide_zarr, qtbot):
    path, data = slide_zarr
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(path), plugin="napari-medsam")
    (layer,) = layers
    assert layer.multiscale and layer.rgb and tuple(layer.level_shapes[0]) == (1024, 1536)
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10  # tissue is drawn, not a black canvas


@pytest.mark.gui
@pytest.mark.slow
def test_widget_segments_a_box_on_a_multiscale_rgb_layer(make_napari_viewer, slide_zarr, lite_model, tmp_path):
    from medsam_core import Predictor, roi

    path, data = slide_zarr
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-medsam")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    widget.set_image_layer(layer)
    assert tuple(widget.labels_layer.data.shape) == (1024, 1536)
    box = np.array([300.0, 200.0, 340.0, 236.0])  # XYXY level-0 pixels
    (lid,) = widget.segment_boxes([box])
    got = np.asarray(widget.labels_layer.data) == lid
    assert 50 < got.sum() < 41 * 37
    (expected,) = roi.predict_boxes(Predictor(lite_model), data, box[None])
    np.testing.assert_array_equal(got, expected.full(data.shape[:2]))  # same as the scripting API
    np.testing.assert_allclose(widget.session.shapes_layer.data[0], rect(box) * 1, atol=1e-6)
