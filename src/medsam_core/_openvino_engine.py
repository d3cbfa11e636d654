"""OpenVINO export of a model's image encoder: convert, verify, cache on disk, compile.

The export is made from the loaded PyTorch model (never a downloaded IR), so a fine-tuned
encoder gets its own engine. Cache layout::

    <cache_root>/engines/<encoder_id[:32]>/openvino-<version>-<precision>-<S>x<S>-v<FORMAT>/
        encoder.xml, encoder.bin   (weights kept float32: compress_to_fp16=False)
        meta.json                  (encoder_id, versions, verification report, accepted, the IR
                                    files' sizes and sha256: a damaged export is made again)
        blob/                      (OpenVINO's compiled-model cache: faster second compile;
                                    blob-<precision>/ when compiled at another precision)

The folder is written under a temporary name and renamed into place, so a half-written export
is never read. The key holds the full encoder weight hash, the OpenVINO version, the inference
precision and the input shape: a stale export cannot be served. An export that fails the
verification is remembered (``accepted: false``) so it is not redone at every start.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .backends import EngineError, import_openvino

# 2: the encoder graph without 4D permutes after the local convolutions; 3: q, k and v as three
# projections (both tiny_vit.py)
ENGINE_FORMAT = 3
# Refuse an engine whose embedding differs from PyTorch by more than this (float32 export:
# ~4e-6 measured) or whose masks differ (IoU per box). Low precision is judged by its masks: its
# embedding moves by ~5e-2 (bfloat16), so only a gross error is refused on the embedding; whether
# bf16 is accurate enough was measured on the sample cases (docs/engines.md, "Precision").
MAX_ABS_DIFF = 1e-3
MIN_MASK_IOU = 0.99
MAX_STREAMS = 4  # parallel requests for a batch: volume encoding sends 4 slices a call
# int8 (engine_int8.int8_backend, opt-in): judged like bf16, by the masks on the sample cases.
THRESHOLDS = {"f32": (MAX_ABS_DIFF, MIN_MASK_IOU), "bf16": (0.5, 0.98), "f16": (0.5, 0.98), "int8": (0.5, 0.98)}


def engine_dir(cache_root: Path, encoder_id: str, input_size: int, precision: str) -> Path:
    """Folder of one export: keyed on weights, engine version, precision and input shape."""
    ov = import_openvino()

    full = ov.get_version()
    short = full.split("-")[0]
    tag = hashlib.sha256(full.encode()).hexdigest()[:8]
    name = f"openvino-{short}-{tag}-{precision}-{input_size}x{input_size}-v{ENGINE_FORMAT}"
    return Path(cache_root) / "engines" / encoder_id[:32] / name


def probe_input(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic test image (1, 3, S, S) in [0, 1] with bright blobs, and (N, 4) XYXY
    boxes around three of them in model pixels: what verification runs through both engines."""
    rng = np.random.default_rng(20240521)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    img = 0.15 + 0.04 * rng.standard_normal((size, size)).astype(np.float32)
    blobs = [(0.3, 0.3, 0.12, 0.9), (0.7, 0.35, 0.08, 0.7), (0.45, 0.72, 0.15, 0.8), (0.8, 0.8, 0.05, 0.6)]
    boxes = []
    for cx, cy, r, value in blobs:
        inside = ((xx - cx) / r) ** 2 + ((yy - cy) / (0.8 * r)) ** 2 <= 1
        img[inside] = value + 0.05 * rng.standard_normal(int(inside.sum())).astype(np.float32)
        boxes.append([(cx - r * 1.15) * size, (cy - 0.8 * r * 1.15) * size,
                      (cx + r * 1.15) * size, (cy + 0.8 * r * 1.15) * size])
    img = (img - img.min()) / (img.max() - img.min())
    x = np.repeat(img[None, None], 3, axis=1).astype(np.float32)
    return x, np.asarray(boxes[:3], np.float32)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def verify(model, engine, probe: tuple[np.ndarray, np.ndarray] | None = None, precision: str = "f32") -> dict:
    """Compare the engine with PyTorch eager on the probe image.

    Returns max_abs_diff of the (1, 256, 64, 64) embedding, the mask IoU per box (decoder run
    on both embeddings, masks = low-res logits > 0) and ``accepted``.
    """
    import torch

    x, boxes = probe if probe is not None else probe_input(model.input_size)
    max_diff, min_iou = THRESHOLDS.get(precision, THRESHOLDS["f32"])
    with torch.inference_mode():
        ref = model.encode(torch.from_numpy(x)).float()
    out = torch.from_numpy(engine(x))
    diff = float((out - ref).abs().max())
    ious = []
    with torch.inference_mode():
        b = torch.from_numpy(boxes)
        ref_logits, _ = model.decode(ref, boxes=b)
        out_logits, _ = model.decode(out, boxes=b)
    for r, o in zip(ref_logits.numpy() > 0, out_logits.numpy() > 0, strict=True):
        ious.append(_mask_iou(r, o))
    accepted = bool(np.isfinite(diff) and diff <= max_diff and min(ious) >= min_iou)
    return {"max_abs_diff": diff, "mask_iou": ious, "accepted": accepted,
            "thresholds": {"max_abs_diff": max_diff, "min_mask_iou": min_iou}}


