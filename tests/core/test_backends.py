"""Encoder backends: the exported OpenVINO engine against PyTorch eager, its disk cache, its
re-export after the weights change, and every fallback to eager (missing, failing, refused)."""

from __future__ import annotations

import copy
import json
import sys
import warnings

import numpy as np
import pytest

from medsam_core import Predictor, _engine_build, backends
from medsam_core import _openvino_engine as ove
from medsam_core.backends import EncoderBackend, EngineEncoder, TorchEncoder, make_encoder_backend
from medsam_core.checkpoint import state_dict_sha256
from medsam_core.preprocess import prepare_image

needs_openvino = pytest.mark.skipif(not backends.openvino_available(), reason="openvino is not installed")


def _boxes_from_labels(labels: np.ndarray, n: int = 4) -> np.ndarray:
    """XYXY boxes of the n largest labelled objects."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    boxes = []
    for i in ids[np.argsort(counts)[::-1][:n]]:
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.asarray(boxes, np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class _CountExports:
    """Wraps ``_openvino_engine._export`` to count real exports."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = ove._export

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(ove, "_export", counting)


@pytest.fixture(scope="session")
def ov_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def ov_backend(lite_model, ov_cache):
    """The OpenVINO engine of the real LiteMedSAM, exported once into a fresh cache."""
    if not backends.openvino_available():
        pytest.skip("openvino is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback would fail here
        backend = make_encoder_backend(lite_model, "openvino", cache_dir=ov_cache)
    return backend


# -- fast: settings and choice --------------------------------------------------------------------
def test_num_threads_setting_reads_env_and_rejects_bad_values(monkeypatch):
    monkeypatch.delenv("MEDSAM_NUM_THREADS", raising=False)
    assert backends.num_threads_setting() is None
    assert backends.num_threads_setting(3) == 3
    monkeypatch.setenv("MEDSAM_NUM_THREADS", "1")
    assert backends.num_threads_setting() == 1
    for bad in ("two", "0"):
        monkeypatch.setenv("MEDSAM_NUM_THREADS", bad)
        with pytest.raises(backends.EngineError, match="MEDSAM_NUM_THREADS"):
            backends.num_threads_setting()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path))
    assert backends.default_cache_dir() == tmp_path


def test_choice_torch_instance_and_unknown(lite_model, monkeypatch):
    monkeypatch.delenv("MEDSAM_ENCODER_BACKEND", raising=False)
    assert make_encoder_backend(lite_model, "torch").name == "torch"
    custom = TorchEncoder(lite_model)
    assert make_encoder_backend(lite_model, custom) is custom
    with pytest.raises(ValueError, match="unknown encoder backend"):
        make_encoder_backend(lite_model, "tensorrt")
    monkeypatch.setenv("MEDSAM_ENCODER_BACKEND", "openvno")  # a typo: a MedSAMError naming the variable
    with pytest.raises(backends.BackendChoiceError, match="MEDSAM_ENCODER_BACKEND='openvno': unknown"):
        make_encoder_backend(lite_model, None)
    monkeypatch.setenv("MEDSAM_ENCODER_BACKEND", "torch")
    assert make_encoder_backend(lite_model, None).name == "torch"
    assert Predictor(lite_model).encoder_backend.name == "torch"


def test_missing_openvino_falls_back_to_eager_with_warning(lite_model, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" now fails
    monkeypatch.setattr(backends, "_warned_missing", False)
    assert not backends.openvino_available()
    for choice in ("auto", "openvino"):
        with pytest.warns(RuntimeWarning, match="OpenVINO is not installed"):
            backend = make_encoder_backend(lite_model, choice, cache_dir=tmp_path)
        assert isinstance(backend, TorchEncoder)
    assert not any(tmp_path.iterdir())


@needs_openvino
def test_export_failure_falls_back_to_eager(lite_model, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(ove, "export_ir", broken)
    with pytest.warns(RuntimeWarning, match="converter crashed"):
        backend = make_encoder_backend(lite_model, "openvino", cache_dir=tmp_path)
    assert backend.name == "torch"

    # Nothing half-written is left where a later start would read it.
    assert not list(tmp_path.rglob("meta.json"))


@pytest.mark.slow
def test_inference_failure_switches_to_eager(lite_model):
    calls = []

    def failing(batch):
        calls.append(len(batch))
        raise RuntimeError("device lost")

    info = {"engine": "openvino", "encoder_id": lite_model.encoder_id}
    backend = EngineEncoder(failing, TorchEncoder(lite_model), info)
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="device lost"):
        out = backend.encode(x)
    np.testing.assert_allclose(out, TorchEncoder(lite_model).encode(x), atol=1e-6)
    assert backend.name == "torch"
    backend.encode(x)  # no second attempt at the broken engine
    assert calls == [1]


@pytest.mark.slow
def test_refused_export_is_remembered_and_eager_used(lite_model, monkeypatch, tmp_path):
    """An engine whose output drifts is refused at export, and the refusal is cached."""
    eager = TorchEncoder(lite_model)
    exports = _CountExports(monkeypatch)
    monkeypatch.setattr(ove, "export_ir", lambda enc, size, xml: xml.write_text("<fake/>"))
    monkeypatch.setattr(ove, "compile_engine", lambda folder, n, p: (lambda b: eager.encode(b) + 0.05))
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="differs from PyTorch"):
            backend = make_encoder_backend(lite_model, "openvino", cache_dir=tmp_path)
        assert backend.name == "torch"
    assert exports.calls == 1
    (meta,) = tmp_path.rglob("meta.json")
    assert '"accepted": false' in meta.read_text()


