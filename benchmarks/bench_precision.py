"""bfloat16 and int8 encoder inference against float32, judged by the masks, on every 2D sample case.

Run: ``.venv/bin/python benchmarks/bench_precision.py [--threads 2] [--repeats 5] [--int8] [--json PATH]``

Cases (``/work/shared/data``): dsb2018 (all 125 nuclei, reference boxes pushed out 0-5 px per
side, seeded), and for each 3D file every object on its largest axial slice (its reference box
there, the same 0-5 px push). Both precisions run the same OpenVINO IR (exported once, cached),
compiled with ``INFERENCE_PRECISION_HINT`` f32 or bf16; masks come from the same decoder.
Per object: Dice of the bf16 mask against the f32 mask, and |predicted IoU change|.
``--mixed``: also bf16 with parts of the encoder kept in f32 (``MIXED``: the IR split at stage
outputs, each piece compiled with its own precision), judged the same way.
``--matmul-bf16``: also the f32 IR with bf16 only inside its matrix products (explicit Converts
around every MatMul, compiled f32: layer norms, softmax, GELU, convolutions and the residual
stream stay float32), judged the same way.
``--int8``: also an int8 IR (NNCF post-training quantisation of the same IR, ``engine_int8.py``;
calibrated on slices that are not evaluated: every 3D file's slices away from the evaluated ones
and dsb2018 flipped), judged the same way.
Gate (issue 16): mean Dice >= 0.995 and max |IoU change| < 0.01 on every case. Speed: both
engines and PyTorch eager on the dsb2018 image, interleaved rounds, medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from _machine import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES = ["fluo_nuclei_dsb2018.npz", "confocal3d_nuclei_cells3d.npz", "mri_t1_colin27_aal_dev.npz",
         "mri_t1_macaque_inia19_dev.npz"]
MIN_MEAN_DICE, MAX_IOU_CHANGE = 0.995, 0.01


def boxes_of(labels: np.ndarray, ids, rng) -> np.ndarray:
    """(N, 4) XYXY reference boxes of ``ids``, each side pushed out 0-5 px (clipped)."""
    h, w = labels.shape
    out = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        pad = rng.integers(0, 6, 4)
        out.append([max(0, xs.min() - pad[0]), max(0, ys.min() - pad[1]),
                    min(w - 1, xs.max() + pad[2]), min(h - 1, ys.max() + pad[3])])
    return np.asarray(out, np.float64)


def slices_of(path: Path, rng) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, 2D image, (N, 4) boxes)]: the 2D image, or per 3D object its largest slice."""
    with np.load(path) as d:
        image, labels = d["image"], d["labels"]
    if image.ndim == 2:
        ids = [i for i in np.unique(labels) if i]
        return [(path.stem, image, boxes_of(labels, ids, rng))]
    by_slice: dict[int, list[int]] = {}
    for i in (i for i in np.unique(labels) if i):
        z = int(np.argmax((labels == i).sum(axis=(1, 2))))
        by_slice.setdefault(z, []).append(int(i))
    return [(f"{path.stem}[z={z}]", image[z], boxes_of(labels[z], ids, rng)) for z, ids in sorted(by_slice.items())]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def compare(model, engines: dict, cases: list[Path], seed: int = 0) -> dict:
    """Per low precision, per case: per-object Dice (vs f32) and |predicted IoU change|."""
    from medsam_core import Predictor
    from medsam_core.embeddings import EmbeddingCache

    rng = np.random.default_rng(seed)
    preds = {k: Predictor(model, cache=EmbeddingCache(), encoder_backend=e) for k, e in engines.items()}
    lows = [k for k in engines if k != "f32"]
    report: dict = {k: {} for k in lows}
    for path in cases:
        dices: dict = {k: [] for k in lows}
        dious: dict = {k: [] for k in lows}
        for name, img, boxes in slices_of(path, rng):
            out = {}
            for k, p in preds.items():
                p.set_image(img)
                out[k] = p.predict(boxes=boxes)
            for k in lows:
                dices[k] += [dice(a, b) for a, b in zip(out["f32"].masks, out[k].masks, strict=True)]
                dious[k] += np.abs(out["f32"].scores - out[k].scores).tolist()
            print(f"  {name}: {len(boxes)} objects, min Dice "
                  + ", ".join(f"{k} {min(dices[k][-len(boxes):]):.4f}" for k in lows), flush=True)
        for k in lows:
            r = report[k][path.stem] = {
                "objects": len(dices[k]), "mean_dice": float(np.mean(dices[k])), "min_dice": float(np.min(dices[k])),
                "max_iou_change": float(np.max(dious[k])), "mean_iou_change": float(np.mean(dious[k]))}
            r["passes"] = bool(r["mean_dice"] >= MIN_MEAN_DICE and r["max_iou_change"] < MAX_IOU_CHANGE)
    return report