def export_ir(encoder, input_size: int, xml_path: Path) -> str:
    """Convert ``encoder`` (a CPU nn.Module) to OpenVINO IR at ``xml_path`` with float32 weights.

    Route: ``torch.export`` then OpenVINO's ExportedProgram frontend (~18 s for LiteMedSAM on
    2 loaded cores), else TorchScript tracing (137-215 s). Returns the route taken.
    """
    ov = import_openvino()
    import torch

    # A copy in eval mode: a model left in training mode after fine-tuning would trace
    # batch-norm in batch statistics, and the caller's module must not change mode.
    enc = copy.deepcopy(encoder).float().eval()
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ifs on static shapes
        try:
            ov_model, route = ov.convert_model(torch.export.export(enc, (example,))), "torch.export"
        except Exception:  # an operator the exporter or frontend lacks: the slower tracing route
            ov_model = ov.convert_model(enc, example_input=example, input=[(1, 3, input_size, input_size)])
            route = "torchscript"
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)
    return route


def compile_engine(folder: Path, num_threads: int | None, precision: str, streams: int | None = None):
    """Compile ``folder/encoder.xml`` for the CPU -> callable (B, 3, S, S) -> (B, 256, 64, 64).

    One image runs as one latency-mode request on all threads. A batch of several images runs
    as parallel requests on ``streams`` streams (default: one per thread, at most MAX_STREAMS),
    each with its share of the threads: the encoder's small per-image operations scale badly
    over threads, so images side by side encode more slices per second (docs/engines.md).
    """
    return _Engine(folder, num_threads, precision, streams)


def _blob_dir(folder: Path, precision: str) -> Path:
    """OpenVINO's compiled-model cache for ``precision``: ``blob/`` for the precision the folder
    was exported for, ``blob-<precision>/`` for any other. OpenVINO (2026.4) leaves the inference
    precision out of its cache key, and a bf16 compile that imports an f32 blob crashes the
    process at the first inference (segfault, seen on an AMX Xeon), so precisions never share."""
    own = (_read_meta(folder) or {}).get("precision", precision)  # no meta yet: the export's own
    return folder / ("blob" if own == precision else f"blob-{precision}")


