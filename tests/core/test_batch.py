"""Batch over a folder: box sources, resume, failures, the `medsam batch` command."""

from __future__ import annotations

import json
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medsam_core import cli
from medsam_core.batch import REPORT_NAME, segment_folder
from medsam_core.boxsources import boxes_from_labels, read_any_boxes, read_shapes_csv, read_table
from medsam_core.errors import ImageError, PromptError

from .roi_fakes import BoxFillPredictor

BOXES = {"a.tif": [[10, 10, 30, 40], [50, 50, 70, 60]], "b.tif": [[5, 5, 20, 20]], "c.tif": [[0, 0, 63, 63]]}


def disk(shape=(96, 128), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(10, 1000, size=shape).astype(np.uint16)


def make_folder(tmp_path, names=("a.tif", "b.tif", "c.tif")):
    images = tmp_path / "images"
    images.mkdir()
    for k, n in enumerate(names):
        tifffile.imwrite(images / n, disk(seed=k))
    rows = ["image,x_min,y_min,x_max,y_max"] + [f"{n},{','.join(map(str, b))}" for n in names for b in BOXES[n]]
    csv = tmp_path / "boxes.csv"
    csv.write_text("\n".join(rows) + "\n")
    return images, csv


def test_folder_round_trip_and_resume(tmp_path):
    images, csv = make_folder(tmp_path)
    out = tmp_path / "out"
    pred = BoxFillPredictor()
    seen = []
    report = segment_folder(images, out, boxes=csv, predictor=pred, on_progress=lambda d, t, n: seen.append((d, t, n)))
    assert report.ok and [r.status for r in report.results] == ["done"] * 3
    assert seen[-1] == (3, 3, "c.tif")
    labels = tifffile.imread(out / "a.tif")
    assert labels.shape == (96, 128) and labels[10:41, 10:31].min() == 1 and labels[50:61, 50:71].min() == 2
    assert labels.sum() == 1 * 21 * 31 + 2 * 21 * 11
    calls = pred.encoder_calls
    assert calls == 3
    # second run: everything is done, nothing is encoded, nothing is rewritten
    mtime = (out / "a.tif").stat().st_mtime_ns
    report = segment_folder(images, out, boxes=csv, predictor=pred)
    assert [r.status for r in report.results] == ["skipped"] * 3 and report.ok
    assert pred.encoder_calls == calls and (out / "a.tif").stat().st_mtime_ns == mtime
    # one output removed: only that image is redone
    (out / "b.tif").unlink()
    report = segment_folder(images, out, boxes=csv, predictor=pred)
    assert [r.status for r in report.results] == ["skipped", "done", "skipped"]
    assert pred.encoder_calls == calls + 1
    report = segment_folder(images, out, boxes=csv, predictor=pred, overwrite=True)
    assert [r.status for r in report.results] == ["done"] * 3
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["ok"] and len(saved["results"]) == 3


def test_a_corrupt_file_is_reported_and_the_rest_go_on(tmp_path):
    images, csv = make_folder(tmp_path)
    (images / "b.tif").write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    report = segment_folder(images, out, boxes=csv, predictor=BoxFillPredictor())
    assert [r.status for r in report.results] == ["done", "failed", "done"] and not report.ok
    assert "b.tif" in report.failed[0].message or "cannot read" in report.failed[0].message
    assert (out / "a.tif").is_file() and (out / "c.tif").is_file() and not (out / "b.tif").exists()
    assert json.loads((out / REPORT_NAME).read_text())["results"][1]["status"] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", REPORT_NAME, "c.tif"]  # no partial files


def test_bad_boxes_fail_only_their_image(tmp_path):
    images, csv = make_folder(tmp_path)
    csv.write_text(csv.read_text() + "c.tif,500,500,600,600\n")  # outside the 128x96 image
    report = segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor())
    assert [r.status for r in report.results] == ["done", "done", "failed"]
    assert "outside" in report.failed[0].message


