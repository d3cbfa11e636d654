"""Fuzz pass over the readers a user's files reach first: box CSVs and image / label files.

The property: whatever the bytes, a reader either returns a sound result or raises a
MedSAMError (which the CLI prints as one line and the widget as a notification); no other
exception, i.e. no traceback, ever reaches the user. Hypothesis runs derandomized (the same
examples every run) and small, about two seconds in all.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest

from medsam_core.errors import MedSAMError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

HEADERS = ["x_min,y_min,x_max,y_max", "x_min,y_min,x_max,y_max,z", "image,x_min,y_min,x_max,y_max",
           "image,x_min,y_min,x_max,y_max,z", "index,shape-type,vertex-index,axis-0,axis-1",
           "index,shape-type,vertex-index,axis-0,axis-1,axis-2", "X_MIN; y_min", ""]
TOKENS = st.one_of(
    st.sampled_from(["0", "1", "-1", "12.5", "1e400", "-1e400", "inf", "-inf", "nan", "", " ", "a.tif", "a",
                     "rectangle", '"1,2"', '"', "\ufeff", "1_000", "0x10", "\u0661"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
ROW = st.lists(TOKENS, min_size=0, max_size=8).map(",".join)
CSV_TEXT = st.builds(lambda h, rows: "\n".join([h, *rows]) + "\n", st.sampled_from(HEADERS),
                     st.lists(ROW, max_size=5))
CSV_BYTES = st.one_of(CSV_TEXT.map(lambda t: t.encode("utf-8")), st.binary(max_size=200))


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _sound_boxes(boxes, z):
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and np.isfinite(boxes).all()
    assert z is None or (len(z) == len(boxes) and z.dtype.kind == "i")


@FUZZ
@given(CSV_BYTES)
def test_box_csv_readers_raise_only_medsam_errors(data):
    from medsam_core.boxsources import read_any_boxes, read_table
    from medsam_core.segment import read_boxes_csv

    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "b.csv", data)
        for read in (read_boxes_csv, read_any_boxes):
            try:
                _sound_boxes(*read(path))
            except MedSAMError:
                pass
        try:
            for boxes, z in read_table(path, ["a.tif"]).values():
                _sound_boxes(boxes, z)
        except MedSAMError:
            pass


def _valid_files() -> dict[str, bytes]:
    """One small valid file per format the readers take, to mutate."""
    import nibabel as nib
    import tifffile
    from skimage import io as skio

    img = (np.arange(24 * 20).reshape(24, 20) % 251).astype(np.uint8)
    out = {}
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, imagej=True, metadata={"axes": "YX"})
    out[".tif"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, image=img, labels=img % 3)
    out[".npz"] = buf.getvalue()
    with tempfile.TemporaryDirectory() as d:
        nib.save(nib.Nifti1Image(img.T.copy(), np.eye(4)), f"{d}/x.nii")
        out[".nii"] = Path(f"{d}/x.nii").read_bytes()
        skio.imsave(f"{d}/x.png", img, check_contrast=False)
        out[".png"] = Path(f"{d}/x.png").read_bytes()
    return out


VALID = None


def _mutated(suffix: str, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    global VALID
    if VALID is None:
        VALID = _valid_files()
    data = bytearray(VALID[suffix])
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


IMAGE_BYTES = st.one_of(
    st.tuples(st.sampled_from([".tif", ".npz", ".nii", ".png"]),
              st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
              st.one_of(st.none(), st.integers(0, 400))).map(lambda t: (t[0], _mutated(*t))),
    st.tuples(st.sampled_from([".tif", ".npz", ".nii", ".nii.gz", ".png", ".jpg"]), st.binary(max_size=300)),
)


@settings(FUZZ, max_examples=80)
@given(IMAGE_BYTES)
def test_image_and_label_readers_raise_only_medsam_errors(sample):
    from medsam_core.data import _read_labels_file
    from medsam_core.io import read_image

    suffix, data = sample
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "x" + suffix, data)
        for read in (read_image, _read_labels_file):
            try:
                read(path)
            except MedSAMError:
                pass
