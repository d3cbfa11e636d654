"""3D walk: decode rule-free walks once, then replay stop rules and output choices offline in seconds.

With the anchored box (``anchor=1``) a slice's prompt does not depend on where the walk stops, and
the cross-check walk depends only on its own masks, so one walk per structure and direction that
never stops (to ``--past`` slices beyond the reference's end) holds everything any stop rule sees.
``extract`` saves, per slice: the one-mask and three multimask outputs for the anchored box (their
area and overlap with the reference, the masks packed), the cross-check mask's agreement, and the
features of ``walk_stop.slice_features``. ``replay`` runs ``walk_stop.Evidence`` with the given
rules over the saved profiles for every volume at once and prints walk Dice / oracle per volume
(the oracle from a bench_3d result file), and the best possible stop.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_replay.py extract colin27 [macaque cells3d]
     .venv/bin/python benchmarks/bench_3d_replay.py replay [--rules min_agree=0.35 patience=3] [--output anchor]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import cached_predictor, largest_slice_box, load, parse_opts  # noqa: E402

from medsam_core.walk import BoxWalk, WalkResult  # noqa: E402
from medsam_core.walk_stop import Calibration, Evidence, StopRules, slice_features, stop_reason  # noqa: E402

STORE = Path("/tmp/medsam_3d_profiles")
OUTPUTS = ("single", "mm0", "mm1", "mm2")


def extract(case: str, past: int, cache: str) -> None:
    import medsam_core
    from medsam_core.volume import is_blank

    vol, labels, spacing, names = load(case)
    pred, intensity = cached_predictor(medsam_core.load_model("lite_medsam", device="cpu"), case, vol, cache=cache)
    walk, out = BoxWalk(), {}
    for i in [int(i) for i in np.unique(labels) if i > 0 and (labels == i).any(axis=(1, 2)).sum() >= 3]:
        obj = labels == i
        z0, box = largest_slice_box(obj, 3.0)
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        res = WalkResult(vol.shape, 0, z0, {z0: box})
        walk._decode(pred, vol[z0], box, None, intensity, res, z0, None)
        cal = walk._calibrate(vol[z0], res, intensity)
        start = res.masks[z0]
        rec = {"z0": z0, "gt_total": int(obj.sum()), "cal": cal.__dict__, "shape": start.shape,
               "start": {"f": res.features[z0], "stat": (int(start.sum()), int((start & obj[z0]).sum())),
                         "mask": np.packbits(start)}, "dirs": {}}
        for name, step in (("up", 1), ("down", -1)):
            end = min(zs[-1] + past, len(vol) - 1) if step > 0 else max(zs[0] - past, 0)
            prev = shadow = start
            rows = []
            for z in range(z0 + step, end + step, step):
                if is_blank(vol[z]):
                    break
                pred.set_image(vol[z], intensity=intensity)
                own = walk._rule_box(shadow, [(None, None)], cal, spacing, shadow.shape)
                one = pred.predict(boxes=np.stack([box, own]))
                multi = pred.predict(boxes=box[None], multimask_output=True)[0][0]
                masks = dict(zip(OUTPUTS, [one[0][0], *multi], strict=True))
                m, other = masks["single"], one[0][1]
                f = slice_features(vol[z], m, float(one[1][0]), prev)
                union = (m | other).sum()
                f["agree"] = float((m & other).sum() / union) if union else 0.0
                rows.append({"z": z, "f": f, "stat": {k: (int(v.sum()), int((v & obj[z]).sum())) for k, v in masks.items()},
                             "masks": {k: np.packbits(v) for k, v in masks.items()}})
                prev = m if m.any() else prev
                shadow = other if other.any() else shadow
            rec["dirs"][name] = rows
        out[names[i - 1] if names else f"{case} {i}"] = rec
        print(case, i, flush=True)
    STORE.mkdir(parents=True, exist_ok=True)
    (STORE / f"{case}.pkl").write_bytes(pickle.dumps(out))


def _unpack(packed, shape) -> np.ndarray:
    return np.unpackbits(packed)[: shape[0] * shape[1]].reshape(shape).astype(bool)


def _kept_stats(rec, output: str) -> dict:
    """Per direction, the (area, overlap) of the mask each slice keeps under ``output``."""
    start = _unpack(rec["start"]["mask"], rec["shape"])
    stats = {}
    for d, rows in rec["dirs"].items():
        like, out = start, []
        for r in rows:
            if output == "single":
                out.append(r["stat"]["single"])
                continue
            ms = {k: _unpack(r["masks"][k], rec["shape"]) for k in OUTPUTS}
            k = max(OUTPUTS, key=lambda k: (ms[k] & like).sum() / max((ms[k] | like).sum(), 1))
            out.append(r["stat"][k])
            if output == "consistent" and ms[k].any():
                like = ms[k]
        stats[d] = out
    return stats


def _cut(rows, rules: StopRules, cal: Calibration, area0: int) -> int:
    """Slices kept in one direction: Evidence over the saved verdicts, as BoxWalk._walk runs it."""
    ev, prev, kept = Evidence(rules), area0, 0
    for r in rows:
        got, stop = ev.add(r["z"], stop_reason(rules, r["f"], prev, cal), empty=r["f"]["area"] == 0)
        kept += len(got)
        if stop is not None:
            return kept
        prev = r["f"]["area"] or prev
    return kept


def replay(rules: StopRules, output: str, oracle_file: str) -> None:
    oracle = {c: {k: v["oracle"] for k, v in d["structures"].items()}
              for c, d in json.loads(Path(oracle_file).read_text())["cases"].items()}
    for path in sorted(STORE.glob("*.pkl")):
        case, recs = path.stem, pickle.loads(path.read_bytes())
        dice, best, orc = [], [], []
        for name, rec in recs.items():
            stats, (a0, i0) = _kept_stats(rec, output), rec["start"]["stat"]

            def score(ku, kd, stats=stats, rec=rec, a0=a0, i0=i0):
                sel = stats["up"][:ku] + stats["down"][:kd]
                return 2 * (i0 + sum(i for _, i in sel)) / (a0 + sum(a for a, _ in sel) + rec["gt_total"])

            cal = Calibration(**rec["cal"])
            ks = [_cut(rec["dirs"][d], rules, cal, rec["start"]["f"]["area"]) for d in ("up", "down")]
            dice.append(score(*ks))
            best.append(max(score(u, d) for u in range(len(stats["up"]) + 1) for d in range(len(stats["down"]) + 1)))
            orc.append(oracle[case][name])
        print(f"{case}: {np.mean(dice):.3f} / {np.mean(orc):.3f} = {np.mean(dice) / np.mean(orc):.3f}x "
              f"(min {min(d / o for d, o in zip(dice, orc, strict=True)):.2f}), best possible stop {np.mean(best) / np.mean(orc):.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("extract", "replay"))
    ap.add_argument("cases", nargs="*", default=["colin27", "macaque", "cells3d"])
    ap.add_argument("--past", type=int, default=10, help="slices decoded past the reference's ends")
    ap.add_argument("--cache", default="/tmp/medsam_bench_cache")
    ap.add_argument("--rules", nargs="*", help="StopRules fields key=value (default: the walk's defaults)")
    ap.add_argument("--output", default="anchor", choices=("single", "anchor", "consistent"))
    ap.add_argument("--oracle-from", default=str(Path(__file__).parent / "results" / "3d_walk.json"))
    args = ap.parse_args()
    if args.command == "extract":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        for case in args.cases:
            extract(case, args.past, args.cache)
    else:
        replay(replace(StopRules(), **parse_opts(args.rules)), args.output, args.oracle_from)


if __name__ == "__main__":
    main()