def test_output_folder_may_not_be_an_input(tmp_path):
    images, csv = make_folder(tmp_path)
    before = sorted(p.name for p in images.iterdir())
    with pytest.raises(ImageError, match="also an input folder"):
        segment_folder(images, images, boxes=csv, predictor=BoxFillPredictor())
    labels = tmp_path / "labels"
    labels.mkdir()
    with pytest.raises(ImageError, match="also an input folder"):
        segment_folder(images, labels, boxes_from_labels=labels, predictor=BoxFillPredictor())
    assert sorted(p.name for p in images.iterdir()) == before


def test_unknown_image_in_csv_and_missing_source_are_argument_errors(tmp_path):
    images, csv = make_folder(tmp_path)
    csv.write_text(csv.read_text() + "zzz.tif,1,1,5,5\n")
    with pytest.raises(PromptError, match="zzz.tif"):
        segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor())
    assert not (tmp_path / "out").exists()
    with pytest.raises(PromptError, match="not both"):
        segment_folder(images, tmp_path / "out", predictor=BoxFillPredictor())


def test_per_image_shapes_csvs_and_missing_boxes(tmp_path):
    images, _ = make_folder(tmp_path)
    folder = tmp_path / "shapes"
    folder.mkdir()
    (folder / "a.csv").write_text(
        "index,shape-type,vertex-index,axis-0,axis-1\n"
        "0,rectangle,0,10,10\n0,rectangle,1,10,30\n0,rectangle,2,40,30\n0,rectangle,3,40,10\n")
    (folder / "b.csv").write_text("x_min,y_min,x_max,y_max\n5,5,20,20\n")
    report = segment_folder(images, tmp_path / "out", boxes=folder, predictor=BoxFillPredictor())
    assert [r.status for r in report.results] == ["done", "done", "no_boxes"] and report.ok
    labels = tifffile.imread(tmp_path / "out" / "a.tif")
    assert labels[10:41, 10:31].min() == 1 and labels.sum() == 21 * 31


def test_read_shapes_csv_2d_and_3d(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n"
                 "0,rectangle,0,3,10.5,20\n0,rectangle,1,3,10.5,40\n0,rectangle,2,3,30,40\n0,rectangle,3,3,30,20\n"
                 "1,ellipse,0,7,1,2\n1,ellipse,1,7,1,9\n1,ellipse,2,7,8,9\n1,ellipse,3,7,8,2\n")
    boxes, z = read_shapes_csv(p)
    np.testing.assert_array_equal(boxes, [[20, 10.5, 40, 30], [2, 1, 9, 8]])
    np.testing.assert_array_equal(z, [3, 7])
    assert read_any_boxes(p)[0].shape == (2, 4)
    p.write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,rectangle,0,3,1,1\n0,rectangle,1,4,5,5\n")
    with pytest.raises(PromptError, match="one slice"):
        read_shapes_csv(p)


