"""3D walk stop research: an extent prior from orthogonal planes (medsam_core.walk_extent), replayed.

``estimate`` encodes, per structure, the two planes orthogonal to the slices through the start
mask's deepest point (2 encodes; cached on disk under --cache) and saves, for every estimator
variant (reach, iterations, in-plane side), each plane's [lo, hi] (decoder calls only: cheap).
``replay`` scores stop variants offline on the rule-free walk profiles of bench_3d_replay.py
(``extract`` must have run for every case) for all three volumes at once: per volume walk Dice /
oracle (mean over structures) and the worst structure; ranked by the worst volume's ratio.

Stop variants (per direction; D = slices from the start slice to the estimated end):
* ``current``: the walk's evidence count with the default StopRules (what BoxWalk does);
* ``perfect``: the best cut per structure (upper bound of any stop on these walks);
* extents: ``reach=.. it=.. side=.. <combine>`` (planes), ``reference`` (the reference's own ends:
  what an exact extent could give), ``radius=k`` (k start cross-section radii, no planes), each
  used as ``extent+o`` (cut at the end + o), ``cap(b)`` (the evidence cut, at most D(1+b)),
  ``guard(a,b)`` (slices within (1-a)D pass, past (1+b)D trip);
* ``agree c x start(n)`` / ``own(n)`` / ``guarded(n)``: "lost track" relative to the structure: under
  c x the median agreement of the first n slices of both directions / of this direction so far
  (what a walk knows) / of this direction's guarded slices (walk_extent.ExtentGuard);
* ``soft agree``: graded evidence, clip((agree - tau) / scale, -1, 1) per slice;
* ``lines reference < t``: trips where the kept mask's 1D IoU with the reference along the two lines
  through the start mask is under t (a bound for per-slice plane checks).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_extent.py estimate colin27 macaque cells3d
     .venv/bin/python benchmarks/bench_3d_extent.py replay [--out benchmarks/results/3d_extent_replay.json]
     [--show VARIANT ...]
     OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_extent.py walk colin27 macaque cells3d:1,5
     (the real walk with ``extent_prior=True``: needs the walk.py patch)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import cached_predictor, largest_slice_box, load  # noqa: E402
from bench_3d_replay import OUTPUTS, STORE, _kept_stats, _unpack  # noqa: E402

from medsam_core.walk_extent import deepest_point  # noqa: E402
from medsam_core.walk_stop import Calibration, Evidence, StopRules, stop_reason  # noqa: E402

ESTIMATES = Path("/tmp/medsam_3d_extent")
REACH = (1.0, 1.5, 2.0, 3.0)
ITERATIONS = (0, 1, 2, 4)
SIDES = ("box", "line")
RADII = (0.5, 1.0, 1.5, 2.0)  # plane-free depth guesses, in start cross-section radii


def variant_key(reach: float, iterations: int, side: str) -> str:
    return f"reach={reach:g} it={iterations} side={side}"


def estimate(case: str, cache: str) -> None:
    import torch

    import medsam_core
    from medsam_core.walk_extent import estimate_extent

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vol, labels, spacing, names = load(case)
    pred, intensity = cached_predictor(medsam_core.load_model("lite_medsam", device="cpu"), case, vol, cache=cache,
                                       max_bytes=2**31, encoder_backend="torch")
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
            ext = estimate_extent(
                pred, vol, start, box, z0, spacing, intensity, reach=reach, iterations=it, side=side
            )
            row["variants"][variant_key(reach, it, side)] = [[p.lo, p.hi, p.score] for p in ext.planes]
            if (reach, it, side) == (REACH[0], ITERATIONS[0], SIDES[0]):
                row["encode_s"], row["encodes"] = time.perf_counter() - t0, pred.encoder_calls - calls0
                t1 = time.perf_counter()
        row["decode_s_per_variant"] = (time.perf_counter() - t1) / (
            len(REACH) * len(ITERATIONS) * len(SIDES) - 1
        )
        out[name] = row
        v = row["variants"][variant_key(2.0, 1, "box")]
        print(
            f"{case} {name}: z0 {z0} ref {zs[0]}-{zs[-1]}  planes {v}  ({row['encodes']} encodes "
            f"{row['encode_s']:.1f} s)",
            flush=True,
        )
    ESTIMATES.mkdir(parents=True, exist_ok=True)
    (ESTIMATES / f"{case}.json").write_text(json.dumps(out))


def combined(planes, how: str):
    good = [p for p in planes if p[0] is not None]
    if not good:
        return None
    los, his = [p[0] for p in good], [p[1] for p in good]
    if how == "mean":  # rounded as walk_extent.estimate_extent does
        return float(round(float(np.mean(los)))), float(round(float(np.mean(his))))
    if how == "min":
        return float(max(los)), float(min(his))
    return float(min(los)), float(max(his))


def _verdicts(rows, rules: StopRules, cal: Calibration, area0: int, agree_min: float | None = None):
    """Per row: (why, empty) as the walk's rules see it; ``agree_min`` replaces ``min_agree``."""
    if agree_min is not None:
        rules = replace(rules, min_agree=0.0)
    out, prev = [], area0
    for i, r in enumerate(rows):
        why = stop_reason(rules, r["f"], prev, cal)
        thr = agree_min(i) if callable(agree_min) else agree_min
        if why is None and thr is not None and r["f"].get("agree", 1.0) < thr:
            why = f"lost track ({r['f']['agree']:.2f})"
        out.append((why, r["f"]["area"] == 0))
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


