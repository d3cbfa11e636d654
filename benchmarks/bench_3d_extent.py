"""3D walk stop research: an extent prior from orthogonal planes (medsam_core.walk_extent), replayed.

``estimate`` encodes, per structure, the two planes orthogonal to the slices through the start
mask's deepest point (2 encodes; cached on disk under --cache) and saves, for every estimator
variant (reach, iterations, in-plane side), each plane's [lo, hi] (decoder calls only: cheap).
``replay`` scores stop variants offline on the rule-free walk profiles of bench_3d_replay.py
(``extract`` must have run for every case) for all three volumes at once: per volume walk Dice /
oracle (mean over structures) and the worst structure; ranked by the worst volume's ratio.

Stop variants (per direction; D = slices from the start slice to the estimated end):
* ``current``: the walk's evidence count with the default StopRules (what BoxWalk does);
* ``extent+o``: cut at the estimated end (+ o slices), ignoring the walk's evidence;
* ``clip(a,b)``: the evidence cut clipped to [D - a*D, D + b*D] slices;
* ``guard(a,b)``: the evidence count, but slices within (1 - a) * D pass whatever they show
  (no stop well inside the estimate), and slices past (1 + b) * D trip;
* ``perfect``: the best cut per structure (upper bound of any stop on these walks).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_extent.py estimate colin27 macaque cells3d
     .venv/bin/python benchmarks/bench_3d_extent.py replay [--out benchmarks/results/3d_extent.json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import largest_slice_box, load  # noqa: E402
from bench_3d_replay import STORE, _kept_stats  # noqa: E402

from medsam_core.walk_stop import Calibration, Evidence, StopRules, stop_reason  # noqa: E402

ESTIMATES = Path("/tmp/medsam_3d_extent")
REACH = (1.0, 1.5, 2.0, 3.0)
ITERATIONS = (0, 1, 2, 4)
SIDES = ("box", "line")


def variant_key(reach: float, iterations: int, side: str) -> str:
    return f"reach={reach:g} it={iterations} side={side}"


def estimate(case: str, cache: str) -> None:
    import torch

    import medsam_core
    from medsam_core import EmbeddingCache, Intensity, Predictor
    from medsam_core.walk_extent import estimate_extent

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vol, labels, spacing, names = load(case)
    intensity = medsam_core.volume_intensity(vol, Intensity(mode="auto"))
    tag = hashlib.sha256(repr(intensity).encode()).hexdigest()[:8]
    pred = Predictor(medsam_core.load_model("lite_medsam", device="cpu"),
                     cache=EmbeddingCache(max_bytes=2**31, disk_dir=Path(cache) / f"{case}-{tag}"),
                     encoder_backend="torch")
    recs = pickle.loads((STORE / f"{case}.pkl").read_bytes())
    out = {}
    for name, rec in recs.items():
        obj = labels == (names.index(name) + 1 if names else int(name.rsplit(" ", 1)[1]))
        z0, box = largest_slice_box(obj, 3.0)
        start = np.unpackbits(rec["start"]["mask"])[: rec["shape"][0] * rec["shape"][1]]
        start = start.reshape(rec["shape"]).astype(bool)
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        row = {"z0": z0, "ref": [int(zs[0]), int(zs[-1])], "variants": {}}
        calls0, t0 = pred.encoder_calls, time.perf_counter()
        for reach, it, side in itertools.product(REACH, ITERATIONS, SIDES):
            ext = estimate_extent(pred, vol, start, box, z0, spacing, intensity, reach=reach, iterations=it, side=side)
            row["variants"][variant_key(reach, it, side)] = [[p.lo, p.hi, p.score] for p in ext.planes]
            if (reach, it, side) == (REACH[0], ITERATIONS[0], SIDES[0]):
                row["encode_s"], row["encodes"] = time.perf_counter() - t0, pred.encoder_calls - calls0
                t1 = time.perf_counter()
        row["decode_s_per_variant"] = (time.perf_counter() - t1) / (len(REACH) * len(ITERATIONS) * len(SIDES) - 1)
        out[name] = row
        v = row["variants"][variant_key(2.0, 1, "box")]
        print(f"{case} {name}: z0 {z0} ref {zs[0]}-{zs[-1]}  planes {v}  ({row['encodes']} encodes "
              f"{row['encode_s']:.1f} s)", flush=True)
    ESTIMATES.mkdir(parents=True, exist_ok=True)
    (ESTIMATES / f"{case}.json").write_text(json.dumps(out))


def combined(planes, how: str):
    good = [p for p in planes if p[0] is not None]
    if not good:
        return None
    los, his = [p[0] for p in good], [p[1] for p in good]
    if how == "mean":
        return float(np.mean(los)), float(np.mean(his))
    if how == "min":
        return float(max(los)), float(min(his))
    return float(min(los)), float(max(his))


def _verdicts(rows, rules: StopRules, cal: Calibration, area0: int):
    """Per row: (why, empty) as the walk's rules see it."""
    out, prev = [], area0
    for r in rows:
        out.append((stop_reason(rules, r["f"], prev, cal), r["f"]["area"] == 0))
        prev = r["f"]["area"] or prev
    return out


