"""Fault catalogue, training: folder pairing, label volumes, saving on a full disk, train/finetune.py.

The CLI save-path rows use the stand-in ``fake_fit`` of tests/core/test_training.py (training
itself is not under test here, the save after it is); finetune.py rows run the real script.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medsam_core.errors import TrainingError

from .conftest import age, digest, run_cli

REPO = Path(__file__).resolve().parents[2]


def _folders(d: Path, n=2):
    images, labels = d / "images", d / "labels"
    images.mkdir()
    labels.mkdir()
    yy, xx = np.mgrid[:64, :64]
    for k in range(n):
        img = np.full((64, 64), 20, np.uint8)
        lab = np.zeros((64, 64), np.uint8)
        for i, (cy, cx) in enumerate(((20, 20 + k), (44, 44 - k))):
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2
            img[m], lab[m] = 200, i + 1
        tifffile.imwrite(images / f"im{k}.tif", img)
        tifffile.imwrite(labels / f"im{k}.tif", lab)
    return images, labels


# -- pairing images and labels by name ----------------------------------------------------------------
def image_and_npz_share_a_stem(images, labels):
    np.savez(images / "im0.npz", image=tifffile.imread(images / "im0.tif"))


def labels_and_tagged_labels_share_a_stem(images, labels):
    tifffile.imwrite(labels / "im0_labels.tif", tifffile.imread(labels / "im0.tif"))


def nifti_and_tiff_share_a_stem(images, labels):
    import nibabel as nib

    nib.save(nib.Nifti1Image(tifffile.imread(images / "im1.tif").T, np.eye(4)), str(images / "im1.nii.gz"))


def hidden_appledouble_file(images, labels):  # macOS copies leave ._name files: not images
    (images / "._im0.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")


def labels_folder_is_a_file(images, labels):
    for p in labels.iterdir():
        p.unlink()
    labels.rmdir()
    labels.write_text("not a folder")


PAIRING = [
    (image_and_npz_share_a_stem, "share the image name", True),
    (labels_and_tagged_labels_share_a_stem, "share the label name", True),
    (nifti_and_tiff_share_a_stem, "share the image name", True),
    (hidden_appledouble_file, None, True),
    (labels_folder_is_a_file, "does not exist", False),
]


@pytest.mark.parametrize(("change", "words", "was_bug"), PAIRING, ids=[c[0].__name__ for c in PAIRING])
def test_folder_pairing(change, words, was_bug, tmp_path):
    """Bug: a.tif and a.npz were both used: one object twice, held-out copies leaked into training."""
    from medsam_core.data import read_folder_pairs

    images, labels = _folders(tmp_path)
    change(images, labels)
    if words is None:
        assert len(read_folder_pairs(images, labels)) == 2
        return
    with pytest.raises(TrainingError, match=words):
        read_folder_pairs(images, labels)


@pytest.mark.parametrize(("labels", "words"), [
    ("volume_ids", "3D label volume"),
    ("volume_one_object_through_slices", "3D label volume"),
    ("mask_stack", None),
    ("mask_stack_with_empty", "are empty"),
])
def test_label_stacks_for_a_2d_image(labels, words):
    """Bug: a (Z, Y, X) label volume for a 2D image became "only 1 labelled object"."""
    from medsam_core.data import make_training_data

    img = np.zeros((32, 32), np.uint8)
    img[4:12, 4:12] = img[20:28, 20:28] = 200
    a, b = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    a[4:12, 4:12], b[20:28, 20:28] = 1, 1
    lab = {
        "volume_ids": np.stack([a + 2 * b] * 4),
        "volume_one_object_through_slices": np.stack([a, a, a]),
        "mask_stack": np.stack([a, b]),
        "mask_stack_with_empty": np.stack([a, b, 0 * a]),
    }[labels]
    if words is None:
        assert len(make_training_data([(img, lab)])) == 2
        return
    with pytest.raises(TrainingError, match=words):
        make_training_data([(img, lab)])


# -- medsam train: the save after training ------------------------------------------------------------
def _train_argv(images, labels, out, *extra):
    return ["train", "--images", images, "--labels", labels, "--out", out, "--device", "cpu",
            "--epochs", "1", "--holdout", "0.5", "--force", *extra]


@pytest.mark.slow
def test_disk_full_while_train_saves(tmp_path, monkeypatch, capsys):
    """Bug: a traceback when the disk filled during the save. Now exit 2, the message, the old file kept."""
    import torch

    import medsam_core.training as training
    from tests.core.test_training import fake_fit

    images, labels = _folders(tmp_path)
    out = tmp_path / "ft.pt"
    out.write_bytes(b"the previous round's checkpoint")
    before = digest(out)
    monkeypatch.setattr(training, "fit", fake_fit(0.9))

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, err = run_cli(_train_argv(images, labels, out), capsys)
    assert code == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert digest(out) == before and not [p for p in tmp_path.iterdir() if "medsam-tmp" in p.name]


@pytest.mark.slow
def test_train_with_nan_checkpoint_refused_before_training(tmp_path, bundled_state, monkeypatch, capsys):
    import torch

    import medsam_core.training as training

    images, labels = _folders(tmp_path)
    state = {k: (torch.full_like(v, float("nan")) if k.endswith("iou_token.weight") else v)
             for k, v in bundled_state.items()}
    torch.save({"model": state, "base_model": "lite_medsam"}, tmp_path / "nan.pt")

    def no_training(*a, **k):
        raise AssertionError("training started with NaN weights")

    monkeypatch.setattr(training, "fit", no_training)
    code, err = run_cli(_train_argv(images, labels, tmp_path / "ft.pt", "--checkpoint", tmp_path / "nan.pt"), capsys)
    assert code == 2 and "NaN or inf weights" in err, err


def test_save_checkpoint_cleans_what_a_killed_save_left(tmp_path):
    from medsam_core.checkpoint import save_checkpoint
    from tests.faults.test_api import _Tiny

    left = tmp_path / ".ft.pt.medsam-tmp-z9x8c7v6.tmp"  # a save killed (kill -9) two hours ago
    left.write_bytes(b"half a checkpoint")
    age(left)
    young = tmp_path / ".ft.pt.medsam-tmp-b5n6m7l8.tmp"
    young.write_bytes(b"a save running elsewhere")
    save_checkpoint(tmp_path / "ft.pt", _Tiny(), {})
    assert not left.exists() and young.exists() and (tmp_path / "ft.pt").is_file()


# -- train/finetune.py (the torchrun script) ----------------------------------------------------------
def _finetune(tmp_path, *args):
    images, labels = _folders(tmp_path)
    cmd = [sys.executable, str(REPO / "train" / "finetune.py"), "--images", str(images), "--labels", str(labels),
           "--device", "cpu", "--epochs", "1", "--max-steps", "1", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_finetune_script_never_runs_a_pickle(tmp_path, evil_checkpoint):
    proc = _finetune(tmp_path, "--checkpoint", evil_checkpoint, "--out", tmp_path / "o.pt")
    assert proc.returncode != 0 and not (tmp_path / "PWNED").exists()
    assert "arbitrary code execution" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_finetune_script_refuses_out_equal_to_checkpoint(tmp_path):
    ckpt = tmp_path / "base.pt"
    ckpt.write_bytes(b"weights the user keeps")
    proc = _finetune(tmp_path, "--checkpoint", ckpt, "--out", ckpt)
    assert proc.returncode != 0 and "destroy the input" in proc.stderr, proc.stderr
    assert ckpt.read_bytes() == b"weights the user keeps"