def test_read_table_accepts_stems(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("image,x_min,y_min,x_max,y_max,z\na,1,2,3,4,0\nb.nii.gz,5,6,7,8,2\n")
    table = read_table(p, ["a.tif", "b.nii.gz"])
    np.testing.assert_array_equal(table["a.tif"][0], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(table["b.nii.gz"][1], [2])
    p.write_text("x_min,y_min,x_max,y_max\n1,2,3,4\n")
    with pytest.raises(PromptError, match="image"):
        read_table(p, ["a.tif"])


def test_read_table_refuses_a_fractional_slice_as_segment_does(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("image,x_min,y_min,x_max,y_max,z\na,1,2,3,4,8.0\n")
    np.testing.assert_array_equal(read_table(p, ["a.tif"])["a.tif"][1], [8])
    for z in ("8.7", "-0.5"):  # never truncated to a slice the user did not name
        p.write_text(f"image,x_min,y_min,x_max,y_max,z\na,1,2,3,4,{z}\n")
        with pytest.raises(PromptError, match=f"z={z} is not a whole slice index"):
            read_table(p, ["a.tif"])


def test_one_boxes_csv_for_a_folder_of_images_and_volumes(tmp_path):
    """An empty z marks a 2D image's rows: one CSV serves a folder that mixes images and volumes.
    Before, the empty z refused the whole run; a z of 0 on the 2D rows failed both images."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(images / "flat.tif", rng.integers(0, 900, (48, 64)).astype(np.uint16))
    tifffile.imwrite(images / "stack.tif", rng.integers(0, 900, (5, 48, 64)).astype(np.uint16))
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x_min,y_min,x_max,y_max,z\nflat.tif,10,10,30,40,\nstack.tif,5,5,20,20,3\n")
    table = read_table(csv, ["flat.tif", "stack.tif"])
    assert table["flat.tif"][1] is None and table["stack.tif"][1].tolist() == [3]
    report = segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor())
    assert [(Path(r.image).name, r.status) for r in report.results] == [("flat.tif", "done"), ("stack.tif", "done")]
    assert tifffile.imread(tmp_path / "out" / "flat.tif").sum() == 21 * 31
    stack = tifffile.imread(tmp_path / "out" / "stack.tif")
    assert stack[3].sum() == 16 * 16 and stack.sum() == stack[3].sum()
    csv.write_text("image,x_min,y_min,x_max,y_max,z\nstack.tif,10,10,30,40,\nstack.tif,5,5,20,20,3\n")
    with pytest.raises(PromptError, match="some boxes of stack.tif have a z and some do not"):
        read_table(csv, ["flat.tif", "stack.tif"])


def test_pattern_with_one_boxes_csv_for_the_whole_folder(tmp_path):
    """--pattern picks a subset; the folder's boxes CSV still names the others: their rows are skipped,
    a row naming a file the folder does not have is still refused."""
    images, _ = make_folder(tmp_path, names=("a.tif", "b.tif"))
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x_min,y_min,x_max,y_max\na.tif,10,10,30,40\nb.tif,5,5,20,20\n")
    report = segment_folder(images, tmp_path / "out", boxes=csv, patterns=["a*"], predictor=BoxFillPredictor())
    assert [(Path(r.image).name, r.status) for r in report.results] == [("a.tif", "done")]
    assert tifffile.imread(tmp_path / "out" / "a.tif").sum() == 21 * 31
    assert not (tmp_path / "out" / "b.tif").exists()
    csv.write_text("image,x_min,y_min,x_max,y_max\na.tif,10,10,30,40\nzz.tif,5,5,20,20\n")
    with pytest.raises(PromptError, match="'zz.tif' is not in the image folder"):
        segment_folder(images, tmp_path / "o2", boxes=csv, patterns=["a*"], predictor=BoxFillPredictor())


def test_boxes_from_labels_2d_3d_and_margin():
    lab = np.zeros((20, 30), np.uint16)
    lab[2:5, 3:9] = 4
    lab[10:19, 20:29] = 9
    boxes, z, ids = boxes_from_labels(lab, margin=2)
    assert z is None
    np.testing.assert_array_equal(ids, [4, 9])
    np.testing.assert_array_equal(boxes, [[1, 0, 10, 6], [18, 8, 29, 19]])  # clipped at the border
    vol = np.stack([lab, np.zeros_like(lab), lab])
    boxes, z, ids = boxes_from_labels(vol)
    np.testing.assert_array_equal(z, [0, 0, 2, 2])
    np.testing.assert_array_equal(ids, [4, 9, 4, 9])


def test_boxes_from_a_binary_mask_are_one_per_object():
    """A thresholded 0/255 mask of 31 nuclei gave one box around all of them: one object of 33,235 px,
    "1 done", no warning. Each connected object now gets its box (and a hint to give ids)."""
    lab = np.zeros((40, 60), np.uint8)
    lab[2:6, 3:9] = lab[10:19, 20:29] = lab[30:35, 40:58] = 255
    with pytest.warns(UserWarning, match="look like a binary mask"):
        boxes, z, ids = boxes_from_labels(lab)
    np.testing.assert_array_equal(ids, [1, 2, 3])
    np.testing.assert_array_equal(boxes, [[3, 2, 8, 5], [20, 10, 28, 18], [40, 30, 57, 34]])
    one = np.zeros_like(lab)
    one[5:9, 5:9] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one object with one id: nothing to say
        assert boxes_from_labels(one)[0].shape == (1, 4)


def test_segment_folder_from_labels_keeps_ids(tmp_path):
    images, _ = make_folder(tmp_path, names=("a.tif",))
    labels = tmp_path / "cellpose"
    labels.mkdir()
    lab = np.zeros((96, 128), np.uint16)
    lab[10:20, 10:25] = 7
    lab[50:60, 60:90] = 3
    tifffile.imwrite(labels / "a_masks.tif", lab)  # not paired: stems differ
    report = segment_folder(images, tmp_path / "o1", boxes_from_labels=labels, predictor=BoxFillPredictor())
    assert report.results[0].status == "failed" and "no label image" in report.results[0].message
    tifffile.imwrite(labels / "a.tif", lab)
    report = segment_folder(images, tmp_path / "o2", boxes_from_labels=labels, predictor=BoxFillPredictor())
    out = tifffile.imread(tmp_path / "o2" / "a.tif")
    np.testing.assert_array_equal(out, lab)  # box-filled masks of rectangles = the rectangles, ids kept


def test_cancel_stops_between_images(tmp_path):
    images, csv = make_folder(tmp_path)
    ev = threading.Event()
    report = segment_folder(images, tmp_path / "out", boxes=csv, predictor=BoxFillPredictor(),
                            on_progress=lambda d, t, n: ev.set(), cancel=ev)
    assert report.cancelled and [r.status for r in report.results] == ["done"]


def test_cli_batch_exit_codes(tmp_path, monkeypatch, capsys):
    images, csv = make_folder(tmp_path)
    (images / "b.tif").write_bytes(b"garbage")
    monkeypatch.setattr("medsam_core.cli_batch.load_from_args", lambda args: None)
    monkeypatch.setattr("medsam_core.predictor.Predictor", lambda model: BoxFillPredictor())
    out = tmp_path / "out"
    code = cli.main(["batch", "--images", str(images), "--out", str(out), "--boxes", str(csv)])
    err = capsys.readouterr().err
    assert code == 1 and "b.tif" in err
    assert (out / "a.tif").is_file() and (out / "c.tif").is_file()
    tifffile.imwrite(images / "b.tif", disk(seed=5))  # fixed: only b is done, a and c are skipped
    assert cli.main(["batch", "--images", str(images), "--out", str(out), "--boxes", str(csv)]) == 0
    assert cli.main(["batch", "--images", str(images), "--out", str(images), "--boxes", str(csv)]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse: neither --boxes nor --boxes-from-labels
        cli.main(["batch", "--images", str(images), "--out", str(out)])
    assert exc.value.code == 2


@pytest.mark.slow
def test_batch_with_real_model_on_the_sample(tmp_path, lite_model):
    from medsam_core import Predictor
    from medsam_core.metrics import dice
    from medsam_core.samples import nuclei

    s = nuclei()
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "n1.tif", s.image)
    tifffile.imwrite(images / "n2.tif", s.image[:, ::-1].copy())
    flipped = s.boxes.copy()
    flipped[:, [0, 2]] = s.image.shape[1] - 1 - s.boxes[:, [2, 0]]
    rows = ["image,x_min,y_min,x_max,y_max"]
    rows += [f"n1.tif,{','.join(map(str, b))}" for b in s.boxes] + [f"n2.tif,{','.join(map(str, b))}" for b in flipped]
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    pred = Predictor(lite_model)
    report = segment_folder(images, tmp_path / "out", boxes=tmp_path / "b.csv", predictor=pred)
    calls = pred.encoder_calls
    assert report.ok and 2 <= calls < 2 * len(s.boxes)  # crops are shared between nearby nuclei
    lab = tifffile.imread(tmp_path / "out" / "n1.tif")
    d = np.mean([dice(lab == i + 1, s.labels == i + 1) for i in range(len(s.boxes))])
    assert d > 0.7, d  # `medsam demo` (whole image) measures 0.72 on this sample
    report = segment_folder(images, tmp_path / "out", boxes=tmp_path / "b.csv", predictor=pred)
    assert [r.status for r in report.results] == ["skipped", "skipped"] and pred.encoder_calls == calls


@pytest.mark.slow
def test_the_scripting_doc_example_runs(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "scripting.md").read_text()
    block = text.split("### Runnable example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(block, "docs/scripting.md", "exec"), {})
    out = capsys.readouterr().out
    assert "2 images: 2 done" in out and "2 images: 0 done, 2 skipped" in out
    dice_value = float(out.split("mean Dice ")[1].split()[0])
    assert dice_value > 0.7


def test_boxes_as_a_dict_from_a_script(tmp_path):
    images, _ = make_folder(tmp_path, names=("a.tif", "b.tif"))
    report = segment_folder(images, tmp_path / "out", boxes={"a": [[10, 10, 30, 40]]}, predictor=BoxFillPredictor())
    assert [r.status for r in report.results] == ["done", "no_boxes"]
    assert tifffile.imread(tmp_path / "out" / "a.tif").sum() == 21 * 31
    with pytest.raises(PromptError, match="not in the image folder"):
        segment_folder(images, tmp_path / "o2", boxes={"zz": [[1, 1, 4, 4]]}, predictor=BoxFillPredictor())


def test_sigterm_stops_a_batch_like_ctrl_c_and_the_report_says_so(tmp_path):
    """kill / timeout / a cluster's wall-time limit sends SIGTERM: the command stops at once, writes a
    report that says it was cancelled and which images were not processed, and exits 143; a report
    of an earlier complete run is not left saying "ok". In a fresh interpreter (a signal to the
    test process itself would meet whatever earlier tests left running there)."""
    import subprocess
    import textwrap

    images, csv = make_folder(tmp_path)
    out = tmp_path / "out"
    segment_folder(images, out, boxes=csv, predictor=BoxFillPredictor())
    assert json.loads((out / REPORT_NAME).read_text())["ok"]
    code = textwrap.dedent(
        f"""
        import os, signal, sys, types
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from roi_fakes import BoxFillPredictor
        from medsam_core import cli
        from medsam_core.batch import segment_folder

        def register(sub):
            def run(args):
                def kill_after_first(done, total, name):
                    if done == 1:
                        os.kill(os.getpid(), signal.SIGTERM)

                segment_folder({str(images)!r}, {str(out)!r}, boxes={str(csv)!r}, predictor=BoxFillPredictor(),
                               overwrite=True, on_progress=kill_after_first)
                return 0

            sub.add_parser("fakebatch").set_defaults(func=run)

        fake = types.ModuleType("medsam_fake_batch")
        fake.register = register
        sys.modules["medsam_fake_batch"] = fake
        cli.SUBCOMMAND_MODULES = ["medsam_fake_batch"]
        before = signal.getsignal(signal.SIGTERM)
        code = cli.main(["fakebatch"])
        assert signal.getsignal(signal.SIGTERM) is before  # a script calling cli.main keeps its handler
        sys.exit(code)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert "medsam: terminated" in proc.stderr
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["cancelled"] and not report["ok"] and report["not_processed"] == ["b.tif", "c.tif"]