def _count(rows, verdicts, rules: StopRules, force=None) -> int:
    """Slices kept by the evidence count; ``force(depth) -> None | "pass" | "trip"`` overrides."""
    ev, kept = Evidence(rules), 0
    for r, (why, empty), depth in zip(rows, verdicts, range(1, len(rows) + 1), strict=True):
        f = force(depth) if force else None
        if f == "pass" and not empty:
            why = None
        elif f == "trip":
            why = why or "beyond the extent"
        got, stop = ev.add(r["z"], why, empty=empty)
        kept += len(got)
        if stop is not None:
            return kept
    return kept


def stop_variants():
    """name -> function(kev, depth_est, rows, verdicts, rules) -> slices kept."""
    v = {"current": lambda kev, d, rows, ver, rules: kev}
    for o in (-2, -1, 0, 1, 2):
        v[f"extent{o:+d}"] = lambda kev, d, rows, ver, rules, o=o: int(np.clip(round(d + o), 0, len(rows)))
    for a, b in itertools.product((0.25, 0.5), (0.25, 0.5, 1.0)):
        v[f"clip({a},{b})"] = lambda kev, d, rows, ver, rules, a=a, b=b: int(
            np.clip(kev, np.floor(d * (1 - a)), np.ceil(d * (1 + b))))
    for a, b in itertools.product((0.25, 0.5, 1.0), (0.25, 0.5, 1.0, None)):
        def guard(kev, d, rows, ver, rules, a=a, b=b):
            def force(depth):
                if depth <= d * (1 - a):
                    return "pass"
                if b is not None and depth > d * (1 + b):
                    return "trip"
                return None
            return _count(rows, ver, rules, force)
        v[f"guard({a},{b})"] = guard
    return v