def test_encode_many_yields_each_batch(lite_model):
    class Doubler(EncoderBackend):
        name = "double"

        def encode(self, batch):
            return batch * 2

    batches = [np.ones((1, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), 3, np.float32)]
    outs = list(Doubler().encode_many(iter(batches)))
    assert [o.shape[0] for o in outs] == [1, 2]
    assert outs[1][0, 0, 0, 0] == 6


def test_torch_encoder_uses_thread_setting_and_restores_it(lite_model, monkeypatch):
    import torch

    seen = []
    model = copy.copy(lite_model)  # shallow: shares weights, own encode
    model.encode = lambda x: (seen.append(torch.get_num_threads()), torch.zeros(len(x), 256, 64, 64))[1]
    monkeypatch.setattr(TorchEncoder, "autocast_dtype", lambda self: None)
    before = torch.get_num_threads()
    monkeypatch.setenv("MEDSAM_NUM_THREADS", "1")
    TorchEncoder(model).encode(np.zeros((1, 3, 256, 256), np.float32))
    assert seen == [1]
    assert torch.get_num_threads() == before


# -- slow: the real engine -------------------------------------------------------------------------
@pytest.mark.slow
def test_engine_matches_pytorch_on_real_image(ov_backend, lite_model, dsb2018):
    assert ov_backend.name == "openvino"
    report = ov_backend.info["verification"]
    assert report["accepted"] and report["max_abs_diff"] < 1e-4 and min(report["mask_iou"]) >= 0.99
    image, _ = dsb2018
    x = prepare_image(image, lite_model.spec.preprocessing).tensor[None]
    ref = TorchEncoder(lite_model).encode(x)
    out = ov_backend.encode(x)
    assert out.shape == (1, 256, 64, 64) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-4, np.abs(out - ref).max()


@pytest.mark.slow
def test_engine_masks_equal_pytorch_masks_on_real_boxes(ov_backend, lite_model, dsb2018):
    image, labels = dsb2018
    boxes = _boxes_from_labels(labels)
    masks = {}
    for name, backend in (("torch", "torch"), ("openvino", ov_backend)):
        p = Predictor(lite_model, encoder_backend=backend)
        p.set_image(image)
        assert p.encoder_backend.name == name
        masks[name], _ = p.predict(boxes=boxes)
    assert masks["torch"].any(axis=(1, 2)).all()
    for a, b in zip(masks["torch"], masks["openvino"], strict=True):
        assert _iou(a, b) >= 0.99


@pytest.mark.slow
def test_each_precision_compiles_into_its_own_blob_cache(ov_backend, lite_model, dsb2018):
    """OpenVINO leaves the inference precision out of its compiled-model cache key: a bf16 compile
    of the f32 export imported the f32 blob and crashed the process at its first inference (a
    segfault on an AMX Xeon). Each precision other than the export's own gets ``blob-<precision>``."""
    from pathlib import Path

    folder = Path(ov_backend.info["path"])
    assert ove._blob_dir(folder, "f32") == folder / "blob"
    assert ove._blob_dir(folder, "bf16") == folder / "blob-bf16"
    assert any((folder / "blob").iterdir())  # the f32 compile has cached its blob
    image, _ = dsb2018
    x = prepare_image(image, lite_model.spec.preprocessing).tensor[None]
    low = ove.compile_engine(folder, 2, "bf16")(x)
    assert low.shape == (1, 256, 64, 64) and np.isfinite(low).all()
    assert any((folder / "blob-bf16").iterdir())
    assert np.abs(low - ov_backend.encode(x)).max() < ove.THRESHOLDS["bf16"][0]


