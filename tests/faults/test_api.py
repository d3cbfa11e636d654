"""Fault catalogue, Python API: output checks, checkpoints, batch reports and resume, huge images.

Rows of each table: what is given, what must happen. "bug" rows failed before issue 14.
"""

from __future__ import annotations

import errno
import json
import os
import threading

import numpy as np
import pytest
import tifffile

from medsam_core.errors import CheckpointError, ImageError, MedSAMError, OutputError

from .conftest import BOX_HEADER, digest, tiny_image


# -- check_output: the one guard every writer calls ----------------------------------------------
def _setup(kind, d):
    img = d / "image.tif"
    img.write_bytes(b"precious")
    target = {
        "same_path": lambda: img,
        "hard_link": lambda: (os.link(img, d / "h.tif"), d / "h.tif")[1],
        "symlink": lambda: ((d / "s.tif").symlink_to(img), d / "s.tif")[1],
        "dotted_path": lambda: d / "x" / ".." / "image.tif",
        "symlinked_folder": lambda: ((d / "alias").symlink_to(d), d / "alias" / "image.tif")[1],
        "directory": lambda: ((d / "dir.tif").mkdir(), d / "dir.tif")[1],
        "read_only": lambda: ((d / "ro.tif").write_bytes(b"x"), (d / "ro.tif").chmod(0o444), d / "ro.tif")[2],
        "missing_folder": lambda: d / "missing" / "l.tif",
        "folder_is_a_file": lambda: img / "l.tif",
        "wrong_suffix": lambda: d / "l.png",
        "new_file": lambda: d / "new.tif",
        "writable_existing": lambda: ((d / "old.tif").write_bytes(b"x"), d / "old.tif")[1],
    }[kind]()
    return img, target


@pytest.mark.parametrize(("kind", "words"), [
    ("same_path", "destroy the input"),
    ("hard_link", "same file"),
    ("symlink", "same file"),
    ("dotted_path", "destroy the input"),
    ("symlinked_folder", "same file"),
    ("directory", "is a folder"),
    ("read_only", "read-only"),
    ("missing_folder", "does not exist"),
    ("folder_is_a_file", "is a file"),
    ("wrong_suffix", "must end in"),
    ("new_file", None),
    ("writable_existing", None),
])
def test_check_output(kind, words, tmp_path):
    from medsam_core._paths import check_output

    img, target = _setup(kind, tmp_path)
    if words is None:
        assert check_output(target, inputs=[img], suffixes=(".tif",)) == target
        return
    with pytest.raises(OutputError, match=words):
        check_output(target, inputs=[img, None], suffixes=(".tif",), what="labels file")
    assert img.read_bytes() == b"precious"


@pytest.mark.parametrize(("kind", "words"), [
    ("a_file", "is a file"), ("the_input", "input folder"), ("under_a_file", "is a file"), ("new", None),
])
def test_check_output_dir(kind, words, tmp_path):
    from medsam_core._paths import check_output_dir

    (tmp_path / "f.txt").write_text("x")
    target = {"a_file": tmp_path / "f.txt", "the_input": tmp_path, "under_a_file": tmp_path / "f.txt" / "sub",
              "new": tmp_path / "a" / "b"}[kind]
    if words is None:
        assert check_output_dir(target, inputs=[tmp_path / "f.txt"]) == target
    else:
        with pytest.raises(OutputError, match=words):
            check_output_dir(target, inputs=[tmp_path])


def test_write_labels_to_a_folder_is_an_image_error(tmp_path):
    from medsam_core.io import write_labels

    (tmp_path / "l.tif").mkdir()
    with pytest.raises(ImageError, match="is a folder"):  # bug: IsADirectoryError from os.replace
        write_labels(tmp_path / "l.tif", np.ones((8, 8), np.uint8))


# -- checkpoints -----------------------------------------------------------------------------------
def test_load_model_never_runs_a_pickle(evil_checkpoint):
    from medsam_core import load_model

    with pytest.raises(CheckpointError, match="arbitrary code execution") as info:
        load_model("lite_medsam", checkpoint=evil_checkpoint, device="cpu")
    assert not (evil_checkpoint.parent / "PWNED").exists()
    assert "Unsupported global" in str(info.value)  # torch's reason, then its warning


def test_read_state_dict_never_runs_a_pickle(evil_checkpoint):
    from medsam_core.checkpoint import read_state_dict

    with pytest.raises(CheckpointError):
        read_state_dict(evil_checkpoint)
    assert not (evil_checkpoint.parent / "PWNED").exists()


@pytest.mark.parametrize(("payload", "words"), [
    ("empty", "0 bytes"),
    ("directory", "is a directory"),
    ({"model": {"w": 1}}, "not named tensors"),
    ({"model": {"w": None}, "meta": ["a"]}, "must be a dict"),
    ({"model": {"w": None}, "base_model": 3}, "must be a model name"),
    ([1, 2, 3], "holds no state dict"),
])
def test_read_state_dict_bad_files(payload, words, tmp_path):
    import torch

    from medsam_core.checkpoint import read_state_dict

    path = tmp_path / "c.pt"
    if payload == "empty":
        path.write_bytes(b"")
    elif payload == "directory":
        path.mkdir()
    else:
        if isinstance(payload, dict):
            payload = {k: ({kk: (torch.zeros(1) if vv is None else vv) for kk, vv in v.items()}
                           if isinstance(v, dict) else v) for k, v in payload.items()}
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=words):
        read_state_dict(path)


