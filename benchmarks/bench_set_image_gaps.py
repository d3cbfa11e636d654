"""Predictor.set_image (default install, engine ready) by what the machine did just before the call.

The engine bench (bench_encoder.py) times each engine in interleaved rounds, with a sleep before
each call and other engines in between; a user's images come back to back (a folder, a volume) or
after the decoder's box prompts and a pause. This times the same set_image (a new image each call)
after each of: nothing, a 0.3 s or 2 s sleep, 20 decoder boxes, and a 2048^3 GEMM + 0.3 s sleep;
three calls per condition per round, rounds interleaved, and the 75 GFLOP limit as the best
2-thread 2048^3 GEMM (OpenVINO MatMul) measured at the start of every round.

Run (on an idle machine, the engine already exported into --workdir by bench_encoder.py):
    .venv/bin/python benchmarks/bench_set_image_gaps.py --rounds 9 --workdir /tmp/medsam-bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_encoder as be  # noqa: E402
from _machine import cpu_model  # noqa: E402

ENCODER_FLOP = 74.9e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workdir", default="/tmp/medsam-bench")
    ap.add_argument("--json")
    args = ap.parse_args()

    import medsam_core
    from medsam_core.backends import make_encoder_backend
    from medsam_core.embeddings import EmbeddingCache
    from medsam_core.predictor import Predictor

    model = medsam_core.load_model("lite_medsam", device="cpu")
    auto = make_encoder_backend(model, "auto", cache_dir=Path(args.workdir) / "auto-cache", num_threads=2)
    if hasattr(auto, "wait_ready"):
        auto.wait_ready(900)
    run = be.set_image_runner(model, auto)
    with np.load(be.DATA) as d:
        image = d["image"]
    dec = Predictor(model, cache=EmbeddingCache(max_bytes=2**26), encoder_backend=auto)
    dec.set_image(image)
    boxes = np.array([[10 + 20 * i, 10 + 15 * i, 40 + 20 * i, 45 + 15 * i] for i in range(20)], float)
    gemm = be.gemm_runners(2048, 2048, 2048, 2)["openvino MatMul"]
    gemm()

    def limit() -> float:  # best of 3 products, as seconds per 75 GFLOP
        best = min(be.timed(gemm) for _ in range(3))
        return best * ENCODER_FLOP / (2 * 2048**3)

    conditions = {
        "back to back": lambda: None,
        "after a 0.3 s sleep": lambda: time.sleep(0.3),
        "after a 2 s sleep": lambda: time.sleep(2.0),
        "after 20 decoder boxes": lambda: dec.predict(boxes=boxes),
        "after a 2048^3 GEMM + 0.3 s sleep": lambda: (gemm(), time.sleep(0.3)),
    }
    run(None)
    times: dict[str, list[float]] = {k: [] for k in conditions}
    limits = []
    for r in range(args.rounds):
        limits.append(limit())
        order = list(conditions) if r % 2 == 0 else list(conditions)[::-1]
        for name in order:
            for _ in range(3):
                conditions[name]()
                times[name].append(be.timed(lambda: run(None)))
        print(f"round {r + 1}: limit {limits[-1]:.3f} s, "
              + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()), flush=True)
    lim = statistics.median(limits)
    print(f"\nCPU {cpu_model()}; "
          f"load {os.getloadavg()}; limit (median of rounds) {lim:.3f} s per 75 GFLOP\n")
    print("| set_image, a new image | median s | min s | x limit |\n|---|---|---|---|")
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "min_s": min(ts), "x_limit": med / lim}
        print(f"| {name} | {med:.3f} | {min(ts):.3f} | {med / lim:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit_s": lim, "limits": limits, "rows": rows,
                                               "times": times, "cpu": cpu_model(),
                                               "load_avg": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
