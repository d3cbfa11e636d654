"""``segment_slide`` / ``medsam slide``: boxes on a slide, labels chunk by chunk into OME-Zarr, GeoJSON out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsam_core import ImageError, PromptError, ngff
from medsam_core.geojson import read_geojson, write_geojson
from medsam_core.labelstore import LabelStore
from medsam_core.slide import boxes_from_geojson, segment_slide

from .roi_fakes import BoxFillPredictor


@pytest.fixture
def slide(tmp_path):
    from skimage.data import immunohistochemistry

    data = np.ascontiguousarray(np.tile(immunohistochemistry(), (2, 3, 1)))  # 1024 x 1536 RGB
    path = ngff.write_ngff_image(tmp_path / "slide.ome.zarr", [data, data[::2, ::2]], axes="yxc", spacing=(0.5, 0.5),
                                 chunk=256)
    return path, data


def test_boxes_go_into_the_slides_labels_and_geojson(slide, tmp_path):
    path, data = slide
    boxes = np.array([[100, 100, 130, 140], [1000, 700, 1040, 730], [1500, 1000, 1535, 1023]], float)
    pred = BoxFillPredictor()
    res = segment_slide(pred, path, boxes, roi_mode="roi", geojson=tmp_path / "o.geojson",
                        classes={1: "Tumor", 2: "Stroma"})
    assert res.labels == path / "labels" / "medsam" and ngff.label_names(path) == ["medsam"]
    labels = np.asarray(ngff.open_ngff(path, label="medsam").levels[0][:])
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int), start=1):
        assert (labels == i).sum() == (x1 - x0 + 1) * (y1 - y0 + 1)
        assert labels[y0, x0] == i and labels[y1, x1] == i
    assert all(s[0] <= 256 and s[1] <= 256 for s in pred.shapes)  # crops only
    back = read_geojson(res.geojson, labels.shape)
    assert np.array_equal(back.labels, labels) and back.classes == {1: "Tumor", 2: "Stroma"}
    level1 = np.asarray(ngff.open_ngff(path, label="medsam").levels[1][:])
    assert np.array_equal(level1, labels[::2, ::2])  # the coarser level follows


def test_bad_arguments_write_nothing(slide, tmp_path):
    path, _ = slide
    with pytest.raises(ImageError, match=".zarr"):
        segment_slide(BoxFillPredictor(), path, [[1, 1, 5, 5]], out=tmp_path / "x.tif")
    with pytest.raises(ImageError, match="slide itself"):
        segment_slide(BoxFillPredictor(), path, [[1, 1, 5, 5]], out=path)
    with pytest.raises(PromptError, match="outside"):
        segment_slide(BoxFillPredictor(), path, [[10, 10, 20, 20], [3000, 3000, 3100, 3100]])
    assert ngff.label_names(path) == [] and not (tmp_path / "x.tif").exists()


def test_boxes_from_qupath_geojson_keep_classes(tmp_path):
    labels = np.zeros((60, 80), np.uint16)
    labels[10:20, 5:25], labels[30:55, 40:70] = 1, 2
    write_geojson(tmp_path / "a.geojson", labels, {1: "Tumor", 2: "Immune cells"})
    boxes, classes = boxes_from_geojson(tmp_path / "a.geojson")
    assert boxes.tolist() == [[5, 10, 24, 19], [40, 30, 69, 54]]
    assert classes == {1: "Tumor", 2: "Immune cells"}
    doc = json.loads((tmp_path / "a.geojson").read_text())
    doc["features"].append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}, "properties": {}})
    (tmp_path / "b.geojson").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="1 Point feature\\(s\\) skipped: only Polygon and MultiPolygon"):
        assert len(boxes_from_geojson(tmp_path / "b.geojson")[0]) == 2  # cell centroids give no box: said so


def test_label_store_pastes_regions_and_keeps_the_smaller_id(tmp_path):
    store = LabelStore.create(tmp_path / "l.zarr", (3000, 2000), chunk=512)
    m = np.ones((1, 10, 10), bool)
    store.paste((100, 110, 100, 110), m, np.array([5]))
    store.paste((105, 115, 105, 115), m, np.array([3]))
    store.paste((105, 115, 105, 115), m, np.array([9]))
    region = store.read_region((100, 115, 100, 115))
    assert region[0, 0] == 5 and region[7, 7] == 3 and region[14, 14] == 3 and (region == 9).sum() == 0
    assert store.update_levels() == 3
    assert LabelStore(tmp_path / "l.zarr").levels[1][53, 53] == 3  # level 0 (106, 106)
    files = [p for p in (tmp_path / "l.zarr" / "0").iterdir() if not p.name.startswith(".")]
    assert len(files) == 1  # one 512 px chunk written, the rest never stored
    with pytest.raises(ImageError, match="outside"):
        store.write_region((2990, 3010, 0, 5), np.zeros((20, 5)))


@pytest.mark.slow
def test_medsam_slide_cli_real_model(slide, tmp_path, capsys):
    from medsam_core.cli import main

    path, _ = slide
    (tmp_path / "boxes.csv").write_text("x_min,y_min,x_max,y_max\n300,200,340,236\n900,600,940,650\n")
    rc = main(["slide", "--image", str(path), "--boxes", str(tmp_path / "boxes.csv"), "--out",
               str(tmp_path / "lab.zarr"), "--geojson", str(tmp_path / "lab.geojson")])
    assert rc == 0 and "2 objects" in capsys.readouterr().out
    labels = np.asarray(ngff.open_ngff(tmp_path / "lab.zarr").levels[0][:])
    assert set(np.unique(labels)) == {0, 1, 2} and 50 < (labels == 1).sum() < 41 * 37
    assert len(json.loads((tmp_path / "lab.geojson").read_text())["features"]) >= 2


def test_batch_folder_with_a_slide_writes_ome_zarr_and_resumes(slide, tmp_path):
    """``medsam batch`` on a folder holding an OME-Zarr slide and a plain TIFF: the slide's labels
    go to <stem>.ome.zarr (never loaded whole), the TIFF's to .tif; a second run skips both."""
    import tifffile

    from medsam_core.batch import segment_folder

    path, data = slide
    folder = tmp_path / "in"
    folder.mkdir()
    path.rename(folder / "slide.ome.zarr")
    tifffile.imwrite(folder / "plain.tif", data[:200, :300, 0])
    boxes = {"slide": np.array([[100, 100, 130, 140]], float), "plain": np.array([[10, 20, 40, 60]], float)}
    pred = BoxFillPredictor()
    report = segment_folder(folder, tmp_path / "out", boxes=boxes, roi="roi", predictor=pred)
    assert sorted(r.status for r in report.results) == ["done", "done"]
    labels = np.asarray(ngff.open_ngff(tmp_path / "out" / "slide.ome.zarr").levels[0][:])
    assert labels.shape == data.shape[:2] and (labels == 1).sum() == 31 * 41
    assert tifffile.imread(tmp_path / "out" / "plain.tif").max() == 1
    again = segment_folder(folder, tmp_path / "out", boxes=boxes, roi="roi", predictor=pred)
    assert sorted(r.status for r in again.results) == ["skipped", "skipped"]


