"""Where an OpenVINO encoder engine spends its time: per-node counters (``PERF_COUNT``) summed over
calls, by node type and kernel, with the FullyConnected nodes' GFLOP/s per shape and the slowest
Reorder / Transpose nodes with their neighbours (docs/engines.md, "Layout").

Run (engine folders are where bench_encoder.py or the package exported them):
    .venv/bin/python benchmarks/profile_engine.py PATH/encoder.xml [--calls 10] [--threads 2]
The counters add about 10 % to the wall time: read the shares, not the times.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12, help="slowest Reorder/Transpose nodes to list")
    args = ap.parse_args()
    import openvino as ov

    compiled = ov.Core().compile_model(args.xml, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    for _ in range(3):
        req.infer({0: x})
    per_node: collections.Counter = collections.Counter()
    walls = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        req.infer({0: x})
        walls.append(time.perf_counter() - t0)
        for p in req.get_profiling_info():
            per_node[(p.node_name, p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e6 / args.calls
    total = sum(per_node.values())
    print(f"wall median {1e3 * float(np.median(walls)):.1f} ms, nodes {total / 1e3:.1f} ms per call")

    ops = {op.get_friendly_name(): op for op in compiled.get_runtime_model().get_ordered_ops()}

    def shape(port) -> tuple | None:
        ps = port.get_partial_shape()
        return tuple(ps.to_shape()) if ps.is_static else None

    def kind(node) -> str:
        info = node.get_rt_info()
        return info["layerType"].astype(str) if "layerType" in info else node.get_type_name()

    by_type: collections.Counter = collections.Counter()
    by_kernel: collections.Counter = collections.Counter()
    fc = collections.defaultdict(lambda: [0, 0.0, 0.0, set()])
    for (name, typ, kernel), us in per_node.items():
        by_type[typ] += us
        by_kernel[(typ, kernel)] += us
        op = ops.get(name)
        if typ == "FullyConnected" and op is not None:
            a, out = shape(op.input(0)), shape(op.output(0))
            if a and out:
                m, k = int(np.prod(a[:-1])), a[-1]
                n = int(np.prod(out)) // m
                row = fc[(m, k, n)]
                row[0] += 1
                row[1] += us
                row[2] += 2.0 * m * k * n
                row[3].add(kernel)
    print("\n| node type | ms per call | share |\n|---|---|---|")
    for typ, us in by_type.most_common(12):
        print(f"| {typ} | {us / 1e3:.1f} | {100 * us / total:.1f} % |")
    print("\n| node type | kernel | ms per call |\n|---|---|---|")
    for (typ, kernel), us in by_kernel.most_common(15):
        print(f"| {typ} | {kernel} | {us / 1e3:.1f} |")
    print("\n| FullyConnected (m, k, n) | nodes | ms | GFLOP/s | kernels |\n|---|---|---|---|---|")
    for mkn, (count, us, flop, kernels) in sorted(fc.items(), key=lambda kv: -kv[1][1]):
        print(f"| {mkn} | {count} | {us / 1e3:.1f} | {flop / us / 1e3:.0f} | {', '.join(sorted(kernels))} |")
    moves = sorted(((us, name, typ, kernel) for (name, typ, kernel), us in per_node.items()
                    if typ in ("Reorder", "Transpose")), reverse=True)[:args.top]
    print("\n| ms | node | kernel | shape in -> out | from -> to |\n|---|---|---|---|---|")
    for us, name, typ, kernel in moves:
        op = ops.get(name)
        if op is None:
            continue
        src = [kind(op.input(i).get_source_output().get_node()) for i in range(op.get_input_size())][:1]
        dst = sorted({kind(t.get_node()) for t in op.output(0).get_target_inputs()})
        print(f"| {us / 1e3:.2f} | {typ} | {kernel} | {shape(op.input(0))} -> {shape(op.output(0))} "
              f"| {', '.join(src)} -> {', '.join(dst)} |")


if __name__ == "__main__":
    main()