def _iou1(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def line_agreement(rec: dict, lines_of) -> dict:
    """Per direction, per slice: the mean 1D IoU, along the two lines through the start mask's
    deepest point, between the kept mask ("anchor" output) and ``lines_of(z) -> (row, col)``
    (1D bool along X at that row, along Y at that column; None: no reading on that slice)."""
    start = _unpack(rec["start"]["mask"], rec["shape"])
    yc, xc = deepest_point(start)
    out = {}
    for d, rows in rec["dirs"].items():
        vals = []
        for r in rows:
            ms = {k: _unpack(r["masks"][k], rec["shape"]) for k in OUTPUTS}
            k = max(OUTPUTS, key=lambda k: (ms[k] & start).sum() / max((ms[k] | start).sum(), 1))
            ref = lines_of(r["z"])
            vals.append(
                None if ref is None else (_iou1(ms[k][yc, :], ref[0]) + _iou1(ms[k][:, xc], ref[1])) / 2
            )
        out[d] = vals
    return out


@dataclass
class Item:
    """One structure: its rule-free walk profile, extent estimates and oracle Dice."""

    case: str
    name: str
    rec: dict
    stats: dict
    est: dict
    oracle: float
    cal: Calibration
    lines: dict  # source -> direction -> per-slice line agreement (``line_agreement``)

    def dice(self, ku: int, kd: int) -> float:
        a0, i0 = self.rec["start"]["stat"]
        sel = self.stats["up"][:ku] + self.stats["down"][:kd]
        return 2 * (i0 + sum(i for _, i in sel)) / (a0 + sum(a for a, _ in sel) + self.rec["gt_total"])

    def depth(self, variant: str, how: str, d: str) -> float | None:
        ext = combined(self.est["variants"][variant], how)
        if ext is None:
            return None
        z0 = self.rec["z0"]
        return max(ext[1] - z0 if d == "up" else z0 - ext[0], 0.0)

    def agree_ref(self, n: int) -> float:
        """Median agreement of the first ``n`` slices of both directions (calibration near the start)."""
        vals = [r["f"].get("agree", 0.0) for d in ("up", "down") for r in self.rec["dirs"][d][:n]]
        return float(np.median(vals)) if vals else 1.0


def stop_variants(rules: StopRules, estimates: list[str]):
    """name -> function(item, direction) -> slices kept in that direction."""

    def causal(c, n):
        """c x the median agreement of this direction's first slices seen so far (at most n): what a
        walk that goes up first, then down, knows when it decides."""

        def agree(it: Item, d: str):
            vals = [r["f"].get("agree", 0.0) for r in it.rec["dirs"][d][:n]]
            return lambda i: c * float(np.median(vals[: min(i, n - 1) + 1])) if vals else None

        return agree

    def inside(c, n, variant, how, a):
        """``causal`` over at most n slices, and only those within (1 - a) x the estimated depth
        (at least the first): the planes say they lie inside the structure."""

        def agree(it: Item, d: str):
            dep = it.depth(variant, how, d)
            m = n if dep is None else max(1, min(n, int(np.floor(dep * (1 - a)))))
            return causal(c, m)(it, d)

        return agree

    def evidence(agree=None, force_of=None):
        def fn(it: Item, d: str) -> int:
            rows = it.rec["dirs"][d]
            thr = (
                None
                if agree is None
                else (agree(it, d) if getattr(agree, "per_direction", False) else agree(it))
            )
            ver = _verdicts(rows, rules, it.cal, it.rec["start"]["f"]["area"], thr)
            force = force_of(it, d) if force_of else None
            return _count(rows, ver, rules, force)

        return fn

    def guard_of(variant, how, a, b):
        def force_of(it, d):
            dep = it.depth(variant, how, d)
            if dep is None:
                return None

            def force(depth):
                if depth <= dep * (1 - a):
                    return "pass"
                if b is not None and depth > dep * (1 + b):
                    return "trip"
                return None

            return force

        return force_of

    def per_direction(f):
        f.per_direction = True
        return f

    v = {"current": evidence()}
    for c, n in itertools.product((0.5, 0.6, 0.7), (3, 5)):
        v[f"agree {c} x own({n})"] = evidence(agree=per_direction(causal(c, n)))
    for c, n in itertools.product((0.5, 0.6, 0.7, 0.8), (2, 3, 5)):
        v[f"agree {c} x start({n})"] = evidence(agree=lambda it, c=c, n=n: c * it.agree_ref(n))
        v[f"agree max(0.35, {c} x start({n}))"] = evidence(
            agree=lambda it, c=c, n=n: max(rules.min_agree, c * it.agree_ref(n))
        )

    def line_rule(source, t):  # trip where the kept mask disagrees with the lines' reading
        def fn(it: Item, d: str) -> int:
            rows = it.rec["dirs"][d]
            ver = _verdicts(rows, rules, it.cal, it.rec["start"]["f"]["area"])
            la = it.lines[source][d]
            ver = [
                (why or (f"off the planes ({a:.2f})" if a is not None and a < t else None), e)
                for (why, e), a in zip(ver, la, strict=True)
            ]
            return _count(rows, ver, rules)

        return fn

    for t in (0.2, 0.3, 0.4, 0.5, 0.6):
        v[f"lines reference < {t}"] = line_rule("reference", t)

    def soft(tau, scale, calibrated=None):
        """Evidence with graded weights: a slice that trips another rule costs 1, else it adds
        clip((agree - tau) / scale, -1, 1): the cut lands where the agreement curve bends down.
        ``calibrated`` (c, n): tau = c x the start's median agreement over n slices."""

        def fn(it: Item, d: str) -> int:
            rows = it.rec["dirs"][d]
            thr = calibrated[0] * it.agree_ref(calibrated[1]) if calibrated else tau
            ver = _verdicts(rows, replace(rules, min_agree=0.0), it.cal, it.rec["start"]["f"]["area"])
            count = best = 0.0
            kept = held = 0
            for r, (why, empty) in zip(rows, ver, strict=True):
                if empty:
                    return kept
                w = (
                    -rules.trip_weight
                    if why
                    else float(np.clip((r["f"].get("agree", 1.0) - thr) / scale, -1, 1))
                )
                count += w
                held += 1
                if count >= best - 1e-9:
                    best, kept, held = count, kept + held, 0
                elif best - count >= rules.patience - 1e-9:
                    return kept
            return kept

        return fn

    for tau, scale in itertools.product((0.3, 0.35, 0.4, 0.5), (0.1, 0.2, 0.3)):
        v[f"soft agree tau {tau} scale {scale}"] = soft(tau, scale)
    for c, scale, n in itertools.product(
        (0.4, 0.5, 0.55, 0.6, 0.65, 0.7), (0.05, 0.1, 0.15, 0.2, 0.3), (3, 5, 7)
    ):
        v[f"soft agree tau {c} x start({n}) scale {scale}"] = soft(None, scale, (c, n))

    def running(c, n):  # threshold c x the highest agreement so far (at least the start's median over n)
        def fn(it: Item, d: str) -> int:
            rows = it.rec["dirs"][d]
            base = it.agree_ref(n)
            ver, prev, top = [], it.rec["start"]["f"]["area"], base
            for r in rows:
                why = stop_reason(replace(rules, min_agree=0.0), r["f"], prev, it.cal)
                a = r["f"].get("agree", 1.0)
                if why is None and a < c * top:
                    why = f"lost track ({a:.2f})"
                top = max(top, a)
                ver.append((why, r["f"]["area"] == 0))
                prev = r["f"]["area"] or prev
            return _count(rows, ver, rules)

        return fn

    for c, n in itertools.product((0.5, 0.6, 0.7), (3, 5)):
        v[f"agree {c} x running max(start({n}))"] = running(c, n)
    for variant in estimates:
        hows = ("mean", "min", "max") if variant.startswith("reach") else ("mean",)
        for how in hows:
            tag = f"{variant} {how}"
            for o in (-2, -1, 0, 1, 2):
                v[f"{tag} | extent{o:+d}"] = lambda it, d, t=(variant, how, o): (
                    lambda dep: (
                        len(it.rec["dirs"][d])
                        if dep is None
                        else int(np.clip(round(dep + t[2]), 0, len(it.rec["dirs"][d])))
                    )
                )(it.depth(t[0], t[1], d))
            for b in (0.0, 0.1, 0.25, 0.5):
                v[f"{tag} | cap({b})"] = lambda it, d, t=(variant, how, b), ev=v["current"]: (
                    lambda dep, k: k if dep is None else min(k, int(np.ceil(dep * (1 + t[2]))))
                )(it.depth(t[0], t[1], d), ev(it, d))
            for a, b in itertools.product((0.25, 0.5, 1.0), (0.25, 0.5, 1.0, None)):
                v[f"{tag} | guard({a},{b})"] = evidence(force_of=guard_of(variant, how, a, b))
                for c, n in itertools.product((0.5, 0.6, 0.7), (3, 5)):  # with the calibrated agreement
                    v[f"{tag} | guard({a},{b}) + agree {c} x start({n})"] = evidence(
                        agree=lambda it, c=c, n=n: c * it.agree_ref(n), force_of=guard_of(variant, how, a, b)
                    )
                    v[f"{tag} | guard({a},{b}) + agree {c} x own({n})"] = evidence(
                        agree=per_direction(causal(c, n)), force_of=guard_of(variant, how, a, b)
                    )
                if b is None:  # calibrated on the guarded slices only (those the planes say are inside)
                    for c, n in itertools.product((0.5, 0.6, 0.7), (3, 5, 99)):
                        v[f"{tag} | guard({a},{b}) + agree {c} x guarded({n})"] = evidence(
                            agree=per_direction(inside(c, n, variant, how, a)),
                            force_of=guard_of(variant, how, a, b),
                        )
    return v


def replay(oracle_file: str, out_file: str | None, top: int, show=None) -> None:
    oracle = {
        c: {k: v["oracle"] for k, v in d["structures"].items()}
        for c, d in json.loads(Path(oracle_file).read_text())["cases"].items()
    }
    rules = StopRules()
    cases = ("colin27", "macaque", "cells3d")
    data = {}
    for case in cases:
        recs = pickle.loads((STORE / f"{case}.pkl").read_bytes())
        path = ESTIMATES / f"{case}.json"
        est = json.loads(path.read_text()) if path.exists() else {}
        _, labels, spacing, names = load(case)
        data[case] = []
        for name, rec in recs.items():
            zs = np.flatnonzero(
                (labels == (names.index(name) + 1 if names else int(name.rsplit(" ", 1)[1]))).any(axis=(1, 2))
            )
            e = est.get(name, {"variants": {}})
            e["variants"]["reference"] = [[int(zs[0]), int(zs[-1]), 1.0]]  # an exact prior: the upper bound
            # no planes: the start cross-section's radius (physical) in slices, k times, each side
            sz, sy, sx = spacing
            r = np.sqrt(rec["start"]["stat"][0] / np.pi * sy * sx) / sz
            for k in RADII:
                e["variants"][f"radius={k:g}"] = [[rec["z0"] - k * r, rec["z0"] + k * r, 1.0]]
            obj = labels == (names.index(name) + 1 if names else int(name.rsplit(" ", 1)[1]))
            start = _unpack(rec["start"]["mask"], rec["shape"])
            yc, xc = deepest_point(start)
            lines = {
                "reference": line_agreement(
                    rec, lambda z, obj=obj, yc=yc, xc=xc: (obj[z, yc, :], obj[z, :, xc])
                )
            }
            data[case].append(
                Item(
                    case,
                    name,
                    rec,
                    _kept_stats(rec, "anchor"),
                    e,
                    oracle[case][name],
                    Calibration(**rec["cal"]),
                    lines,
                )
            )

    def summarise(dices: dict) -> dict:
        res = {}
        for case in cases:
            ratios = [(dices[case][i] / it.oracle, it.name) for i, it in enumerate(data[case])]
            res[case] = {
                "ratio": float(np.mean(dices[case]) / np.mean([it.oracle for it in data[case]])),
                "worst": [round(min(ratios)[0], 3), min(ratios)[1]],
            }
        res["min_ratio"] = min(res[c]["ratio"] for c in cases)
        return res

    results = {
        "perfect": summarise(
            {
                c: [
                    max(
                        it.dice(u, d)
                        for u in range(len(it.stats["up"]) + 1)
                        for d in range(len(it.stats["down"]) + 1)
                    )
                    for it in data[c]
                ]
                for c in cases
            }
        )
    }
    estimates = [
        v
        for v in data["colin27"][0].est["variants"]
        if all(v in it.est["variants"] for c in cases for it in data[c])
    ]
    variants = stop_variants(rules, estimates)
    for sname, fn in variants.items():
        results[sname] = summarise(
            {c: [it.dice(fn(it, "up"), fn(it, "down")) for it in data[c]] for c in cases}
        )
    ranked = sorted(results.items(), key=lambda kv: -kv[1]["min_ratio"])

    def line(name, r):
        return (
            f"{r['min_ratio']:.3f} | "
            + " / ".join(f"{r[c]['ratio']:.3f}x ({r[c]['worst'][0]:.2f} {r[c]['worst'][1]})" for c in cases)
            + f" | {name}"
        )

    print("worst volume | colin27 / macaque / cells3d (worst structure) | variant")
    for name in ("current", "perfect"):
        print(line(name, results[name]))
    groups = (
        ("reference ends as the prior (an exact extent)", lambda n: n.startswith("reference")),
        ("per-structure agreement threshold", lambda n: n.startswith("agree")),
        ("graded agreement evidence (cut where the agreement curve bends)", lambda n: n.startswith("soft")),
        (
            "per-slice agreement with the lines through the start (reference lines: a bound)",
            lambda n: n.startswith("lines"),
        ),
        ("depth from the start cross-section's radius (no planes)", lambda n: n.startswith("radius")),
        ("estimated extent", lambda n: n.startswith("reach") and "agree" not in n),
        (
            "estimated extent + per-structure agreement threshold",
            lambda n: n.startswith("reach") and "agree" in n,
        ),
    )
    for title, keep in groups:
        print(f"-- {title}, top {top}:")
        for name, r in [kv for kv in ranked if keep(kv[0])][:top]:
            print(line(name, r))
    for name in show or ():
        fn = variants[name]
        print(f"-- per structure: {name} vs current (ratio to the oracle)")
        for c in cases:
            for it in data[c]:
                cur = it.dice(variants["current"](it, "up"), variants["current"](it, "down"))
                new = it.dice(fn(it, "up"), fn(it, "down"))
                if abs(new - cur) > 0.005:
                    print(f"   {c} {it.name}: {cur / it.oracle:.2f}x -> {new / it.oracle:.2f}x")
    if out_file:
        Path(out_file).write_text(json.dumps({"rules": rules.__dict__, "results": results}, indent=0))


def walk(specs: list[str], cache: str, out_file: str | None) -> None:
    """The real walk with ``extent_prior=True`` (needs the walk.py patch of docs/3d.md) on
    ``case[:id,id,...]``: Dice / oracle per structure, time, plane encodes, the estimate, the stops."""
    import dataclasses

    import torch

    import medsam_core
    from medsam_core.metrics import dice
    from medsam_core.walk import BoxWalk

    if "extent_prior" not in {f.name for f in dataclasses.fields(BoxWalk)}:
        raise SystemExit("BoxWalk has no extent_prior option: apply the walk.py/propagate.py patch first")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = medsam_core.load_model("lite_medsam", device="cpu")
    results = json.loads(Path(__file__).with_name("results").joinpath("3d_walk.json").read_text())["cases"]
    out = {}
    for spec in specs:
        case, _, only = spec.partition(":")
        vol, labels, spacing, names = load(case)
        pred, intensity = cached_predictor(model, case, vol, cache=cache, encoder_backend="torch")
        ids = (
            [int(x) for x in only.split(",")]
            if only
            else [int(i) for i in np.unique(labels) if i > 0 and (labels == i).any(axis=(1, 2)).sum() >= 3]
        )
        for i in ids:
            obj = labels == i
            name = names[i - 1] if names else f"{case} {i}"
            z0, box = largest_slice_box(obj, 3.0)
            e0, t0 = pred.encoder_calls, time.perf_counter()
            res = medsam_core.walk_volume(
                pred, vol, box, z0, spacing=spacing, intensity=intensity, extent_prior=True
            )
            d, orc = dice(res.volume(), obj), results[case]["structures"][name]["oracle"]
            row = {
                "dice": d,
                "oracle": orc,
                "ratio": d / orc,
                "time_s": time.perf_counter() - t0,
                "encodes": pred.encoder_calls - e0,
                "extent": [res.extent.lo, res.extent.hi] if res.extent else None,
                "stops": {k: str(v) for k, v in res.stops.items()},
            }
            out.setdefault(case, {})[name] = row
            print(
                f"{case} {name}: Dice {d:.3f} ({row['ratio']:.2f}x) {row['time_s']:.1f} s, {row['encodes']} encodes, "
                f"extent {row['extent']}, {row['stops']}",
                flush=True,
            )
    if out_file:
        Path(out_file).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("estimate", "replay", "walk"))
    ap.add_argument("cases", nargs="*", default=["colin27", "macaque", "cells3d"])
    ap.add_argument("--cache", default="/tmp/medsam_extent_cache")
    ap.add_argument("--oracle-from", default=str(Path(__file__).parent / "results" / "3d_walk.json"))
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--walk-cache", default="/tmp/medsam_bench_cache", help="walk: the slices' embedding cache"
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--show", nargs="*", help="variants whose per-structure changes to print")
    args = ap.parse_args()
    if args.command == "estimate":
        for case in args.cases:
            estimate(case, args.cache)
    elif args.command == "walk":
        walk(args.cases, args.walk_cache, args.out)
    else:
        replay(args.oracle_from, args.out, args.top, args.show)


if __name__ == "__main__":
    main()
