"""Fault catalogue, napari side: the labels writer, the reader, and the session on a ViewerModel.

No Qt needed: napari.components.ViewerModel holds the layers, the Qt-free Session acts on it.
A refused action raises a MedSAMError (the widget shows it as a notification) and leaves every
layer and file as it was.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from medsam_core.errors import MedSAMError

from .conftest import digest, tiny_image

napari = pytest.importorskip("napari")


def _opened_image(tmp_path, name="cells.tif"):
    """An image written to disk and opened with the plugin's reader: the layer metadata names its source."""
    from napari_medsam._reader import napari_get_reader

    path = tmp_path / name
    tifffile.imwrite(path, tiny_image())
    data, attrs, kind = napari_get_reader(str(path))()[0]
    return path, data, attrs


@pytest.mark.parametrize(("target", "was_bug"), [("the_source", True), ("hard_link", True), ("a_folder", True),
                                                 ("new_file", False)])
def test_labels_writer_never_overwrites_the_image(target, was_bug, tmp_path):
    """Bug: File > Save Layer of the labels onto the image they were drawn on replaced the image."""
    from napari_medsam._writer import SaveRefused, write_labels_tiff

    src, data, attrs = _opened_image(tmp_path)
    before = digest(src)
    path = {"the_source": lambda: src,
            "hard_link": lambda: (os.link(src, tmp_path / "l.tif"), tmp_path / "l.tif")[1],
            "a_folder": lambda: ((tmp_path / "d.tif").mkdir(), tmp_path / "d.tif")[1],
            "new_file": lambda: tmp_path / "new.tif"}[target]()
    labels = (np.asarray(data) > 300).astype(np.uint8)
    meta = {"metadata": attrs.get("metadata", {}), "scale": attrs.get("scale")}
    if not was_bug:
        assert write_labels_tiff(str(path), labels, meta)[0] == str(path)
    else:
        with pytest.raises(SaveRefused):  # the refusal (an ImageError) as napari shows it, not swallows it
            write_labels_tiff(str(path), labels, meta)
    assert digest(src) == before


@pytest.mark.parametrize("content", [b"", b"II*\x00garbage", b"\x89PNG not really"])
def test_reader_declines_broken_files(content, tmp_path):
    """Held: the npe2 reader returns None (napari tries others) instead of raising."""
    from napari_medsam._reader import napari_get_reader

    path = tmp_path / "broken.tif"
    path.write_bytes(content)
    assert napari_get_reader(str(path)) is None
    (tmp_path / "folder.tif").mkdir()
    assert napari_get_reader(str(tmp_path / "folder.tif")) is None


def _session():
    from napari.components import ViewerModel

    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    viewer = ViewerModel()
    return viewer, Session(viewer, Runner(synchronous=True))


def _layer_state(viewer):
    return [(layer.name, type(layer).__name__, np.asarray(layer.data).copy() if hasattr(layer.data, "shape")
             else None) for layer in viewer.layers]


@pytest.mark.parametrize("case", ["labels_layer_as_image", "labels_of_another_shape", "channel_axis_on_2d"])
def test_session_refusals_leave_the_layers(case):
    viewer, session = _session()
    img = viewer.add_image(tiny_image(), name="img")
    other = viewer.add_labels(np.zeros((10, 10), np.uint8), name="small")
    before = _layer_state(viewer)
    with pytest.raises(MedSAMError):
        if case == "labels_layer_as_image":
            session.set_image_layer(other)
        elif case == "labels_of_another_shape":
            session.set_image_layer(img, labels_layer=other)
        else:
            session.settings.channel_axis = 2
            session.set_image_layer(img)
    after = _layer_state(viewer)
    assert [a[:2] for a in after] == [b[:2] for b in before]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(after, before, strict=True))
    assert session.image_layer is None