def replay(oracle_file: str, out_file: str | None, top: int) -> None:
    oracle = {c: {k: v["oracle"] for k, v in d["structures"].items()}
              for c, d in json.loads(Path(oracle_file).read_text())["cases"].items()}
    rules = StopRules()
    cases = ("colin27", "macaque", "cells3d")
    data = {}
    for case in cases:
        recs = pickle.loads((STORE / f"{case}.pkl").read_bytes())
        est = json.loads((ESTIMATES / f"{case}.json").read_text())
        data[case] = []
        for name, rec in recs.items():
            stats, (a0, i0) = _kept_stats(rec, "anchor"), rec["start"]["stat"]
            cal = Calibration(**rec["cal"])
            dirs = {}
            for d in ("up", "down"):
                rows = rec["dirs"][d]
                ver = _verdicts(rows, rules, cal, rec["start"]["f"]["area"])
                dirs[d] = (rows, ver, _count(rows, ver, rules))
            data[case].append((name, rec, stats, a0, i0, dirs, est[name], oracle[case][name]))

    def score(item, ku, kd):
        name, rec, stats, a0, i0, *_ = item
        sel = stats["up"][:ku] + stats["down"][:kd]
        return 2 * (i0 + sum(i for _, i in sel)) / (a0 + sum(a for a, _ in sel) + rec["gt_total"])

    def evaluate(fn, variant: str | None, how: str) -> dict:
        res = {}
        for case in cases:
            dice, ratios = [], []
            for item in data[case]:
                name, rec, _, _, _, dirs, est, orc = item
                ext = combined(est["variants"][variant], how) if variant else None
                ks = []
                for d, step in (("up", 1), ("down", -1)):
                    rows, ver, kev = dirs[d]
                    if ext is None:
                        ks.append(kev)
                        continue
                    depth = max((ext[1] - rec["z0"]) if step > 0 else (rec["z0"] - ext[0]), 0.0)
                    ks.append(fn(kev, depth, rows, ver, rules))
                dice.append(score(item, *ks))
                ratios.append((dice[-1] / orc, name))
            orcs = [it[-1] for it in data[case]]
            worst = min(ratios)
            res[case] = {"ratio": float(np.mean(dice) / np.mean(orcs)), "worst": [round(worst[0], 3), worst[1]]}
        res["min_ratio"] = min(res[c]["ratio"] for c in cases)
        return res

    rows_out = {"current": evaluate(lambda kev, *a: kev, None, "mean")}
    perfect = {}
    for case in cases:
        best = [max(score(it, u, d) for u in range(len(it[2]["up"]) + 1) for d in range(len(it[2]["down"]) + 1))
                for it in data[case]]
        orcs = [it[-1] for it in data[case]]
        r = [(b / o, it[0]) for b, o, it in zip(best, orcs, data[case], strict=True)]
        perfect[case] = {"ratio": float(np.mean(best) / np.mean(orcs)), "worst": [round(min(r)[0], 3), min(r)[1]]}
    perfect["min_ratio"] = min(perfect[c]["ratio"] for c in cases)
    rows_out["perfect"] = perfect
    # the reference's own ends as the extent (an exact prior): how much an extent prior could give
    for case in cases:
        for it in data[case]:
            it[6]["variants"]["reference"] = [[it[6]["ref"][0], it[6]["ref"][1], 1.0]]
    variants = list(next(iter(data["colin27"]))[6]["variants"])
    fns = stop_variants()
    for variant in variants:
        for how in (("mean", "min", "max") if variant != "reference" else ("mean",)):
            for sname, fn in fns.items():
                if sname == "current":
                    continue
                rows_out[f"{variant} {how} | {sname}"] = evaluate(fn, variant, how)
    ranked = sorted(rows_out.items(), key=lambda kv: -kv[1]["min_ratio"])

    def line(name, r):
        return f"{r['min_ratio']:.3f} | " + " / ".join(
            f"{r[c]['ratio']:.3f}x ({r[c]['worst'][0]:.2f} {r[c]['worst'][1]})" for c in cases) + f" | {name}"

    print("worst volume | colin27 / macaque / cells3d (worst structure) | variant")
    for name in ("current", "perfect"):
        print(line(name, rows_out[name]))
    print("-- reference ends as the prior (upper bound of an extent prior):")
    for name, r in ranked:
        if name.startswith("reference"):
            print(line(name, r))
            break
    print(f"-- top {top} estimated variants:")
    for name, r in [kv for kv in ranked if not kv[0].startswith("reference") and kv[0] not in ("current", "perfect")][:top]:
        print(line(name, r))
    if out_file:
        Path(out_file).write_text(json.dumps({"rules": rules.__dict__, "results": rows_out}, indent=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("estimate", "replay"))
    ap.add_argument("cases", nargs="*", default=["colin27", "macaque", "cells3d"])
    ap.add_argument("--cache", default="/tmp/medsam_extent_cache")
    ap.add_argument("--oracle-from", default=str(Path(__file__).parent / "results" / "3d_walk.json"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.command == "estimate":
        for case in args.cases:
            estimate(case, args.cache)
    else:
        replay(args.oracle_from, args.out, args.top)


if __name__ == "__main__":
    main()