def test_nan_weights_are_refused_at_load(tmp_path, bundled_state):
    import torch

    from medsam_core import load_model

    state = dict(bundled_state)
    key = next(k for k in state if k.startswith("image_encoder.") and state[k].is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"NaN or inf weights in 1 tensor.*{key}"):
        load_model("lite_medsam", checkpoint=tmp_path / "nan.pt", device="cpu")


class _Tiny(__import__("torch").nn.Linear):
    """A small module with a spec name: enough for the checkpoint writer (no model behaviour tested)."""

    spec = type("Spec", (), {"name": "lite_medsam"})()

    def __init__(self):
        super().__init__(3, 2)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0")])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(error, tmp_path, monkeypatch):
    """Bug: a traceback (torch's RuntimeError) on a full disk. Now a message; the old file stays."""
    import torch

    from medsam_core.checkpoint import save_checkpoint

    out = tmp_path / "ck.pt"
    save_checkpoint(out, _Tiny(), {"round": 1})
    before = digest(out)

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="disk is full|is the disk full") as info:
        save_checkpoint(out, _Tiny(), {"round": 2})
    assert "earlier file there is unchanged" in str(info.value)
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


# -- batch: honest reports, verified resume ---------------------------------------------------------
def _batch_folder(d, n=4):
    images = d / "images"
    images.mkdir()
    for k in range(n):
        tifffile.imwrite(images / f"i{k}.tif", tiny_image(seed=k))
    rows = [f"image,{BOX_HEADER}"] + [f"i{k}.tif,16,16,47,47" for k in range(n)]
    (d / "b.csv").write_text("\n".join(rows) + "\n")
    return images, d / "b.csv"


def test_cancel_report_is_honest(tmp_path):
    from medsam_core.batch import REPORT_NAME, segment_folder
    from tests.core.roi_fakes import BoxFillPredictor

    images, csv = _batch_folder(tmp_path)
    ev = threading.Event()
    report = segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor(),
                            on_progress=lambda d, t, n: ev.set(), cancel=ev)
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved["ok"] is False and saved["cancelled"] is True and saved["total"] == 4
    assert saved["not_processed"] == ["i1.tif", "i2.tif", "i3.tif"] == report.not_processed


def test_ctrl_c_report_is_honest(tmp_path):
    """Bug: after Ctrl-C the report said ok: true, cancelled: false while listing 1 of 8 images."""
    from medsam_core.batch import REPORT_NAME, segment_folder
    from tests.core.roi_fakes import BoxFillPredictor

    images, csv = _batch_folder(tmp_path)

    def interrupt(done, total, name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor(), on_progress=interrupt)
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved["ok"] is False and saved["cancelled"] is True
    assert [r["image"] for r in saved["results"]] == ["i0.tif"] and len(saved["not_processed"]) == 3


@pytest.mark.parametrize(("damage", "was_bug"), [
    ("zero_bytes", True), ("truncated", True), ("wrong_shape", True), ("not_labels", True), ("intact", False),
])
def test_resume_verifies_existing_outputs(damage, was_bug, tmp_path):
    """Bug: a 0-byte or truncated output counted as done (``ok: true``). Intact ones stay skipped."""
    from medsam_core.batch import segment_folder
    from tests.core.roi_fakes import BoxFillPredictor

    images, csv = _batch_folder(tmp_path, n=1)
    out = tmp_path / "out"
    assert segment_folder(images, out, boxes=csv, predictor=BoxFillPredictor()).ok
    good = tifffile.imread(out / "i0.tif")
    if damage == "zero_bytes":
        (out / "i0.tif").write_bytes(b"")
    elif damage == "truncated":
        (out / "i0.tif").write_bytes((out / "i0.tif").read_bytes()[:200])
    elif damage == "wrong_shape":
        tifffile.imwrite(out / "i0.tif", np.zeros((10, 10), np.uint8))
    elif damage == "not_labels":
        tifffile.imwrite(out / "i0.tif", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    report = segment_folder(images, out, boxes=csv, predictor=BoxFillPredictor())
    assert report.ok
    status = report.results[0].status
    assert status == ("done" if was_bug else "skipped"), report.results[0]
    if was_bug:
        assert "not usable" in report.results[0].message
    np.testing.assert_array_equal(tifffile.imread(out / "i0.tif"), good)


# -- images too large to encode whole ---------------------------------------------------------------
@pytest.mark.slow
def test_set_image_on_a_huge_memmap_says_use_roi_mode(tmp_path, lite_model):
    """Bug: a raw MemoryError after minutes of work. Now refused before reading a pixel."""
    from medsam_core import Predictor

    huge = np.memmap(tmp_path / "huge.raw", dtype=np.uint8, mode="w+", shape=(40000, 40000))  # sparse file
    pred = Predictor(lite_model)
    with pytest.raises(ImageError, match="ROI mode") as info:
        pred.set_image(huge)
    assert "pyramid" in str(info.value) and pred.encoder_calls == 0
    del huge


def test_errors_are_medsam_errors():
    """Callers catch MedSAMError (the widget shows it, the CLI exits 2): the new kinds are ones too."""
    from medsam_core.errors import CacheError, CacheMismatchError

    assert issubclass(OutputError, MedSAMError) and issubclass(OutputError, ImageError)
    assert issubclass(CacheMismatchError, CacheError) and issubclass(CacheError, MedSAMError)