# Mixed precision (--mixed): the f32 IR cut at residual-stream tensors (node names of the
# torch.export route), each piece compiled with its own precision. Cut names: the output of
# stage 1 (add_1), stage 2 (add_5), stage 3 (add_17), stage 4 (add_21; the neck follows).
_CUT = {k: f"add_{i}/aten.add.Tensor/Add" for k, i in (("s1", 1), ("s2", 5), ("s3", 17), ("s4", 21))}
MIXED = {
    "bf16, neck f32": ([_CUT["s4"]], ["bf16", "f32"]),
    "bf16, patch embed + stage 1 f32": ([_CUT["s1"]], ["f32", "bf16"]),
    "bf16, stage 4 + neck f32": ([_CUT["s3"]], ["bf16", "f32"]),
    "bf16 in stage 3 only": ([_CUT["s2"], _CUT["s3"]], ["f32", "bf16", "f32"]),
}


def split_engine(xml: Path, cuts: list[str], precisions: list[str], threads: int):
    """callable (1, 3, S, S) -> (1, 256, 64, 64): the IR cut after the named nodes, piece k
    compiled with ``precisions[k]``, run in turn (the tensor between pieces stays float32)."""
    import openvino as ov
    import openvino.opset13 as ops

    core, requests = ov.Core(), []
    for k, precision in enumerate(precisions):
        m = core.read_model(str(xml))
        named = {op.get_friendly_name(): op for op in m.get_ops()}
        params = list(m.get_parameters())
        if k > 0:  # the previous cut's tensor becomes this piece's input
            node = named[cuts[k - 1]]
            params = [ops.parameter(node.get_output_partial_shape(0), np.float32)]
            for target in list(node.output(0).get_target_inputs()):
                target.replace_source_output(params[0].output(0))
        outs = [named[cuts[k]].output(0)] if k < len(cuts) else [r.input_value(0) for r in m.get_results()]
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        requests.append(core.compile_model(ov.Model(outs, params), "CPU", config).create_infer_request())

    def run(batch: np.ndarray) -> np.ndarray:
        out = []
        for i in range(len(batch)):
            x = batch[i:i + 1]
            for req in requests:
                x = req.infer({0: x})[0]
            out.append(np.array(x, np.float32, copy=True))
        return np.concatenate(out)

    return run


def matmul_bf16_engine(xml: Path, threads: int):
    """callable (B, 3, S, S) -> (B, 256, 64, 64): the IR with each MatMul's inputs converted to
    bf16 and its output back to f32, compiled with f32 inference precision, so only the matrix
    products run in bf16 (OpenVINO runs them as bf16 FullyConnected kernels on AMX/AVX512-BF16)."""
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    m = core.read_model(str(xml))
    for op in [op for op in m.get_ops() if op.get_type_name() == "MatMul"]:
        consumers = [t for out in op.outputs() for t in out.get_target_inputs()]
        for i in range(2):
            op.input(i).replace_source_output(ops.convert(op.input_value(i), ov.Type.bf16).output(0))
        op.validate_and_infer_types()
        back = ops.convert(op.output(0), ov.Type.f32)
        for t in consumers:
            t.replace_source_output(back.output(0))
    m.validate_nodes_and_infer_types()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    request = core.compile_model(m, "CPU", config).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([np.array(request.infer({0: batch[i:i + 1]})[0], np.float32, copy=True)
                               for i in range(len(batch))])

    return run


