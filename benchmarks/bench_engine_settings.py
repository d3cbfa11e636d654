"""OpenVINO compile settings for the encoder IR, timed side by side on one input (issue 16).

Each configuration is compiled once from the same ``encoder.xml``; every round times a 2048^3 NumPy
GEMM (the matrix-product limit: the encoder's 74.9 GFLOP at that rate), sleeps ``--settle`` seconds
(NumPy's OpenBLAS threads spin after a product and would slow the next call), then runs every
configuration once, the order rotated each round so none is always first. Prints the median time,
the ratio to the median limit and the median per-round ratio to the default compile.

Run: .venv/bin/python benchmarks/bench_engine_settings.py --xml <engine folder>/encoder.xml
(the folder: ``bench_encoder.py --workdir /tmp/medsam-bench`` prints it as ``openvino_folder``).
"""

from __future__ import annotations

import argparse
import os
import statistics as st
import time

import numpy as np
import openvino as ov

ENCODER_FLOP = 74.9e9
SETTINGS = {
    "default": ({}, False),
    "pinning": ({"ENABLE_CPU_PINNING": True}, False),
    "denormals": ({"CPU_DENORMALS_OPTIMIZATION": True}, False),
    "static shape": ({}, True),
    "all three": ({"ENABLE_CPU_PINNING": True, "CPU_DENORMALS_OPTIMIZATION": True}, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xml", required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--settle", type=float, default=0.5)
    args = ap.parse_args()
    core = ov.Core()
    base = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 0, "PERFORMANCE_HINT": "LATENCY"}
    requests = {}
    for name, (extra, static) in SETTINGS.items():
        model = core.read_model(args.xml)
        if static:
            model.reshape([1, 3, 256, 256])
        requests[name] = core.compile_model(model, "CPU", {**base, **extra}).create_infer_request()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 256, 256)).astype(np.float32)
    a, b = (rng.standard_normal((2048, 2048)).astype(np.float32) for _ in range(2))
    ref = requests["default"].infer({0: x})[0].copy()
    for name, r in requests.items():
        r.infer({0: x})
        print(f"{name:12s} max |diff| vs default {float(np.abs(r.infer({0: x})[0] - ref).max()):.1e}")
    times: dict[str, list[float]] = {k: [] for k in requests}
    limits = []
    for i in range(args.rounds):
        t = time.perf_counter()
        a @ b
        limits.append(ENCODER_FLOP / (2 * 2048**3 / (time.perf_counter() - t)))
        time.sleep(args.settle)
        names = list(requests)
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            requests[name].infer({0: x}, share_outputs=True)
            times[name].append(time.perf_counter() - t)
    limit = st.median(limits)
    for name, v in times.items():
        rel = st.median([p / q for p, q in zip(v, times["default"], strict=True)])
        print(f"{name:12s} median {st.median(v):.3f} s  x limit {st.median(v) / limit:.3f}  x default {rel:.3f}")
    print(f"limit {limit:.3f} s per image; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
