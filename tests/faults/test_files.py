"""Fault catalogue, files: box CSVs (segment, batch table, napari Shapes) and image/label readers.

Every bad file is a MedSAMError naming the file and what to change, never a traceback; good
variants (BOM, spaces, extra columns) keep working.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from medsam_core.errors import ImageError, PromptError

from .conftest import Evil, tiny_image

# -- box CSV (medsam segment) ------------------------------------------------------------------------
# (file content, None for "reads fine" or words of the PromptError, True where it was a bug)
BOX_CSVS = [
    ("x_min,y_min,x_max,y_max\n1,2,30,40,7\n", "more fields than the header", True),
    ("x_min,y_min,x_max,y_max\n1,2,30,40,,\n", "more fields than the header", True),
    ("x_min,y_min,x_max,y_max,z\n1,2,30,40,inf\n", "line 2", True),
    ("x_min,y_min,x_max,y_max,z\n1,2,30,40,1e400\n", "line 2", True),
    ("x_min,y_min,x_max,y_max\n1,2,30\n", "line 2", False),
    ("x_min,y_min,x_max,y_max\n1,2,30,nan\n", "NaN or inf", False),
    ("x_min,y_min,x_max,y_max\n1,2,30,abc\n", "line 2", False),
    ("x_min,y_min,x_max,y_max,z\n1,2,30,40,1.5\n", "whole slice", False),
    ("x_min,y_min,x_max\n1,2,30\n", "missing: y_max", False),
    ("x_min,y_min,x_max,y_max\n", "no boxes", False),
    ("", "missing", False),
    (b"\xff\xfe\x00garbage\x80", "cannot read", False),
    ("\ufeffX_MIN, y_min ,x_max,y_max,label\n1,2,30,40,cell\n", None, False),
    ("x_min,y_min,x_max,y_max,z\n1,2,30,40,3\n", None, False),
]


@pytest.mark.parametrize(("content", "words", "was_bug"), BOX_CSVS, ids=[f"csv{i}" for i in range(len(BOX_CSVS))])
def test_box_csv(content, words, was_bug, tmp_path):
    from medsam_core.segment import read_boxes_csv

    path = tmp_path / "b.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if words is None:
        boxes, _ = read_boxes_csv(path)
        np.testing.assert_array_equal(boxes, [[1, 2, 30, 40]])
        return
    with pytest.raises(PromptError, match=words):
        read_boxes_csv(path)


# -- one CSV for a folder (medsam batch) and napari Shapes exports --------------------------------
TABLES = [
    ("image,x_min,y_min,x_max,y_max\na.tif,1,2,30,40,9\n", "more fields than the header", True),
    ("image,x_min,y_min,x_max,y_max,z\na.tif,1,2,30,40,inf\n", "not four numbers", True),
    ("image,x_min,y_min,x_max,y_max\nb.tif,1,2,30,40\n", "not in the image folder", False),
    ("x_min,y_min,x_max,y_max\n1,2,30,40\n", "no 'image' column", False),
    ("image,x_min,y_min,x_max,y_max\na,1,2,30,40\n", None, False),
]


@pytest.mark.parametrize(("content", "words", "was_bug"), TABLES, ids=[f"table{i}" for i in range(len(TABLES))])
def test_batch_table(content, words, was_bug, tmp_path):
    from medsam_core.boxsources import read_table

    path = tmp_path / "t.csv"
    path.write_text(content)
    if words is None:
        assert list(read_table(path, ["a.tif"])) == ["a.tif"]
        return
    with pytest.raises(PromptError, match=words):
        read_table(path, ["a.tif"])


SHAPES = [
    ("index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,1,2,99\n", "more fields than the header"),
    ("index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,1,x\n", "line 2"),
    ("index,shape-type,vertex-index,axis-0,axis-1\n", "no shapes"),
    ("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,rectangle,0,1,2,3\n0,rectangle,1,2,5,6\n", "spans slices"),
]


@pytest.mark.parametrize(("content", "words"), SHAPES, ids=[f"shapes{i}" for i in range(len(SHAPES))])
def test_napari_shapes_csv(content, words, tmp_path):
    from medsam_core.boxsources import read_any_boxes

    path = tmp_path / "a.csv"
    path.write_text(content)
    with pytest.raises(PromptError, match=words):
        read_any_boxes(path)


# -- images and label images ------------------------------------------------------------------------
def _write(kind, d):
    p = d / {"tif": "x.tif", "png": "x.png", "nii": "x.nii.gz", "npz": "x.npz"}[kind.split("_")[0]]
    if kind.endswith("_zero"):
        p.write_bytes(b"")
    elif kind.endswith("_garbage"):
        p.write_bytes(b"\x00\x01garbage" * 50)
    elif kind.endswith("_truncated"):
        tifffile.imwrite(p, tiny_image())
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "npz_pickle":
        arr = np.empty(1, dtype=object)
        arr[0] = Evil(d / "PWNED")
        np.savez(p, image=arr)
    elif kind == "npz_no_image":
        np.savez(p, other=np.zeros((4, 4)))
    elif kind == "npz_5d":
        np.savez(p, image=np.zeros((2, 2, 2, 2, 2)))
    elif kind == "tif_empty_array":
        tifffile.imwrite(p, np.zeros((0, 5), np.uint8))
    return p


@pytest.mark.parametrize(("kind", "words"), [
    ("tif_zero", "cannot read"), ("tif_garbage", "cannot read"), ("tif_truncated", "cannot read"),
    ("png_garbage", "cannot read"), ("nii_garbage", "cannot read"), ("nii_zero", "cannot read"),
    ("npz_garbage", "cannot read"), ("npz_pickle", "cannot read"), ("npz_no_image", "no array named"),
    ("npz_5d", "expected 2D"), ("tif_empty_array", "empty|cannot read"),
])
def test_bad_image_files(kind, words, tmp_path):
    from medsam_core.io import read_image

    path = _write(kind, tmp_path)
    with pytest.raises(ImageError, match=words):
        read_image(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_directory_is_called_a_directory(tmp_path):
    from medsam_core.io import read_image

    (tmp_path / "scan.nii.gz").mkdir()
    with pytest.raises(ImageError, match="is a directory"):  # bug: "does not exist"
        read_image(tmp_path / "scan.nii.gz")


@pytest.mark.parametrize(("shape", "axes", "was_bug"), [
    ((64, 48, 2), "YXC", True),
    ((64, 48, 7), "YXC", True),
    ((64, 48, 3), "YXC", False),
    ((5, 64, 48), "ZYX", False),
    ((40, 64, 48), "ZYX", False),
])
def test_unnamed_tiff_axes(shape, axes, was_bug, tmp_path):
    """Bug: (H, W, 2) and (H, W, 7) arrays written without metadata came back as z-stacks."""
    from medsam_core.io import read_image

    data = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", data, photometric="rgb" if shape[-1] == 3 else None)
    got, meta = read_image(tmp_path / "x.tif")
    assert meta.axes == axes and got.shape == shape
    np.testing.assert_array_equal(got, data)


def test_training_labels_npz_that_is_damaged(tmp_path):
    from medsam_core.data import _read_labels_file
    from medsam_core.errors import TrainingError

    (tmp_path / "a.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(TrainingError, match="cannot read labels"):  # bug: BadZipFile traceback
        _read_labels_file(tmp_path / "a.npz")