class _Engine:
    def __init__(self, folder: Path, num_threads: int | None, precision: str, streams: int | None):
        ov = import_openvino()

        self._core = ov.Core()
        self._xml = str(folder / "encoder.xml")
        self._config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": int(num_threads or 0),  # 0: OpenVINO's default (physical cores)
            "CACHE_DIR": str(_blob_dir(folder, precision)),
        }
        self._streams = streams
        self._request = self._compile("LATENCY").create_infer_request()
        self._queue = None

    def _compile(self, hint: str, streams: int | None = None):
        config = dict(self._config, PERFORMANCE_HINT=hint)
        if streams:
            config["NUM_STREAMS"] = int(streams)
        return self._core.compile_model(self._xml, "CPU", config)

    def _parallel(self, n: int):
        if self._queue is None:
            ov = import_openvino()

            threads = int(self._config["INFERENCE_NUM_THREADS"]) or os.cpu_count() or 1
            streams = self._streams or min(threads, MAX_STREAMS)
            if streams < 2:
                return None
            compiled = self._compile("THROUGHPUT", streams)
            self._queue = ov.AsyncInferQueue(compiled, streams)
        return self._queue

    def _infer(self, one: np.ndarray) -> np.ndarray:
        """(1, 3, S, S) -> a new (1, C, h, w) float32 array (the request's buffer is reused)."""
        result = self._request.infer({0: one}, share_inputs=True, share_outputs=True)
        return np.array(result[0], np.float32, copy=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        n = len(batch)
        if n == 0:
            return np.zeros((0, 256, 64, 64), np.float32)
        queue = self._parallel(n) if n > 1 and self._streams != 1 else None
        if queue is None:  # one copy per image: OpenVINO's output buffer is shared, then copied out
            first = self._infer(batch[:1])
            if n == 1:
                return first
            out = np.empty((n, *first.shape[1:]), np.float32)
            out[0] = first[0]
            for i in range(1, n):
                out[i] = self._infer(batch[i:i + 1])[0]
            return out
        out = np.empty((n, 256, 64, 64), np.float32)

        def done(request, i):
            out[i] = request.get_output_tensor(0).data[0]

        queue.set_callback(done)
        for i in range(n):
            queue.start_async({0: np.ascontiguousarray(batch[i:i + 1])}, i)
        queue.wait_all()
        return out


@contextlib.contextmanager
def _export_lock(parent: Path):
    """An exclusive lock file beside the exports (POSIX); without fcntl, no lock (the rename
    into place still keeps a concurrent export from being read half-written)."""
    parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(parent / ".export.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


IR_FILES = ("encoder.xml", "encoder.bin")


def _file_records(folder: Path) -> dict:
    """{name: {"size", "sha256"}} of the exported IR files, stored in meta.json."""
    out = {}
    for name in IR_FILES:
        if not (folder / name).is_file():  # (an export writes both; a stand-in in a test may not)
            continue
        h = hashlib.sha256()
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[name] = {"size": (folder / name).stat().st_size, "sha256": h.hexdigest()}
    return out


def intact(folder: Path, meta: dict, full: bool = True) -> bool:
    """Whether the IR files are those the export verified: sizes (cheap) and, with ``full``, their
    sha256. An engine cut short or damaged after the export (a partial copy of the cache, a disk
    error) failed to compile at every start, or compiled and gave wrong embeddings (0.63 off).
    Exports written before the files were recorded are taken as they are."""
    files = meta.get("files")
    if not files:
        return True
    try:
        if any((folder / n).stat().st_size != rec["size"] for n, rec in files.items()):
            return False
        return not full or _file_records(folder) == files
    except OSError:
        return False


def _usable(meta: dict | None, model, folder: Path, full: bool) -> bool:
    return bool(meta and meta.get("encoder_id") == model.encoder_id and intact(folder, meta, full))


def has_export(model, cache_root: Path, precision: str = "f32") -> bool:
    """True when an accepted export of this exact encoder is in the cache (cheap: reads meta.json
    and the files' sizes)."""
    folder = engine_dir(cache_root, model.encoder_id, int(model.input_size), precision)
    meta = _read_meta(folder)
    return _usable(meta, model, folder, full=False) and bool(meta.get("accepted"))


def ensure_export(model, cache_root: Path, num_threads: int | None, precision: str = "f32"):
    """Export, verify and store ``model``'s encoder unless it is cached -> (meta, folder, exported).
    Raises EngineError when the export is refused by the verification."""
    if precision not in THRESHOLDS or precision == "int8":
        raise ValueError("precision must be 'f32', 'bf16' or 'f16' (int8: engine_int8.int8_backend)")
    size = int(model.input_size)
    folder = engine_dir(cache_root, model.encoder_id, size, precision)
    meta = _read_meta(folder)
    exported = False
    if not _usable(meta, model, folder, full=True):
        with _export_lock(folder.parent):  # several processes starting at once export once
            meta = _read_meta(folder)
            if not _usable(meta, model, folder, full=True):
                if meta is not None and meta.get("encoder_id") == model.encoder_id:
                    warnings.warn(f"the cached OpenVINO encoder in {folder} is damaged (its files changed "
                                  "since it was verified): exporting it again", stacklevel=2)
                    shutil.rmtree(folder, ignore_errors=True)
                meta = _export(model, folder, size, precision, num_threads)
                exported = True
    if not meta.get("accepted"):
        v = meta.get("verification", {})
        raise EngineError(
            f"the OpenVINO export of this encoder differs from PyTorch (max abs diff "
            f"{v.get('max_abs_diff')}, mask IoU {v.get('mask_iou')}; thresholds {v.get('thresholds')}); "
            f"delete {folder} to try again"
        )
    return meta, folder, exported


def load_or_export(model, cache_root: Path, num_threads: int | None, precision: str = "f32"):
    """The verified engine for ``model``'s encoder -> (callable, info).

    Loads the cached export when its meta matches this encoder; otherwise exports, verifies and
    stores it (blocking). Raises EngineError when the export is refused by the verification.
    """
    ov = import_openvino()

    meta, folder, exported = ensure_export(model, cache_root, num_threads, precision)
    t0 = time.perf_counter()
    engine = compile_engine(folder, num_threads, precision)
    info = dict(meta, exported=exported, compile_s=time.perf_counter() - t0, path=str(folder),
                num_threads=num_threads, openvino=ov.get_version())
    return engine, info


def _export(model, folder: Path, size: int, precision: str, num_threads: int | None) -> dict:
    """Export + verify into a temporary folder, then rename it into place."""
    ov = import_openvino()

    folder.parent.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":  # under the lock: a temp folder here was left by a killed export
        for stale in folder.parent.glob(".openvino-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        t0 = time.perf_counter()
        route = export_ir(model.image_encoder, size, tmp / "encoder.xml")
        export_s = time.perf_counter() - t0
        report = verify(model, compile_engine(tmp, num_threads, precision), precision=precision)
        for blob in tmp.glob("blob*"):  # compiled for the temp path; remade later
            shutil.rmtree(blob, ignore_errors=True)
        meta = {
            "format": ENGINE_FORMAT, "engine": "openvino", "engine_version": ov.get_version(),
            "encoder_id": model.encoder_id, "input_shape": [1, 3, size, size], "precision": precision,
            "export_s": export_s, "route": route, "verification": report, "accepted": report["accepted"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": _file_records(tmp),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():  # a stale or concurrent export: replace only if it is not usable
            old = _read_meta(folder)
            if _usable(old, model, folder, full=True):
                shutil.rmtree(tmp, ignore_errors=True)
                return old
            shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_older_formats(folder)
    return meta


def prune_older_formats(folder: Path) -> list[Path]:
    """Delete the exports that ``folder`` (a new export) supersedes: the same encoder, OpenVINO
    build, precision and input size with an older ``ENGINE_FORMAT``. They can no longer be served
    (engine_dir names the current format) and each holds ~55 MB. Exports of other encoders,
    precisions or OpenVINO builds (another environment sharing the cache) are kept. Returns the
    folders removed; a folder that cannot be removed is left as it is."""
    stem, _, current = folder.name.rpartition("-v")
    removed: list[Path] = []
    if not current.isdigit():
        return removed
    for old in folder.parent.glob(f"{stem}-v*"):
        fmt = old.name.rpartition("-v")[2]
        if old.is_dir() and fmt.isdigit() and int(fmt) < int(current):
            shutil.rmtree(old, ignore_errors=True)
            if not old.exists():
                removed.append(old)
    return removed
