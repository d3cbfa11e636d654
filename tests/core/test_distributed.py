"""``segment_folder(client=...)`` / ``medsam batch --workers N`` on a Dask LocalCluster bound to 127.0.0.1.

Behaviour tests use the real bundled weights on small synthetic images and compare the output
files byte for byte with the in-process path (PyTorch encoder on both sides: the default "auto"
switches to OpenVINO once a background build finishes, at a moment that depends on timing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from medsam_core.batch import REPORT_NAME, BoxSource, segment_folder
from medsam_core.errors import CheckpointError, PromptError

pytest.importorskip("distributed")

BACKEND = "torch"


def make_folder(root, n=4, volume=False):
    """n small 2D images (a bright disk each) [+ one (3, 96, 112) volume]; boxes in one CSV (2D only)
    or, with the volume, a folder of <stem>.csv (the volume's with a z column)."""
    images = root / "images"
    images.mkdir()
    rows = ["image,x_min,y_min,x_max,y_max"]
    for k in range(n):
        yy, xx = np.mgrid[:96, :112]
        disk = (yy - 40 - k) ** 2 + (xx - 50) ** 2 <= (18 + k) ** 2
        noise = np.random.default_rng(k).integers(0, 40, (96, 112))
        tifffile.imwrite(images / f"i{k}.tif", (noise + 180 * disk).astype(np.uint8))
        rows.append(f"i{k}.tif,{28 - k},{18},{72 + k},{62 + 2 * k}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    if not volume:
        return images, root / "boxes.csv"
    folder = root / "boxes"
    folder.mkdir()
    for k, row in enumerate(rows[1:]):
        (folder / f"i{k}.csv").write_text("x_min,y_min,x_max,y_max\n" + row.split(",", 1)[1] + "\n")
    vol = np.stack([np.roll(tifffile.imread(images / f"i{k % n}.tif"), 1 + k, axis=1) for k in range(3)])
    tifffile.imwrite(images / "vol.tif", vol, photometric="minisblack")
    (folder / "vol.csv").write_text("x_min,y_min,x_max,y_max,z\n" + "".join(f"28,18,72,62,{z}\n" for z in range(3)))
    return images, folder


@pytest.fixture(scope="module")
def client():
    from medsam_core.distributed import local_client

    with local_client(workers=2, dashboard=False, torch_threads=1) as c:
        yield c


def test_importing_the_batch_does_not_import_dask():
    code = "import sys, medsam_core.batch, medsam_core.cli_batch; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_unit_carries_only_its_own_boxes(tmp_path):
    images, csv = make_folder(tmp_path, n=3)
    files = sorted(images.iterdir())
    source = BoxSource(files, boxes=csv)
    part = source.for_image(files[1])
    assert list(part.table) == ["i1.tif"] and len(source.table) == 3
    np.testing.assert_array_equal(part.get(files[1], (96, 112))[0], source.get(files[1], (96, 112))[0])


def test_worker_refuses_weights_with_another_sha256(tmp_path):
    """The check a worker runs before loading: a file with other bytes than the client hashed."""
    from medsam_core.distributed import ModelPlugin, model_plugin

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x" * 100)
    plugin = model_plugin("lite_medsam", checkpoint=weights)
    weights.write_bytes(b"y" * 100)  # the worker's view of that path differs
    plugin.setup(SimpleNamespace(address="tcp://127.0.0.1:1"))
    with pytest.raises(CheckpointError, match="sha256 .* the client's"):
        plugin.predictor()
    gone = ModelPlugin("lite_medsam", str(tmp_path / "nope.pth"), "0" * 64)
    gone.setup(SimpleNamespace(address="tcp://127.0.0.1:1"))
    with pytest.raises(CheckpointError, match="do not exist there"):
        gone.predictor()
    with pytest.raises(CheckpointError, match="does not exist"):
        model_plugin("lite_medsam", checkpoint=tmp_path / "missing.pth")


@pytest.mark.slow
def test_two_workers_write_the_same_bytes_as_in_process_and_resume(tmp_path, client):
    images, csv = make_folder(tmp_path, n=2, volume=True)
    ref = segment_folder(images, tmp_path / "ref", boxes=csv, encoder_backend=BACKEND)
    seen = []
    rep = segment_folder(images, tmp_path / "dist", boxes=csv, client=client, encoder_backend=BACKEND,
                         on_progress=lambda d, t, n: seen.append((d, t)))
    assert ref.ok and rep.ok and [r.status for r in rep.results] == ["done"] * 3
    assert seen[-1] == (3, 3) and rep.encoder_calls == ref.encoder_calls == 5  # volume: 3 slices, 1 unit
    for name in ("i0.tif", "i1.tif", "vol.tif"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "dist" / name).read_bytes(), name
    saved, saved_ref = (json.loads((tmp_path / d / REPORT_NAME).read_text()) for d in ("dist", "ref"))
    assert saved.keys() == saved_ref.keys() and saved["results"][0].keys() == saved_ref["results"][0].keys()
    # resume: verified outputs skipped, a damaged one redone, nothing else rewritten
    (tmp_path / "dist" / "i1.tif").write_bytes(b"")
    mtime = (tmp_path / "dist" / "i0.tif").stat().st_mtime_ns
    again = segment_folder(images, tmp_path / "dist", boxes=csv, client=client, encoder_backend=BACKEND)
    assert [r.status for r in again.results] == ["skipped", "done", "skipped"]
    assert "not usable" in again.results[1].message
    assert (tmp_path / "dist" / "i0.tif").stat().st_mtime_ns == mtime
    assert (tmp_path / "ref" / "i1.tif").read_bytes() == (tmp_path / "dist" / "i1.tif").read_bytes()


@pytest.mark.slow
def test_a_bad_image_fails_alone_and_a_loaded_predictor_is_refused(tmp_path, client):
    images, csv = make_folder(tmp_path, n=2)
    (images / "i1.tif").write_bytes(b"not a tiff")
    rep = segment_folder(images, tmp_path / "out", boxes=csv, client=client, encoder_backend=BACKEND)
    assert [r.status for r in rep.results] == ["done", "failed"] and not rep.ok
    with pytest.raises(PromptError, match="not a loaded Predictor"):
        segment_folder(images, tmp_path / "out2", boxes=csv, client=client, predictor=SimpleNamespace(set_image=1))


@pytest.mark.slow
def test_cancel_and_ctrl_c_cancel_the_futures_and_report_honestly(tmp_path, client):
    from medsam_core.distributed import submit_folder

    images, csv = make_folder(tmp_path, n=4)
    handle = submit_folder(client, images, tmp_path / "out", boxes=csv, encoder_backend=BACKEND)
    report = handle.report(cancel=lambda: True)  # cancelled before anything is collected
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved["cancelled"] and not saved["ok"] and saved["total"] == 4
    assert saved["not_processed"] == report.not_processed and len(report.not_processed) == 4
    assert all(f.cancelled() or f.done() for f in handle.futures.values())


    def interrupt(done, total, name):  # Ctrl-C while the first result is collected
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_folder(images, tmp_path / "out2", boxes=csv, client=client, encoder_backend=BACKEND,
                       on_progress=interrupt)
    saved = json.loads((tmp_path / "out2" / REPORT_NAME).read_text())
    assert saved["cancelled"] and not saved["ok"] and len(saved["results"]) + len(saved["not_processed"]) == 4


@pytest.mark.slow
def test_a_killed_worker_s_unit_is_run_again_elsewhere(tmp_path, client):
    """SIGKILL one worker process while it runs a unit: every output is made and verified,
    the report says which unit was run again."""
    from medsam_core.batch import existing_output_problem
    from medsam_core.distributed import submit_folder

    images, csv = make_folder(tmp_path, n=6)
    handle = submit_folder(client, images, tmp_path / "out", boxes=csv, encoder_backend=BACKEND)
    deadline = time.monotonic() + 60
    busy = {}
    while not busy and time.monotonic() < deadline:  # a worker with a unit running
        busy = {w: ts for w, ts in client.processing().items() if ts}
        time.sleep(0.05)
    victim = sorted(busy)[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, 9)
    report = handle.report()
    assert report.ok, report.summary()
    assert sum(r.retries for r in report.results) >= 1
    assert any("worker died" in r.message for r in report.results)
    for k in range(6):
        out = tmp_path / "out" / f"i{k}.tif"
        assert existing_output_problem(out, images / f"i{k}.tif") is None
    assert not [p for p in (tmp_path / "out").iterdir() if "medsam-tmp" in p.name]
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it: later tests keep 2 workers


@pytest.mark.slow
def test_cli_workers_1_matches_in_process(tmp_path, capsys, monkeypatch):
    from medsam_core import cli

    monkeypatch.setenv("MEDSAM_ENCODER_BACKEND", BACKEND)  # the workers inherit the environment
    images, csv = make_folder(tmp_path, n=2)
    assert cli.main(["batch", "--images", str(images), "--out", str(tmp_path / "a"), "--boxes", str(csv)]) == 0
    code = cli.main(["batch", "--images", str(images), "--out", str(tmp_path / "b"), "--boxes", str(csv),
                     "--workers", "1", "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 0 and "Dask, 1 worker(s)" in err and "dashboard" not in err
    for name in ("i0.tif", "i1.tif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
