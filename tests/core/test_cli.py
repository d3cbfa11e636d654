"""The ``medsam`` command: end to end on the shipped sample with the real weights, errors, info."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

import nibabel as nib
import numpy as np
import pytest
import tifffile

from medsam_core import cli
from medsam_core.metrics import dice
from medsam_core.registry import LITE_MEDSAM_SHA256
from medsam_core.samples import nuclei, nuclei_paths


@pytest.fixture
def real_model(monkeypatch, lite_model):
    """Every subcommand gets the session's real LiteMedSAM instead of loading it again."""
    monkeypatch.setattr(cli, "load_from_args", lambda args: lite_model)
    return lite_model


def write_boxes(path, boxes, z=None):
    lines = ["x_min,y_min,x_max,y_max" + (",z" if z is not None else "")]
    for i, b in enumerate(boxes):
        lines.append(",".join(str(int(v)) for v in b) + (f",{z[i]}" if z is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_segment_sample_to_tiff_with_overlay(tmp_path, real_model, capsys):
    s = nuclei()
    out, png = tmp_path / "labels.tif", tmp_path / "overlay.png"
    code = cli.main(["segment", str(s.image_path), "--boxes", str(s.boxes_path), "--out", str(out),
                     "--overlay", str(png)])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (256, 256) and labels.dtype == np.uint8
    # box i -> id i+1: each object's centre lies inside its own box
    for i, (x0, y0, x1, y1) in enumerate(s.boxes, start=1):
        ys, xs = np.nonzero(labels == i)
        assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1
    scores = [dice(labels == i, s.labels == i) for i in range(1, len(s.boxes) + 1)]
    assert np.mean(scores) >= 0.65  # measured 0.71 on this crop
    assert png.exists() and png.stat().st_size > 10_000
    assert "25 boxes" in capsys.readouterr().out


@pytest.mark.slow
def test_segment_nifti_volume_keeps_affine(tmp_path, real_model):
    s = nuclei()
    vol = np.stack([s.image // 2, s.image, s.image // 3])  # (z, y, x)
    aff = np.array([[0, 0, -2.5, 30.0], [0.4, 0, 0, -12.0], [0, 0.4, 0, 7.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol.T, aff), tmp_path / "vol.nii.gz")  # nibabel order (x, y, z)
    boxes = write_boxes(tmp_path / "b.csv", s.boxes[:4], z=[1, 1, 1, 1])
    out = tmp_path / "lab.nii.gz"
    assert cli.main(["segment", str(tmp_path / "vol.nii.gz"), "--boxes", str(boxes), "--out", str(out)]) == 0
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    lab = np.asanyarray(img.dataobj).T  # back to (z, y, x)
    assert lab.shape == vol.shape
    assert not lab[0].any() and not lab[2].any()
    for i in range(1, 5):
        assert dice(lab[1] == i, s.labels == i) > 0.5


@pytest.mark.slow
def test_demo_writes_labels_overlay_and_scores(tmp_path, real_model, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    labels = tifffile.imread(tmp_path / "d" / "labels.tif")
    assert labels.max() == 25
    assert (tmp_path / "d" / "overlay.png").exists()
    mean_dice = float(text.split("mean Dice")[1].split()[0])
    assert mean_dice >= 0.65 and "NSD" in text


def test_a_run_that_ends_before_the_fast_encoder_says_so(lite_model, capsys):
    """A run whose encoder export is still going tells the user once, on stderr; otherwise nothing."""
    from medsam_core import Predictor

    predictor = Predictor(lite_model, encoder_backend="torch")
    cli.note_background_engine(predictor)  # no encode yet: no backend, no note
    assert capsys.readouterr().err == ""
    predictor._backend = types.SimpleNamespace(name="torch", info={"pending": True})
    cli.note_background_engine(predictor)
    assert "being built in the background" in capsys.readouterr().err
    predictor._backend = types.SimpleNamespace(name="openvino", info={"engine": "openvino"})
    cli.note_background_engine(predictor)
    assert capsys.readouterr().err == "" and predictor.encoder_state() == "openvino"
    predictor._backend = types.SimpleNamespace(name="openvino", info={"engine": "openvino", "precision": "bf16"})
    assert predictor.encoder_state() == "openvino bf16"  # an opted-in low precision is named
    predictor._backend = types.SimpleNamespace(name="torch", info={"engine": "openvino", "precision": "bf16"})
    assert predictor.encoder_state() == "torch"  # fell back to eager: float32


@pytest.mark.slow
def test_info_prints_model_hash_device_versions(real_model, capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert LITE_MEDSAM_SHA256 in text
    assert "lite_medsam" in text and "device:" in text and "cpu" in text
    assert "torch:" in text and "numpy:" in text and "napari-medsam:" in text
    assert "checkpoint:" not in text


def test_info_on_a_fine_tuned_checkpoint_says_what_it_is(tmp_path, lite_model, capsys):
    """`info --checkpoint` showed only "lite_medsam: ... bundled trained weights" for a fine-tune."""
    import torch

    from medsam_core.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "round_002.pt", lite_model,
                           {"base_model": "lite_medsam", "mode": "decoder", "round": 2, "dice_after": 0.8612})
    assert cli.main(["info", "--checkpoint", str(path)]) == 0
    text = capsys.readouterr().out
    assert "checkpoint:    fine-tuned: mode decoder, round 2, held-out Dice 0.861" in text, text
    if not torch.cuda.is_available():  # the refusal names the command's option, not the API's argument
        assert cli.main(["info", "--device", "cuda"]) == 2
        assert "--device cpu" in capsys.readouterr().err


def bad_csvs():
    return {
        "missing column": ("x_min,y_min,x_max\n1,2,3\n", "missing: y_max"),
        "not a number": ("x_min,y_min,x_max,y_max\n1,2,abc,40\n", "line 2"),
        "outside": ("x_min,y_min,x_max,y_max\n400,400,500,500\n", "outside"),
        "reversed": ("x_min,y_min,x_max,y_max\n50,50,10,60\n", "reversed"),
        "z on 2D": ("x_min,y_min,x_max,y_max,z\n1,2,30,40,0\n", "2D"),
    }


@pytest.mark.parametrize("case", list(bad_csvs()))
def test_bad_boxes_exit_2_with_message_and_no_output(tmp_path, capsys, monkeypatch, case):
    def no_model(args):
        raise AssertionError("the model must not be loaded for bad input")

    monkeypatch.setattr(cli, "load_from_args", no_model)
    text, message = bad_csvs()[case]
    (tmp_path / "b.csv").write_text(text)
    out = tmp_path / "labels.tif"
    code = cli.main(["segment", str(nuclei_paths()["image"]), "--boxes", str(tmp_path / "b.csv"),
                     "--out", str(out), "--overlay", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medsam: error: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]


def test_3d_image_without_z_column_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_from_args", lambda a: pytest.fail("model loaded"))
    tifffile.imwrite(tmp_path / "v.tif", np.random.default_rng(0).integers(0, 99, (3, 32, 32), np.uint16),
                     imagej=True, metadata={"axes": "ZYX"})
    write_boxes(tmp_path / "b.csv", [[1, 1, 10, 10]])
    code = cli.main(["segment", str(tmp_path / "v.tif"), "--boxes", str(tmp_path / "b.csv"),
                     "--out", str(tmp_path / "o.tif")])
    assert code == 2 and "add a z column" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("extra, message", [
    (["--out", "x.png"], "must end in .tif"),
    (["--out", "labels.tif", "--intensity", "ct:elbow"], "CT window"),
    (["--out", "nofolder/labels.tif"], "does not exist"),
])
def test_bad_options_exit_2(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_from_args", lambda a: pytest.fail("model loaded"))
    write_boxes(tmp_path / "b.csv", [[1, 1, 10, 10]])
    code = cli.main(["segment", str(nuclei_paths()["image"]), "--boxes", "b.csv", *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]


def test_unreadable_image_exit_2(tmp_path, capsys):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff" * 10)
    write_boxes(tmp_path / "b.csv", [[1, 1, 10, 10]])
    code = cli.main(["segment", str(tmp_path / "bad.tif"), "--boxes", str(tmp_path / "b.csv"),
                     "--out", str(tmp_path / "o.tif")])
    assert code == 2 and "cannot read" in capsys.readouterr().err


def test_subcommand_modules_register_their_commands(monkeypatch, capsys):
    fake = types.ModuleType("medsam_fake_cmd")

    def register(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: print("hi") or 0)

    fake.register = register
    monkeypatch.setitem(sys.modules, "medsam_fake_cmd", fake)
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["medsam_fake_cmd", "medsam_core.not_written_yet"])
    assert cli.main(["hello"]) == 0
    assert capsys.readouterr().out.strip() == "hi"
    assert isinstance(cli.build_parser(), argparse.ArgumentParser)


def test_console_script_error_has_no_traceback(tmp_path):
    (tmp_path / "b.csv").write_text("x_min,y_min\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "medsam_core.cli", "segment", str(nuclei_paths()["image"]), "--boxes",
         str(tmp_path / "b.csv"), "--out", str(tmp_path / "o.tif")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("medsam: error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.tif").exists()