@pytest.mark.slow
def test_engine_batch_runs_parallel_requests_with_the_single_image_result(ov_backend, dsb2018):
    image, _ = dsb2018
    from medsam_core import registry

    pre = registry.get_spec("lite_medsam").preprocessing
    x = np.stack([prepare_image(np.roll(image, 40 * k, axis=1), pre).tensor for k in range(3)])
    one = np.concatenate([ov_backend.encode(x[k:k + 1]) for k in range(3)])
    np.testing.assert_allclose(ov_backend.encode(x), one, atol=1e-5)  # slices stay in order


@pytest.mark.slow
def test_disk_cache_reused_across_predictors(ov_backend, lite_model, ov_cache, monkeypatch):
    exports = _CountExports(monkeypatch)
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(ov_cache))
    monkeypatch.delenv("MEDSAM_ENCODER_BACKEND", raising=False)
    x = ove.probe_input()[0]
    for _ in range(2):
        backend = Predictor(lite_model).encoder_backend  # "auto"
        assert backend.name == "openvino" and backend.info["exported"] is False
        np.testing.assert_allclose(backend.encode(x), ov_backend.encode(x), atol=1e-6)
    assert exports.calls == 0


@pytest.mark.slow
def test_new_encoder_weights_are_reexported_not_served_stale(ov_backend, lite_model, ov_cache, monkeypatch):
    import torch

    tuned = copy.deepcopy(lite_model)
    with torch.no_grad():
        tuned.image_encoder.neck[3].bias.add_(0.25)  # what a fine-tune does, in miniature
    # The in-place change leaves encoder_id stale: the engine is not used for such a model...
    with pytest.warns(RuntimeWarning, match="encoder_id does not match"):
        assert make_encoder_backend(tuned, "openvino", cache_dir=ov_cache).name == "torch"
    # ...and once the id is recomputed (as finish_model does after training), it is re-exported.
    tuned.encoder_id = state_dict_sha256(tuned.state_dict(), prefix="image_encoder.")
    exports = _CountExports(monkeypatch)
    backend = make_encoder_backend(tuned, "openvino", cache_dir=ov_cache)
    assert backend.name == "openvino" and backend.info["exported"] is True and exports.calls == 1
    x = ove.probe_input()[0]
    out = backend.encode(x)
    np.testing.assert_allclose(out, TorchEncoder(tuned).encode(x), atol=1e-4)
    assert np.abs(out - ov_backend.encode(x)).max() > 0.1  # not the old engine's output
    assert len(list(ov_cache.rglob("meta.json"))) == 2


@pytest.mark.slow
def test_weights_changed_after_export_switch_to_eager(ov_backend, lite_model, ov_cache):
    import torch

    model = copy.deepcopy(lite_model)
    backend = make_encoder_backend(model, "openvino", cache_dir=ov_cache)
    assert backend.name == "openvino"
    with torch.no_grad():
        model.image_encoder.neck[3].bias.add_(0.25)
    x = ove.probe_input()[0]
    with pytest.warns(RuntimeWarning, match="stale"):
        out = backend.encode(x)
    assert backend.name == "torch"
    np.testing.assert_allclose(out, TorchEncoder(model).encode(x), atol=1e-5)


