"""``medsam train``: folder pairing, guard exit codes, nothing written on bad input or refusal."""

from __future__ import annotations

import pytest

from medsam_core.cli import main

from .test_ddp import write_folder


def train_args(images, labels, out, *extra):
    return ["train", "--images", str(images), "--labels", str(labels), "--out", str(out), "--device", "cpu",
            "--epochs", "1", "--batch-size", "2", "--holdout", "0.34", *extra]


def test_missing_or_unpaired_labels_exit_2_and_write_nothing(tmp_path, capsys):
    images, labels = write_folder(tmp_path)
    out = tmp_path / "ft.pt"
    assert main(train_args(images, tmp_path / "nope", out)) == 2
    assert "labels folder" in capsys.readouterr().err
    (labels / "img1.tif").unlink()
    assert main(train_args(images, labels, out)) == 2
    assert "no labels file for img1.tif" in capsys.readouterr().err
    assert main(train_args(images, labels, tmp_path / "ft.txt")) == 2
    assert main(train_args(images, labels, out, "--holdout", "1.5")) == 2
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*tmp"))


def test_refused_round_exits_3_without_writing(tmp_path, monkeypatch, capsys):
    import medsam_core.training as training

    from .test_training import fake_fit

    images, labels = write_folder(tmp_path)
    monkeypatch.setattr(training, "fit", fake_fit(0.2))  # held-out Dice 0.5 -> 0.2
    out = tmp_path / "ft.pt"
    assert main(train_args(images, labels, out)) == 3
    text = capsys.readouterr()
    assert "held-out Dice before: 0.5000" in text.out and "after:  0.2000" in text.out
    assert "guard: refused" in text.out and "--force" in text.err
    assert not out.exists()
    assert main(train_args(images, labels, out, "--force")) == 0
    assert out.exists()


@pytest.mark.slow
def test_real_training_run_writes_a_checkpoint_load_model_serves(tmp_path, capsys):
    from medsam_core import load_model
    from medsam_core.checkpoint import state_dict_sha256

    images, labels = write_folder(tmp_path)
    out = tmp_path / "ft.pt"
    code = main(train_args(images, labels, out, "--force"))
    text = capsys.readouterr().out
    assert code == 0, text
    assert "held-out Dice before:" in text and ("guard: accepted" in text or "guard: refused" in text)
    model = load_model("lite_medsam", checkpoint=out, device="cpu")
    base = load_model("lite_medsam", device="cpu")
    assert model.meta["mode"] == "decoder" and model.meta["objects_train"] == 4
    assert model.meta["forced"] == ("guard: refused" in text)
    assert model.encoder_id == base.encoder_id
    assert state_dict_sha256(model.state_dict()) != state_dict_sha256(base.state_dict())


def test_folder_pairs_name_a_misfit_and_read_short_stacks_as_slices(tmp_path):
    """A 128x128 image with 100x100 labels was reported as "labels 1 must be ..." (an index, after
    volumes were split); a 3-slice stack and its labels were read as RGB and refused."""
    import numpy as np
    import tifffile

    from medsam_core.data import read_folder_pairs
    from medsam_core.errors import TrainingError

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 900, (3, 64, 80)).astype(np.uint16)
    lab = np.zeros((3, 64, 80), np.uint16)
    lab[0, 5:15, 5:20] = 1
    lab[2, 30:40, 40:60] = 2
    tifffile.imwrite(images / "vol.tif", stack)
    tifffile.imwrite(labels / "vol.tif", lab)
    pairs = read_folder_pairs(images, labels)
    assert [(im.shape, int(la.max())) for im, la in pairs] == [((64, 80), 1), ((64, 80), 2)]
    np.testing.assert_array_equal(pairs[1][0], stack[2])
    tifffile.imwrite(images / "b.tif", rng.integers(0, 900, (128, 128)).astype(np.uint16))
    tifffile.imwrite(labels / "b.tif", np.ones((100, 100), np.uint16))
    with pytest.raises(TrainingError, match=r"the labels b.tif \(100, 100\) do not fit the image b.tif \(128, 128\)"):
        read_folder_pairs(images, labels)
