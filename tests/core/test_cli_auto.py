"""``medsam auto-train`` and ``medsam auto``: the head trained by CLI, stored in the checkpoint, used."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tifffile

from medsam_core import cli
from medsam_core.auto import match
from medsam_core.samples import nuclei


def _folders(tmp_path):
    s = nuclei()
    img, lab = np.asarray(s.image), np.asarray(s.labels).astype(np.int32)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    tifffile.imwrite(images / "left.tif", img[:, :128])
    tifffile.imwrite(labels / "left.tif", lab[:, :128])
    return images, labels, img, lab


def test_auto_without_head_says_how_to_train_one(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    monkeypatch.setattr(cli, "load_from_args", lambda args: types.SimpleNamespace(extras={}, encoder_id="x"))
    code = cli.main(["auto", "--images", str(images), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no automatic head" in err and "medsam auto-train" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_auto_refuses_images_folder_as_output_and_missing_folder(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert cli.main(["auto", "--images", str(images), "--out", str(images)]) == 2
    assert "input" in capsys.readouterr().err
    assert cli.main(["auto", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_auto_train_then_auto_on_the_other_half(tmp_path, monkeypatch, lite_model, capsys):
    monkeypatch.setattr(cli, "load_from_args", lambda args: lite_model)
    images, labels, img, lab = _folders(tmp_path)
    ckpt = tmp_path / "auto.pt"
    code = cli.main(["auto-train", "--images", str(images), "--labels", str(labels), "--out", str(ckpt),
                     "--epochs", "60", "--force"])
    assert code == 0 and ckpt.is_file()
    assert "held-out F1" in capsys.readouterr().out
    from medsam_core.checkpoint import load_model

    loaded = load_model("lite_medsam", checkpoint=ckpt)
    assert "auto_head" in loaded.extras
    monkeypatch.setattr(cli, "load_from_args", lambda args: loaded)
    new = tmp_path / "new"
    new.mkdir()
    tifffile.imwrite(new / "right.tif", img[:, 128:])
    out = tmp_path / "out"
    assert cli.main(["auto", "--images", str(new), "--out", str(out), "--head-masks"]) == 0
    got = tifffile.imread(out / "right.tif")
    ids = [k for k in np.unique(got) if k]
    r = match(np.stack([got == k for k in ids]), lab[:, 128:])
    assert r.f1 > 0.5, r
    # a rerun skips the image (resume); --overwrite segments it again (e.g. with a retrained head)
    older = np.ones(got.shape, np.uint8)  # stand-in for the labels of an older head
    tifffile.imwrite(out / "right.tif", older)
    capsys.readouterr()
    assert cli.main(["auto", "--images", str(new), "--out", str(out), "--head-masks"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out / "right.tif"), older)
    assert cli.main(["auto", "--images", str(new), "--out", str(out), "--head-masks", "--overwrite"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "right.tif"), got)
