"""Fault catalogue, command line: ``medsam segment|batch|train|info|demo|export`` given bad input.

Each row: the arguments (built from a small working set), the exit code, words the message must
hold. Refusals must come before any model work (the ``no_model_load`` tripwire) and leave every
input byte for byte as it was. In-process ``cli.main`` keeps each row a few milliseconds.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import tifffile

from .conftest import BOX_HEADER, age, digest, run_cli, tiny_image


def _nifti(path, data):
    import nibabel as nib

    nib.save(nib.Nifti1Image(data.T.astype(np.int16), np.eye(4)), str(path))
    return path


def _png(path, data):
    from skimage import io as skio

    skio.imsave(str(path), data.astype(np.uint8), check_contrast=False)
    return path


def _train_dirs(f, stem_clash=False, label_volume=False):
    images, labels = f.dir / "timg", f.dir / "tlab"
    images.mkdir()
    labels.mkdir()
    for k in range(2):
        img = tiny_image(seed=k)
        lab = np.zeros((64, 64), np.uint8)
        lab[5:20, 5:20], lab[30:50, 30:50] = 1, 2
        tifffile.imwrite(images / f"a{k}.tif", img)
        tifffile.imwrite(labels / f"a{k}.tif", np.stack([lab] * 5) if label_volume else lab, photometric="minisblack")
    if stem_clash:  # the same picture again under another suffix: its objects would count twice
        np.savez(images / "a0.npz", image=tiny_image(seed=0))
    return images, labels


# -- 1. data loss: an output that is an input (or a link of one), refused before model work -------
def case_out_is_image_tif(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.image], [f.image]


def case_out_is_image_nifti(f):
    img = _nifti(f.dir / "scan.nii.gz", tiny_image())
    return ["segment", img, "--boxes", f.boxes, "--out", img], [img]


def case_overlay_is_png_input(f):
    img = _png(f.dir / "photo.png", tiny_image() // 4)
    return ["segment", img, "--boxes", f.boxes, "--out", f.dir / "l.tif", "--overlay", img], [img]


def case_out_is_hard_link_of_image(f):
    link = f.dir / "link.tif"
    os.link(f.image, link)
    return ["segment", f.image, "--boxes", f.boxes, "--out", link], [f.image]


def case_out_is_symlink_to_image(f):
    link = f.dir / "sym.tif"
    link.symlink_to(f.image)
    return ["segment", f.image, "--boxes", f.boxes, "--out", link], [f.image]


def case_out_is_dotted_path_to_image(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "." / "sub" / ".." / "image.tif"], [f.image]


def case_batch_out_is_images(f):
    images = f.dir / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na.tif,16,16,47,47\n")
    return ["batch", "--images", images, "--out", images, "--boxes", f.dir / "t.csv"], [images / "a.tif"]


def case_batch_out_is_label_source(f):
    images, labels = f.dir / "imgs", f.dir / "labs"
    images.mkdir()
    labels.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    tifffile.imwrite(labels / "a.tif", (tiny_image() > 300).astype(np.uint8))
    return ["batch", "--images", images, "--out", labels, "--boxes-from-labels", labels], [labels / "a.tif"]


def case_batch_output_is_link_of_image(f):
    images, out = f.dir / "imgs", f.dir / "out"
    images.mkdir()
    out.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    (out / "a.tif").symlink_to(images / "a.tif")
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na.tif,16,16,47,47\n")
    return (["batch", "--images", images, "--out", out, "--boxes", f.dir / "t.csv", "--overwrite"],
            [images / "a.tif"])


def case_train_out_is_checkpoint(f):
    images, labels = _train_dirs(f)
    ckpt = f.dir / "base.pt"
    ckpt.write_bytes(b"pretend weights")  # refused before it is ever read
    return ["train", "--images", images, "--labels", labels, "--out", ckpt, "--checkpoint", ckpt], [ckpt]


def case_train_out_is_hard_link_of_checkpoint(f):
    images, labels = _train_dirs(f)
    ckpt = f.dir / "base.pt"
    ckpt.write_bytes(b"pretend weights")
    os.link(ckpt, f.dir / "new.pt")
    return ["train", "--images", images, "--labels", labels, "--out", f.dir / "new.pt", "--checkpoint", ckpt], [ckpt]


# -- 2. outputs that cannot be written: said at once, exit 2 (was: after the model ran, exit 1) --
def case_out_is_directory(f):
    (f.dir / "x.tif").mkdir()
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "x.tif"], []


def case_out_is_read_only(f):
    ro = f.dir / "ro.tif"
    ro.write_bytes(b"keep me")
    ro.chmod(0o444)
    return ["segment", f.image, "--boxes", f.boxes, "--out", ro], [ro]


def case_out_folder_missing(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "nowhere" / "l.tif"], []


def case_out_parent_is_a_file(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.boxes / "l.tif"], [f.boxes]


def case_out_wrong_suffix(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "labels.png"], []


def case_out_is_the_boxes_csv(f):
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.boxes], [f.boxes]


def case_batch_out_is_a_file(f):
    images = f.dir / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na.tif,16,16,47,47\n")
    return ["batch", "--images", images, "--out", f.boxes, "--boxes", f.dir / "t.csv"], [f.boxes]


def case_train_out_is_directory(f):
    images, labels = _train_dirs(f)
    (f.dir / "ck.pt").mkdir()
    return ["train", "--images", images, "--labels", labels, "--out", f.dir / "ck.pt"], []


def case_train_out_read_only(f):
    images, labels = _train_dirs(f)
    ro = f.dir / "old.pt"
    ro.write_bytes(b"an earlier checkpoint")
    ro.chmod(0o444)
    return ["train", "--images", images, "--labels", labels, "--out", ro], [ro]


def case_train_out_folder_missing(f):
    images, labels = _train_dirs(f)
    return ["train", "--images", images, "--labels", labels, "--out", f.dir / "no" / "ck.pt"], []


def case_demo_out_is_a_file(f):
    return ["demo", "--out", f.boxes], [f.boxes]


# -- 3. bad inputs that gave tracebacks or misleading messages -----------------------------------
def case_csv_row_with_more_fields(f):
    f.boxes.write_text(f"{BOX_HEADER}\n16,16,47,47,99\n")
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "l.tif"], [f.boxes]


def case_batch_csv_row_with_more_fields(f):
    images = f.dir / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na.tif,16,16,47,47,5\n")
    return ["batch", "--images", images, "--out", f.dir / "out", "--boxes", f.dir / "t.csv"], []


def case_image_is_a_directory(f):
    (f.dir / "folder.tif").mkdir()
    return ["segment", f.dir / "folder.tif", "--boxes", f.boxes, "--out", f.dir / "l.tif"], []


def case_boxes_is_a_directory(f):
    (f.dir / "b.csv").mkdir()
    return ["segment", f.image, "--boxes", f.dir / "b.csv", "--out", f.dir / "l.tif"], []


def case_z_column_infinite(f):
    f.boxes.write_text(f"{BOX_HEADER},z\n16,16,47,47,inf\n")
    return ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "l.tif"], []


def case_image_missing(f):
    return ["segment", f.dir / "nope.tif", "--boxes", f.boxes, "--out", f.dir / "l.tif"], []


def case_train_two_images_one_stem(f):
    images, labels = _train_dirs(f, stem_clash=True)
    return ["train", "--images", images, "--labels", labels, "--out", f.dir / "ck.pt"], []


def case_train_label_volume_for_2d_image(f):
    images, labels = _train_dirs(f, label_volume=True)
    return ["train", "--images", images, "--labels", labels, "--out", f.dir / "ck.pt"], []


def case_batch_two_images_one_stem(f):
    images = f.dir / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    _nifti(images / "a.nii.gz", tiny_image())
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na,16,16,47,47\n")
    return ["batch", "--images", images, "--out", f.dir / "out", "--boxes", f.dir / "t.csv"], [images / "a.tif"]


# (case, exit code, words in the message, True where this was a bug before issue 14). The link rows
# were refused-less but not destructive (atomic writes replace the link, not the file it names);
# they are refused now because to the user the link *is* the input.
CASES = [
    (case_out_is_image_tif, 2, "destroy the input", True),
    (case_out_is_image_nifti, 2, "destroy the input", True),
    (case_overlay_is_png_input, 2, "destroy the input", True),
    (case_out_is_hard_link_of_image, 2, "same file", False),
    (case_out_is_symlink_to_image, 2, "same file", False),
    (case_out_is_dotted_path_to_image, 2, "destroy the input", True),
    (case_batch_out_is_images, 2, "input folder", False),
    (case_batch_out_is_label_source, 2, "input folder", False),
    (case_batch_output_is_link_of_image, 2, "same file", False),
    (case_train_out_is_checkpoint, 2, "destroy the input", True),
    (case_train_out_is_hard_link_of_checkpoint, 2, "same file", False),
    (case_out_is_directory, 2, "is a folder", True),
    (case_out_is_read_only, 2, "read-only", True),
    (case_out_folder_missing, 2, "does not exist", False),
    (case_out_parent_is_a_file, 2, "is a file", True),
    (case_out_wrong_suffix, 2, "must end in", False),
    (case_out_is_the_boxes_csv, 2, "must end in", False),
    (case_batch_out_is_a_file, 2, "is a file", True),
    (case_train_out_is_directory, 2, "is a folder", True),
    (case_train_out_read_only, 2, "read-only", True),
    (case_train_out_folder_missing, 2, "does not exist", False),
    (case_demo_out_is_a_file, 2, "is a file", True),
    (case_csv_row_with_more_fields, 2, "more fields than the header", True),
    (case_batch_csv_row_with_more_fields, 2, "more fields than the header", True),
    (case_image_is_a_directory, 2, "is a directory", True),
    (case_boxes_is_a_directory, 2, "is a directory", True),
    (case_z_column_infinite, 2, "line 2", True),
    (case_image_missing, 2, "does not exist", False),
    (case_train_two_images_one_stem, 2, "share the image name", True),
    (case_train_label_volume_for_2d_image, 2, "3D label volume", True),
    (case_batch_two_images_one_stem, 2, "share the name", True),
]


@pytest.mark.parametrize(("case", "code", "words", "was_bug"), CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_cli_refuses_before_model_work(case, code, words, was_bug, files, no_model_load, capsys):
    argv, inputs = case(files)
    before = {p: digest(p) for p in inputs if p.is_file()}
    listing = sorted(p.name for p in files.dir.rglob("*"))
    got, err = run_cli(argv, capsys)
    assert got == code, err
    assert words in err, err
    assert "Traceback" not in err
    assert {p: digest(p) for p in before} == before  # every input unchanged
    assert sorted(p.name for p in files.dir.rglob("*")) == listing  # and nothing new written


# -- hostile and damaged checkpoints on every command that takes --checkpoint -----------------------
def _argv_with_checkpoint(command, f, ckpt):
    images, labels = _train_dirs(f)
    (f.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na0.tif,16,16,47,47\n")
    return {
        "segment": ["segment", f.image, "--boxes", f.boxes, "--out", f.dir / "l.tif"],
        "batch": ["batch", "--images", images, "--out", f.dir / "bo", "--boxes", f.dir / "t.csv"],
        "train": ["train", "--images", images, "--labels", labels, "--out", f.dir / "ck.pt", "--epochs", "1"],
        "info": ["info"],
    }[command] + ["--checkpoint", ckpt, "--device", "cpu"]


@pytest.mark.parametrize("command", ["segment", "batch", "train", "info"])
def test_malicious_pickle_runs_no_code(command, files, evil_checkpoint, capsys):
    """Held before issue 14, must keep holding: weights_only loading on every --checkpoint path."""
    code, err = run_cli(_argv_with_checkpoint(command, files, evil_checkpoint), capsys)
    assert code == 2 and not files.marker.exists(), err
    assert "arbitrary code execution" in err and "trusted source" in err  # torch's warning kept (was: dropped)


def _damaged(kind, path, bundled_state):
    import torch

    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "base_model_list":
        torch.save({"model": {"w": torch.zeros(1)}, "base_model": ["lite_medsam"]}, path)
    elif kind == "meta_string":
        torch.save({"model": {"w": torch.zeros(1)}, "meta": "fine-tuned"}, path)
    elif kind == "nan_weights":
        state = dict(bundled_state)
        key = next(k for k in state if k.startswith("mask_decoder.") and state[k].is_floating_point())
        state[key] = torch.full_like(state[key], float("nan"))
        torch.save({"model": state, "base_model": "lite_medsam"}, path)
    return path


@pytest.mark.parametrize(("kind", "words", "command"), [
    ("empty", "empty (0 bytes)", "segment"),
    ("truncated", "corrupted, truncated", "info"),
    ("base_model_list", "must be a model name", "segment"),
    ("meta_string", "must be a dict", "info"),
    ("nan_weights", "NaN or inf weights", "segment"),
])
def test_damaged_checkpoint_is_a_message(kind, words, command, files, bundled_state, capsys):
    """Bugs: 0-byte file crashed the error handler; list/str metadata gave tracebacks; NaN weights
    segmented nothing with exit 0 ("5 boxes -> 0 objects")."""
    ckpt = _damaged(kind, files.dir / f"{kind}.pt", bundled_state)
    code, err = run_cli(_argv_with_checkpoint(command, files, ckpt), capsys)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not (files.dir / "l.tif").exists()


def test_export_cache_dir_that_is_a_file(files, monkeypatch, no_model_load, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(files.boxes))  # a file where the cache folder goes
    code, err = run_cli(["export"], capsys)
    assert code == 2 and "is a file" in err, err


@pytest.mark.slow
@pytest.mark.parametrize("channels", [2, 7])
def test_unnamed_channel_tiff_is_channels_not_a_stack(channels, files, lite_model, monkeypatch, capsys):
    """Bug: an (H, W, 2) or (H, W, 7) TIFF without metadata was read as a z-stack ("add a z column")."""
    img = np.stack([tiny_image(seed=c) for c in range(channels)], axis=-1)
    path = files.dir / f"c{channels}.tif"
    tifffile.imwrite(path, img)
    monkeypatch.setattr("medsam_core.cli.load_from_args", lambda args: lite_model)
    code, err = run_cli(["segment", path, "--boxes", files.boxes, "--out", files.dir / "l.tif",
                         "--channel", "0"], capsys)
    assert code == 0, err
    labels = tifffile.imread(files.dir / "l.tif")
    assert labels.shape == (64, 64) and labels[32, 32] == 1


def test_stale_temp_files_of_a_killed_run_are_cleaned(files, monkeypatch, capsys):
    """Bug: kill -9 left .tmp files that no later run removed. Only our own, old ones go."""
    from tests.core.roi_fakes import BoxFillPredictor

    images, out = files.dir / "imgs", files.dir / "out"
    images.mkdir()
    out.mkdir()
    tifffile.imwrite(images / "a.tif", tiny_image())
    (files.dir / "t.csv").write_text(f"image,{BOX_HEADER}\na.tif,16,16,47,47\n")
    left = out / ".a.tif.medsam-tmp-k2j4l5m6.tif"  # what os.replace never got to rename
    young = out / ".b.tif.medsam-tmp-abcdefgh.tif"  # may belong to a run still writing: kept
    foreign = out / ".notes.tmp"  # not ours: kept, however old
    for p in (left, young, foreign):
        p.write_bytes(b"half a file")
    age(left)
    age(foreign)
    monkeypatch.setattr("medsam_core.cli_batch.load_from_args", lambda args: None)
    monkeypatch.setattr("medsam_core.predictor.Predictor", lambda model: BoxFillPredictor())
    code, err = run_cli(["batch", "--images", images, "--out", out, "--boxes", files.dir / "t.csv"], capsys)
    assert code == 0, err
    assert not left.exists() and young.exists() and foreign.exists()


if sys.platform == "win32":  # symlinks and hard links need privileges there
    pytestmark = pytest.mark.skip("POSIX links")
