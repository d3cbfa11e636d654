"""Does the uncertainty score predict the model's failures? Spearman (uncertainty vs 1 - Dice) per case.

Cases: the 4 quadrants (256 x 256) of dsb2018 nuclei and 3 slices (z = 20, 30, 40) of the cells3d
nuclei stack. Per case every reference object gets its bounding box grown by 0-3 px per side (the
seed fixes the jitter), the bundled LiteMedSAM decodes it, Dice against the reference is the truth.

Scores compared (``medsam_core.active`` / ``signals``):

* ``default``: iou_pred + stability (4 jitters), weights 1 (what the widget ranks with today);
* ``fitted``: every signal (iou_pred, stability, flip, contrast) with weights fitted by
  ``signals.fit_weights`` on the *other* cases of the same data set (the corrections made so far),
  measured on this case;
* each signal alone.

Reported: mean per-case Spearman over cases and seeds. (The automatic head's signal needs a head
trained without the case's objects; it is not in this run.)

    .venv/bin/python benchmarks/bench_ranking_signals.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SIGNALS = ("flip", "contrast")
ALONE = ("iou_pred", "stability", "flip", "contrast")


def cases() -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    out = []
    with np.load(DATA / "fluo_nuclei_dsb2018.npz") as d:
        img, lab = d["image"], d["labels"].astype(np.int32)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    for k, (ys, xs) in enumerate([(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)),
                                  (slice(h, None), slice(0, w)), (slice(h, None), slice(w, None))]):
        out.append(("dsb", f"dsb q{k}", img[ys, xs], lab[ys, xs]))
    with np.load(DATA / "confocal3d_nuclei_cells3d.npz") as d:
        for z in (20, 30, 40):
            out.append(("cells3d", f"cells3d z{z}", d["image"][z], d["labels"][z].astype(np.int32)))
    return out


def case_components(predictor, image, labels, seed: int) -> tuple[list[dict], list[float]]:
    from medsam_core.active import Candidate, score_candidates
    from medsam_core.data import bounding_box
    from medsam_core.metrics import dice

    rng = np.random.default_rng(seed)
    h, w = labels.shape
    cands, ids = [], []
    for i in np.unique(labels):
        if i == 0 or (labels == i).sum() < 15:
            continue
        x0, y0, x1, y1 = bounding_box(labels == i)
        d = rng.uniform(0, 3, 4)
        cands.append(Candidate("c", (max(0.0, x0 - d[0]), max(0.0, y0 - d[1]), min(w - 1.0, x1 + d[2]),
                                     min(h - 1.0, y1 + d[3]))))
        ids.append(int(i))
    sugg = score_candidates(predictor, {"c": image}, cands, n_jitter=4, seed=seed, signals=SIGNALS)
    predictor.set_image(image)
    masks, _ = predictor.predict(boxes=np.array([c.box for c in cands]))
    dices = [dice(m, labels == i) for m, i in zip(masks, ids, strict=True)]
    return [s.components for s in sugg], dices


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    from medsam_core import Predictor, load_model
    from medsam_core.active import Weights, combine
    from medsam_core.signals import fit_weights

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import cpu_model

    predictor = Predictor(load_model("lite_medsam"))
    result = {"machine": {"cpu": cpu_model(), "load_before": os.getloadavg()}, "rows": []}
    t0 = time.perf_counter()
    all_cases = cases()
    for seed in range(args.seeds):
        measured = []
        for ds, name, img, lab in all_cases:
            comps, dices = case_components(predictor, img, lab, seed)
            measured.append((ds, name, comps, dices))
            print(f"seed {seed} {name}: {len(dices)} objects, mean Dice {np.mean(dices):.3f}", flush=True)
        for ds, name, comps, dices in measured:
            others = [(c, d) for ds2, n2, cs, ds_ in measured if ds2 == ds and n2 != name
                      for c, d in zip(cs, ds_, strict=True)]
            w = fit_weights([c for c, _ in others], [d for _, d in others], names=ALONE)
            fail = [1 - d for d in dices]
            row = {"seed": seed, "dataset": ds, "case": name, "objects": len(dices), "mean_dice": float(np.mean(dices)),
                   "default": spearman([combine(c, Weights()) for c in comps], fail),
                   "fitted": spearman([combine(c, w) for c in comps], fail), "weights": vars(w)}
            for k in ALONE:
                row[k] = spearman([1 - c[k] for c in comps], fail)
            result["rows"].append(row)
            print(f"  {name}: Spearman default {row['default']:.2f}, fitted {row['fitted']:.2f} "
                  + " ".join(f"{k} {row[k]:.2f}" for k in ALONE), flush=True)
    rows = result["rows"]
    summary = {}
    for key in ("default", "fitted", *ALONE):
        summary[key] = {"all": float(np.mean([r[key] for r in rows]))}
        for ds in ("dsb", "cells3d"):
            summary[key][ds] = float(np.mean([r[key] for r in rows if r["dataset"] == ds]))
    result["summary"] = summary
    result["machine"]["load_after"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranking_signals.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