def calibration_images(cases: list[Path], per_volume: int = 10) -> list[np.ndarray]:
    """2D images for int8 calibration that the accuracy check does not use: per 3D file
    ``per_volume`` slices spread over z away from every evaluated (largest-object) slice, and
    the 2D image flipped left-right and up-down."""
    out = []
    for path in cases:
        with np.load(path) as d:
            image, labels = d["image"], d["labels"]
        if image.ndim == 2:
            out += [image[:, ::-1].copy(), image[::-1].copy()]
            continue
        used = {int(np.argmax((labels == i).sum(axis=(1, 2)))) for i in np.unique(labels) if i}
        free = [z for z in range(len(image)) if all(abs(z - u) > 1 for u in used) and image[z].min() != image[z].max()]
        out += [image[z] for z in free[:: max(1, len(free) // per_volume)][:per_volume]]
    return out


def speed(engines: dict, x: np.ndarray, repeats: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in engines}
    for e in engines.values():
        e.encode(x)
    for r in range(repeats):
        for k in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            t0 = time.perf_counter()
            engines[k].encode(x)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # paired: each round's low-precision time over the same round's f32 time
    ratios = {f"{k}_over_f32_paired": statistics.median(b / f for b, f in zip(times[k], times["f32"], strict=True))
              for k in engines if k not in ("f32", "eager")}
    return {"median_s": med, "times": times, **ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/medsam-bench-engines"))
    ap.add_argument("--low", nargs="+", default=["bf16"], choices=["bf16", "f16"],
                    help="OpenVINO inference precisions to judge against f32 (f16 where the CPU has it: "
                         "AVX512-FP16 / AMX-FP16)")
    ap.add_argument("--matmul-bf16", action="store_true",
                    help="also bf16 inside the matrix products only (f32 elsewhere; explicit Converts in the IR)")
    ap.add_argument("--int8", action="store_true", help="also quantise to int8 (needs nncf) and check it")
    ap.add_argument("--mixed", action="store_true",
                    help="also bf16 with parts kept in f32 (the IR split at stage outputs; MIXED)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    import medsam_core
    from medsam_core import _openvino_engine as ove
    from medsam_core.backends import (
        EngineEncoder,
        TorchEncoder,
        cpu_has_bf16,
        cpu_has_f16,
        make_encoder_backend,
    )
    from medsam_core.preprocess import prepare_image

    torch.set_num_threads(args.threads)
    model = medsam_core.load_model("lite_medsam", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        f32 = make_encoder_backend(model, "openvino", cache_dir=args.cache, num_threads=args.threads,
                                   precision="f32")
    eager = TorchEncoder(model, num_threads=args.threads)
    folder = Path(f32.info["path"])
    engines = {"f32": f32}
    for low in args.low:
        engines[low] = EngineEncoder(ove.compile_engine(folder, args.threads, low), eager, dict(f32.info, precision=low))
    report = {"machine": {"cpu": cpu_model(), "cpu_has_bf16": cpu_has_bf16(), "cpu_has_f16": cpu_has_f16(),
                          "threads": args.threads,
                          "load_avg": __import__("os").getloadavg()}}
    cases = [DATA / c for c in CASES]
    if args.int8:
        from medsam_core.engine_int8 import quantize_int8

        pre = model.spec.preprocessing
        calib = [prepare_image(im, pre).tensor[None] for im in calibration_images(cases)]
        t0 = time.perf_counter()
        int8_dir = quantize_int8(folder, folder.parent / f"{folder.name}-int8-bench", calib)
        report["int8"] = {"calibration_images": len(calib), "quantize_s": time.perf_counter() - t0,
                          "ir_mb": sum(p.stat().st_size for p in int8_dir.glob("encoder.*")) / 2**20,
                          "f32_ir_mb": sum(p.stat().st_size for p in folder.glob("encoder.*")) / 2**20}
        print(f"int8: {report['int8']}")
        engines["int8"] = EngineEncoder(ove.compile_engine(int8_dir, args.threads, "f32"), eager,
                                        dict(f32.info, precision="int8"))
    if args.matmul_bf16:
        engines["bf16 matmul only"] = EngineEncoder(matmul_bf16_engine(folder / "encoder.xml", args.threads), eager,
                                                    dict(f32.info, precision="bf16 matmul only"))
    if args.mixed:
        for name, (cuts, precisions) in MIXED.items():
            run = split_engine(folder / "encoder.xml", cuts, precisions, args.threads)
            engines[name] = EngineEncoder(run, eager, dict(f32.info, precision=name))
    report["cases"] = compare(model, engines, cases)
    with np.load(DATA / CASES[0]) as d:
        x = prepare_image(d["image"], model.spec.preprocessing).tensor[None]
    report["speed"] = speed(dict(engines, eager=eager), x, args.repeats)
    report["passes_all"] = {k: all(c["passes"] for c in v.values()) for k, v in report["cases"].items()}
    for low, rows in report["cases"].items():
        print(f"\n| case | objects | mean Dice {low} vs f32 | min Dice | max abs IoU-prediction change | passes |")
        print("|---|---|---|---|---|---|")
        for k, c in rows.items():
            print(f"| {k} | {c['objects']} | {c['mean_dice']:.4f} | {c['min_dice']:.4f} | {c['max_iou_change']:.4f} "
                  f"| {'yes' if c['passes'] else 'no'} |")
    s = report["speed"]
    print("speed (medians): " + ", ".join(f"{k} {v:.3f} s" for k, v in s["median_s"].items())
          + "; " + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k.endswith("_paired"))
          + f"; all pass: {report['passes_all']}")
    report["machine"]["load_avg_end"] = __import__("os").getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
