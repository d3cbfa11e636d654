"""``medsam batch --auto`` / ``segment_folder(auto=True)``: a folder segmented by the checkpoint's
automatic head with the box batch's outputs, resume, report, failures, Ctrl-C and Dask path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from medsam_core import cli
from medsam_core.auto import match
from medsam_core.batch import REPORT_NAME, segment_folder
from medsam_core.errors import CheckpointError, PromptError


def _images(root, n=1):
    images = root / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    return images


def test_no_head_is_refused_before_anything_is_written(tmp_path, capsys):
    images = _images(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="medsam auto-train"):
        segment_folder(images, out, auto=True)
    assert not out.exists()
    assert cli.main(["batch", "--images", str(images), "--out", str(out), "--auto"]) == 2
    err = capsys.readouterr().err
    assert "no automatic head" in err and "medsam auto-train" in err and not out.exists()
    with pytest.raises(PromptError, match="not both"):
        segment_folder(images, out, auto=True, boxes={"a.tif": [[1, 1, 9, 9]]})
    with pytest.raises(SystemExit) as exc:  # argparse: --auto and --boxes exclude each other
        cli.main(["batch", "--images", str(images), "--out", str(out), "--auto", "--boxes", "x.csv"])
    assert exc.value.code == 2
    assert cli.main(["batch", "--images", str(images), "--out", str(out), "--boxes", str(tmp_path / "b.csv"),
                     "--auto-masks", "head"]) == 2
    assert not out.exists()


# -- real weights ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint with a head trained on the left half of the shipped nuclei crop; the right half
    (and its labels) to segment."""
    from medsam_core import Predictor, load_model
    from medsam_core.autoguard import save_with_model
    from medsam_core.autohead import HeadConfig, train_head
    from medsam_core.autoseg import fit_post
    from medsam_core.samples import nuclei

    s = nuclei()
    img, lab = np.asarray(s.image), np.asarray(s.labels).astype(np.int32)
    model = load_model("lite_medsam", device="cpu")
    pred = Predictor(model, encoder_backend="torch")
    images, labels, known = [img[:, :128]], [lab[:, :128]], [np.ones((256, 128), bool)]
    gen = train_head(pred, images, labels, known, HeadConfig(epochs=60, views=4))
    while True:  # the head alone (the guard has its own tests): train, fit the thresholds, no decoder
        try:
            next(gen)
        except StopIteration as stop:
            head = stop.value.head
            break
    head.post, _ = fit_post(pred, head, images, labels, known, refine=("head",))
    root = tmp_path_factory.mktemp("auto_batch")
    ckpt = save_with_model(root / "with_head.pt", model, head)
    plain = save_with_model(root / "plain.pt", model, None)
    return ckpt, plain, img[:, 128:], lab[:, 128:]


def _folder(root, right):
    images = root / "images"
    images.mkdir()
    tifffile.imwrite(images / "right.tif", right)
    tifffile.imwrite(images / "flipped.tif", np.ascontiguousarray(right[::-1]))
    return images


@pytest.mark.slow
def test_auto_batch_segments_resumes_and_reports_faults(tmp_path, trained):
    from medsam_core import Predictor, load_model

    ckpt, plain, right, right_lab = trained
    images = _folder(tmp_path, right)
    (images / "broken.tif").write_bytes(b"not a tiff")
    tifffile.imwrite(images / "vol.tif", np.stack([right] * 3), photometric="minisblack")
    out = tmp_path / "out"
    pred = Predictor(load_model("lite_medsam", checkpoint=ckpt, device="cpu"), encoder_backend="torch")
    report = segment_folder(images, out, auto=True, predictor=pred)
    status = {r.image: r.status for r in report.results}
    assert status == {"broken.tif": "failed", "flipped.tif": "done", "right.tif": "done", "vol.tif": "failed"}
    vol = next(r for r in report.results if r.image == "vol.tif")
    assert "2D" in vol.message and not report.ok
    got = tifffile.imread(out / "right.tif")
    r = match(np.stack([got == k for k in np.unique(got) if k]), right_lab)
    assert r.f1 > 0.5, r
    flipped = tifffile.imread(out / "flipped.tif")  # the same nuclei, upside down
    r = match(np.stack([flipped == k for k in np.unique(flipped) if k]), right_lab[::-1])
    assert r.f1 > 0.5, r
    saved = json.loads((out / REPORT_NAME).read_text())
    assert [x["status"] for x in saved["results"]] == ["failed", "done", "done", "failed"]
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME, "flipped.tif", "right.tif"]  # no partial files
    # resume: nothing done is redone or re-encoded; the faults are tried again
    calls, mtime = pred.encoder_calls, (out / "right.tif").stat().st_mtime_ns
    report = segment_folder(images, out, auto=True, predictor=pred)
    assert [r.status for r in report.results] == ["failed", "skipped", "skipped", "failed"]
    assert pred.encoder_calls == calls and (out / "right.tif").stat().st_mtime_ns == mtime
    # a loaded model without a head is refused before anything is written
    with pytest.raises(CheckpointError, match="no automatic head"):
        segment_folder(images, tmp_path / "o2", auto=True, predictor=Predictor(load_model("lite_medsam", checkpoint=plain)))
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_auto_batch_ctrl_c_writes_an_honest_report(tmp_path, trained):
    ckpt, _, right, _ = trained
    images = _folder(tmp_path, right)
    out = tmp_path / "out"

    def interrupt(done, total, name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_folder(images, out, auto=True, checkpoint=ckpt, encoder_backend="torch", on_progress=interrupt,
                       auto_masks="head")
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["cancelled"] and not saved["ok"] and saved["not_processed"] == ["right.tif"]
    assert [r["message"] for r in saved["results"]] == ["automatic head, head masks"]


@pytest.mark.slow
def test_cli_auto_batch_in_process_and_on_dask_write_the_same_labels(tmp_path, trained, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("MEDSAM_ENCODER_BACKEND", "torch")  # the workers inherit the environment
    ckpt, plain, right, _ = trained
    images = _folder(tmp_path, right)
    base = ["batch", "--images", str(images), "--auto", "--checkpoint", str(ckpt)]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--workers", "1", "--no-dashboard"]) == 0
    assert "Dask, 1 worker(s)" in capsys.readouterr().err
    for name in ("right.tif", "flipped.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # a checkpoint without a head: exit 2, nothing written (in process and on Dask)
    for extra in ([], ["--workers", "1", "--no-dashboard"]):
        code = cli.main(["batch", "--images", str(images), "--auto", "--checkpoint", str(plain),
                         "--out", str(tmp_path / "c")] + extra)
        assert code == 2 and "medsam auto-train" in capsys.readouterr().err and not (tmp_path / "c").exists()