@pytest.mark.slow
def test_a_damaged_cached_engine_is_exported_again(ov_backend, lite_model, ov_cache, monkeypatch, tmp_path):
    """64 KiB zeroed inside encoder.bin (same size) compiled and gave embeddings 0.63 off PyTorch; a
    cut file failed at every start and `medsam export` could not repair it. The IR files' sizes and
    sha256 are in meta.json: a damaged export is made again, with a warning."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(ov_cache, cache)
    (meta_path,) = [p for p in cache.rglob("meta.json")
                    if json.loads(p.read_text())["encoder_id"] == lite_model.encoder_id
                    and json.loads(p.read_text())["precision"] == "f32"]
    folder = meta_path.parent
    assert set(json.loads(meta_path.read_text())["files"]) == {"encoder.xml", "encoder.bin"}
    binary = folder / "encoder.bin"
    whole = binary.read_bytes()
    binary.write_bytes(whole[: len(whole) // 2])  # cut short: seen from the sizes alone, no export run
    assert not ove.has_export(lite_model, cache)
    damaged = bytearray(whole)
    damaged[len(whole) // 2: len(whole) // 2 + 65536] = bytes(65536)
    binary.write_bytes(bytes(damaged))
    exports = _CountExports(monkeypatch)
    with pytest.warns(UserWarning, match="is damaged"):
        backend = make_encoder_backend(lite_model, "openvino", cache_dir=cache)
    assert backend.name == "openvino" and exports.calls == 1
    x = ove.probe_input()[0]
    np.testing.assert_allclose(backend.encode(x), ov_backend.encode(x), atol=1e-5)
    assert ove.has_export(lite_model, cache) and binary.read_bytes() != bytes(damaged)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_autocast_masks_match_fp32(dsb2018):
    import medsam_core

    model = medsam_core.load_model("lite_medsam", device="cuda")
    image, labels = dsb2018
    boxes = _boxes_from_labels(labels)
    x = prepare_image(image, model.spec.preprocessing).tensor[None]
    half = TorchEncoder(model)
    assert half.autocast_dtype() is not None
    emb_half = half.encode(np.repeat(x, 4, axis=0))  # batched slices
    emb_full = TorchEncoder(model, autocast="off").encode(x)
    assert emb_half.dtype == np.float32 and np.abs(emb_half[0] - emb_full[0]).max() < 0.1
    masks = {}
    for name, backend in (("half", half), ("full", TorchEncoder(model, autocast="off"))):
        p = Predictor(model, encoder_backend=backend)
        p.set_image(image)
        masks[name], _ = p.predict(boxes=boxes)
    for a, b in zip(masks["half"], masks["full"], strict=True):
        assert _iou(a, b) >= 0.95


def test_precision_setting(monkeypatch):
    monkeypatch.delenv("MEDSAM_ENCODER_PRECISION", raising=False)
    assert backends._precision_setting("bf16") == "bf16"
    assert backends._precision_setting("f32") == "f32"
    auto = "bf16" if backends.BF16_BY_DEFAULT and backends.cpu_has_bf16() else "f32"
    assert backends._precision_setting(None) == auto
    monkeypatch.setenv("MEDSAM_ENCODER_PRECISION", "int4")
    with pytest.raises(backends.EngineError, match="MEDSAM_ENCODER_PRECISION"):
        backends._precision_setting(None)


def test_a_low_precision_the_cpu_lacks_falls_back_to_f32_with_a_warning(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_f16", lambda: True)
    with pytest.warns(RuntimeWarning, match="does not compute bf16 natively: using f32"):
        assert backends._native_or_f32("bf16") == "f32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends._native_or_f32("f16") == "f16"
        assert backends._native_or_f32("f32") == "f32"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends._native_or_f32("bf16") == "bf16"


def test_make_encoder_backend_asks_for_the_precision_the_cpu_has(lite_model, monkeypatch, tmp_path):
    """bf16 on a CPU without it: the f32 engine is loaded (not a second export named bf16)."""
    asked = []
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)

    def fake_load(model, root, threads, precision):
        asked.append(precision)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ove, "load_or_export", fake_load)
    with pytest.warns(RuntimeWarning) as record:
        make_encoder_backend(lite_model, "openvino", cache_dir=tmp_path, precision="bf16")
    messages = [str(w.message) for w in record]
    assert any("natively: using f32" in m for m in messages) and any("stop here" in m for m in messages)
    assert asked == ["f32"]


@needs_openvino
def test_auto_exports_in_a_separate_process_and_serves_eager_meanwhile(lite_model, monkeypatch, tmp_path):
    """A first export takes tens of seconds: "auto" returns at once, encodes eagerly, and the
    export runs in another process (never in this one)."""
    import os

    def must_not_export(*args, **kwargs):
        raise AssertionError("auto must not export in the caller's process")

    monkeypatch.setattr(ove, "export_ir", must_not_export)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        backend = make_encoder_backend(lite_model, "auto", cache_dir=tmp_path, precision="f32")
    try:
        assert isinstance(backend, _engine_build.BackgroundEngineEncoder) and backend.name == "torch"
        assert backend.job.proc.pid != os.getpid() and backend.job.state() == "running"
        again = make_encoder_backend(lite_model, "auto", cache_dir=tmp_path, precision="f32")
        assert again.job is backend.job  # one export per engine, however many predictors ask
    finally:
        backend.job.stop()
    assert not list(tmp_path.rglob(".weights-*")) and not list(tmp_path.rglob("meta.json"))


def test_failed_background_export_warns_and_stays_eager(lite_model, tmp_path):
    import subprocess

    log = tmp_path / "log"
    log.write_text("RuntimeError: converter crashed\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    job = _engine_build.Job(proc, tmp_path / "engine", log, tmp_path / ".weights-x.pt")
    eager = TorchEncoder(lite_model)
    backend = _engine_build.BackgroundEngineEncoder(lite_model, eager, tmp_path, "f32", job)
    with pytest.warns(RuntimeWarning, match="converter crashed"):
        assert not backend.wait_ready(60)
    calls = []
    real = eager.encode
    eager.encode = lambda batch: calls.append(len(batch)) or real(batch)
    out = backend.encode(np.zeros((1, 3, 256, 256), np.float32))
    assert calls == [1] and out.shape == (1, 256, 64, 64) and np.isfinite(out).all()
    assert backend.name == "torch" and backend.job is None


def test_export_child_reports_why_it_failed(tmp_path, capsys):
    rc = _engine_build.main(["no_such_model", str(tmp_path / "w.pt"), str(tmp_path), "f32", "0" * 64])
    assert rc == 1 and "no_such_model" in capsys.readouterr().out


def test_unregistered_model_is_not_exported_in_background(lite_model, monkeypatch, tmp_path):
    import dataclasses

    model = copy.deepcopy(lite_model)
    model.spec = dataclasses.replace(lite_model.spec, name="my_private_model")
    with pytest.warns(RuntimeWarning, match="cannot be built in the background"):
        backend = make_encoder_backend(model, "auto", cache_dir=tmp_path, precision="f32")
    assert isinstance(backend, TorchEncoder)


@pytest.mark.slow
@needs_openvino
def test_background_engine_serves_once_ready_and_matches_eager(lite_model, tmp_path):
    backend = make_encoder_backend(lite_model, "auto", cache_dir=tmp_path, precision="f32")
    x = ove.probe_input()[0]
    first = backend.encode(x)  # eager, while the export runs
    assert backend.wait_ready(600), backend.info
    assert backend.name == "openvino" and backend.info["route"] == "torch.export"
    np.testing.assert_allclose(backend.encode(x), first, atol=1e-3)
    assert backends.make_encoder_backend(lite_model, "auto", cache_dir=tmp_path, precision="f32").name == "openvino"


EXIT_SCRIPT = """
import sys, numpy as np, medsam_core
from medsam_core.backends import make_encoder_backend
model = medsam_core.load_model("lite_medsam", device="cpu")
backend = make_encoder_backend(model, "auto", cache_dir=sys.argv[1], precision="f32")
backend.encode(np.zeros((1, 3, 256, 256), np.float32))
print(backend.job.proc.pid, backend.job.state(), flush=True)
"""


@pytest.mark.slow
@needs_openvino
def test_a_short_run_exits_at_once_and_the_next_run_gets_the_engine(tmp_path):
    """A CLI run shorter than the export (``medsam segment`` on one image) exits cleanly without
    waiting; the export goes on in its own session and lands in the cache, so the next run's
    ``auto`` backend is the engine, not a new export."""
    import os
    import subprocess
    import time

    res = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for bad in ("Fatal", "Aborted", "terminate called", "Traceback"):
        assert bad not in res.stderr
    pid, state = res.stdout.split()
    assert state == "running"
    assert os.getsid(int(pid)) == int(pid)  # its own session: a Ctrl+C in the terminal does not reach it
    group = f"/proc/{pid}/autogroup"  # Linux: its own session is its own scheduling group, niced too
    if os.path.exists(group):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and open(group).read().split()[-1] != "10":
            time.sleep(0.2)
        assert open(group).read().split()[-1] == "10"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the parent has exited; the child is init's now
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the export did not finish")
    metas = list(tmp_path.rglob("meta.json"))
    assert len(metas) == 1, [p.read_text() for p in tmp_path.rglob(".export-*.log")]
    assert "exported" in next(tmp_path.rglob(".export-f32.log")).read_text()
    assert not list(tmp_path.rglob(".weights-*")) and not list(tmp_path.rglob("*.tmp*"))
    code = ("import sys, medsam_core; from medsam_core.backends import make_encoder_backend; "
            "m = medsam_core.load_model('lite_medsam', device='cpu'); "
            "print(make_encoder_backend(m, 'auto', cache_dir=sys.argv[1], precision='f32').name)")
    nxt = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert nxt.returncode == 0, nxt.stderr[-2000:]
    assert nxt.stdout.split()[-1] == "openvino"


def test_the_export_child_cancels_its_time_limit_and_handlers(tmp_path, capsys):
    """main() run in a process (as here) must not leave an alarm or its SIGTERM handler behind."""
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    weights = tmp_path / ".weights-x.pt"
    weights.write_bytes(b"not a checkpoint")
    rc = _engine_build.main(["lite_medsam", str(weights), str(tmp_path), "f32", "0" * 64])
    assert rc == 1 and "Error" in capsys.readouterr().out
    assert signal.alarm(0) == 0  # no alarm was pending
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)) == before
    assert not weights.exists()  # the copy of the weights is removed even when the export fails


@needs_openvino
def test_openvino_is_imported_with_its_telemetry_stub():
    """The engine is built without the user asking: OpenVINO's converter must not send usage events."""
    import subprocess

    code = ("import sys; from medsam_core.backends import import_openvino; import_openvino(); "
            "import openvino.tools.ovc as o; print(type(o.telemetry).__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "openvino.tools.ovc.telemetry_stub"


# -- int8 (opt-in, needs nncf) ----------------------------------------------------------------------
def test_int8_backend_needs_calibration_images(lite_model, tmp_path):
    from medsam_core.engine_int8 import int8_backend
    from medsam_core.errors import MedSAMError

    with pytest.raises(MedSAMError, match="calibration images"):
        int8_backend(lite_model, [], cache_dir=tmp_path)


@pytest.mark.slow
def test_int8_backend_quantises_verifies_and_serves(lite_model, ov_backend, ov_cache, dsb2018):
    """Opt-in int8: quantised from the cached f32 export on the caller's images, checked on the
    probe, cached beside the f32 export (a second call reuses it); masks stay close to f32."""
    pytest.importorskip("nncf")
    from medsam_core.engine_int8 import int8_backend

    img, lab = dsb2018
    calib = [img[:128, :128], img[128:256, 128:256]]  # two crops: a quick calibration
    backend = int8_backend(lite_model, calib, cache_dir=ov_cache)
    assert backend.info["precision"] == "int8" and backend.info["verification"]["accepted"]
    again = int8_backend(lite_model, calib, cache_dir=ov_cache)
    assert again.info["path"] == backend.info["path"]
    assert len(list(ov_cache.rglob("*-int8-*/encoder.xml"))) == 1
    boxes = _boxes_from_labels(lab)
    p32, p8 = Predictor(lite_model, encoder_backend=ov_backend), Predictor(lite_model, encoder_backend=backend)
    p32.set_image(img)
    p8.set_image(img)
    m32, _ = p32.predict(boxes=boxes)
    m8, _ = p8.predict(boxes=boxes)
    assert backend.name == "openvino" and min(_iou(a, b) for a, b in zip(m32, m8, strict=True)) > 0.8


def test_a_new_export_removes_only_the_exports_it_supersedes(tmp_path):
    """After the encoder graph's format changes (ENGINE_FORMAT), the old format's ~55 MB export of the
    same encoder, OpenVINO build, precision and size is deleted; every other export is kept."""
    root = tmp_path / "engines" / "abc123"
    new = root / f"openvino-2026.4.1-d0acc4f9-f32-256x256-v{ove.ENGINE_FORMAT}"
    older = root / "openvino-2026.4.1-d0acc4f9-f32-256x256-v1"
    kept = [root / "openvino-2026.4.1-d0acc4f9-bf16-256x256-v1",  # another precision
            root / "openvino-2025.3.0-0badbeef-f32-256x256-v1",  # another OpenVINO build
            root / "openvino-2026.4.1-d0acc4f9-f32-1024x1024-v1",  # another input size
            tmp_path / "engines" / "other" / "openvino-2026.4.1-d0acc4f9-f32-256x256-v1"]  # another encoder
    for d in [new, older, *kept]:
        d.mkdir(parents=True)
        (d / "encoder.xml").write_text("x")
    assert ove.ENGINE_FORMAT >= 2
    assert ove.prune_older_formats(new) == [older]
    assert not older.exists() and new.exists() and all(d.exists() for d in kept)
    assert ove.prune_older_formats(new) == []  # nothing left to remove