def test_an_interrupted_overwrite_keeps_the_earlier_labels(slide, tmp_path):
    """--overwrite stopped half way (Ctrl-C, a crash, cancel): the earlier, complete labels are still
    there, at every level; a finished overwrite replaces them."""
    from medsam_core.errors import CancelledError

    path, _ = slide
    out = tmp_path / "labels.zarr"
    boxes = np.array([[100, 100, 130, 140], [1000, 700, 1040, 730], [1500, 1000, 1535, 1023]], float)
    segment_slide(BoxFillPredictor(), path, boxes, out=out, roi_mode="roi")
    before = np.asarray(ngff.open_ngff(out).levels[0][:])
    steps = []

    def cancel():
        return len(steps) >= 1  # after the first crop

    with pytest.raises(CancelledError):
        segment_slide(BoxFillPredictor(), path, boxes[::-1], out=out, roi_mode="roi", overwrite=True, cancel=cancel,
                      progress=lambda done, total: steps.append(done))
    np.testing.assert_array_equal(np.asarray(ngff.open_ngff(out).levels[0][:]), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "slide.ome.zarr"]  # nothing set aside
    segment_slide(BoxFillPredictor(), path, boxes[:1], out=out, roi_mode="roi", overwrite=True)
    assert set(np.unique(np.asarray(ngff.open_ngff(out).levels[0][:]))) == {0, 1}


def test_geojson_and_overwrite_never_destroy_what_is_not_ours(slide, tmp_path):
    path, _ = slide
    boxes_file = tmp_path / "cells.geojson"
    labels = np.zeros((1024, 1536), np.uint16)
    labels[100:140, 100:130] = 1
    write_geojson(boxes_file, labels, {1: "Tumor"})
    kept = boxes_file.read_bytes()
    boxes, _ = boxes_from_geojson(boxes_file)
    with pytest.raises(ImageError, match="input"):  # the annotations the boxes came from
        segment_slide(BoxFillPredictor(), path, boxes, out=tmp_path / "a.zarr", geojson=boxes_file,
                      boxes_source=boxes_file, overwrite=True)
    assert boxes_file.read_bytes() == kept and not (tmp_path / "a.zarr").exists()
    other = tmp_path / "other.geojson"
    other.write_text("{}")
    with pytest.raises(ImageError, match="exists: pass --overwrite"):  # before any crop is segmented
        segment_slide(BoxFillPredictor(), path, boxes, out=tmp_path / "a.zarr", geojson=other)
    with pytest.raises(ImageError, match="does not exist"):
        segment_slide(BoxFillPredictor(), path, boxes, out=tmp_path / "a.zarr", geojson=tmp_path / "no" / "x.geojson")
    assert not (tmp_path / "a.zarr").exists()
    plain = tmp_path / "notes.zarr"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(ImageError, match="not a label image"):
        segment_slide(BoxFillPredictor(), path, boxes, out=plain, overwrite=True)
    assert (plain / "notes.txt").read_text() == "mine"


def test_slide_takes_its_own_rows_of_a_batch_boxes_csv(slide, tmp_path):
    from medsam_core.cli_batch import _slide_rows

    path, _ = slide
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x_min,y_min,x_max,y_max\nslide.ome.zarr,10,10,40,40\nother.tif,5,5,9,9\n"
                   "slide,50,50,80,90\n")
    np.testing.assert_array_equal(_slide_rows(str(csv), str(path)), [[10, 10, 40, 40], [50, 50, 80, 90]])
    with pytest.raises(PromptError, match="no row of boxes.csv names this slide"):
        _slide_rows(str(csv), str(tmp_path / "third.ome.zarr"))
