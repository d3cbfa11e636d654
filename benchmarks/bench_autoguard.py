"""Does the automatic head's guard accept a head that is better on the test set? (issue 19)

The bench_automatic.py setting: dsb2018 quadrants 0-2 are where the person labels N objects
(nearest the top-left first, so the labelled area is contiguous and its frontier touches nuclei
nobody labelled); quadrant 3 is the test set. For each N and guard seed, one guarded round
(``autoguard.HeadSession.run_round``) against the threshold detector; then both are scored on the
test quadrant. The run also saves what the guard saw (proposals of both on the labelled images,
the held-out split, the complete ground truth) so scoring rules can be compared offline:

* ``current``: the guard's score (held-out labels inside the held-out region);
* ``oracle``: the same region, scored against the complete ground truth (every nucleus labelled):
  what the guard would say if the known region really were completely labelled.

    .venv/bin/python benchmarks/bench_autoguard.py --counts 30,90 --seeds 0,1,2 --out /tmp/guard
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_automatic import DATA, labelled, person_order, quadrants  # noqa: E402


def run_one(predictor, images, full, n, seed, test_image, test_labels, epochs, save: Path | None) -> dict:
    from medsam_core.auto import AutoModel, DetectorParams, match
    from medsam_core.autoguard import HeadSession
    from medsam_core.autohead import HeadConfig, known_region
    from medsam_core.autoseg import segment_everything

    order = person_order(full)
    part = labelled(full, order, n)
    keep = [k for k, lab in enumerate(part) if lab.any()]
    imgs, labs = [images[k] for k in keep], [part[k] for k in keep]
    known = [known_region(lab) for lab in labs]
    session = HeadSession()
    t0 = time.perf_counter()
    gen = session.run_round(predictor, imgs, labs, known, HeadConfig(epochs=epochs, seed=seed), force=False)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            rnd = stop.value
            break
    res = {"n": n, "seed": seed, "train_s": time.perf_counter() - t0, "accepted": rnd.accepted,
           "heldout_f1": rnd.f1, "heldout_dice": rnd.dice, "active_f1": rnd.f1_active,
           "active_dice": rnd.dice_active, "post": dict(vars(rnd.head.post))}
    thr = AutoModel(DetectorParams(split=True))
    res["test_head"] = match(segment_everything(predictor, rnd.head, test_image).masks, test_labels).to_dict()
    res["test_threshold"] = match(thr.propose(predictor, test_image).masks, test_labels).to_dict()
    res["head_better_on_test"] = res["test_head"]["f1"] > res["test_threshold"]["f1"]
    if save is not None:
        arrays = {}
        for j, (img, k) in enumerate(zip(imgs, keep, strict=True)):
            arrays[f"head{j}"] = segment_everything(predictor, rnd.head, img).masks
            arrays[f"thr{j}"] = thr.propose(predictor, img).masks
            arrays[f"lab{j}"], arrays[f"full{j}"], arrays[f"known{j}"] = labs[j], full[k], known[j]
        arrays["split"] = np.array(json.dumps({"holdout": 0.2, "seed": seed}))
        np.savez_compressed(save / f"guard_{n}_{seed}.npz", **arrays)
    print(json.dumps({k: v for k, v in res.items() if k != "post"}, default=float), flush=True)
    return res


def decisions(path: Path, seed: int, holdout: float = 0.2) -> dict:
    """What three guard rules decide on one saved run (the same trained head, same split):
    ``before`` (held-out labels cut to the held-out region, accept only a strictly higher (F1, Dice)),
    ``whole`` (whole objects as references, same strict rule), ``bootstrap`` (whole objects, refuse
    only when the threshold detector is better in >= REFUSE_AT of paired resamples: the guard now)."""
    from medsam_core.auto import Proposals
    from medsam_core.autoguard import REFUSE_AT, heldout_counts, p_worse, split_part
    from medsam_core.autoseg import match_in_region

    d = np.load(path)
    n = len([k for k in d.files if k.startswith("lab")])
    labs, known = [d[f"lab{j}"] for j in range(n)], [d[f"known{j}"] for j in range(n)]
    part = split_part(list(range(n)), labs, known, holdout, seed, 0.5, 4)
    out = {}
    counts = {}
    for meth in ("head", "thr"):
        props = lambda j, meth=meth: Proposals(d[f"{meth}{j}"], np.zeros((0, 4)), np.zeros(0))  # noqa: E731
        tp = n_pred = n_ref = 0
        dices = []
        for j in range(n):  # the rule before: references cut to the held-out region
            hk = part.held_known[j]
            if hk.any():
                r = match_in_region(props(j).masks, np.where(hk, labs[j], 0), hk)
                tp, n_pred, n_ref = tp + r.matched, n_pred + r.n_pred, n_ref + r.n_ref
                dices += [r.mean_dice] * r.matched
        out[f"before_{meth}"] = (2 * tp / max(n_pred + n_ref, 1), float(np.mean(dices)) if dices else 0.0)
        counts[meth], dices = heldout_counts(props, part)
        c = counts[meth].sum(0)
        out[f"whole_{meth}"] = (float(2 * c[0] / max(c[1] + c[2], 1)), float(np.mean(dices)) if dices else 0.0)
    out["heldout_objects"] = int(counts["head"][:, 2].sum())
    out["p_worse"] = p_worse(counts["head"], counts["thr"], seed=seed)
    out["accept_before"] = bool(out["before_head"] > out["before_thr"])
    out["accept_whole"] = bool(out["whole_head"] > out["whole_thr"])
    out["accept_bootstrap"] = bool(out["p_worse"] < REFUSE_AT)
    return out


def main(argv=None) -> int:
    from _machine import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="30,90")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--inverted", action="store_true", help="the inverted-contrast copy")
    p.add_argument("--out", type=Path, default=None, help="folder for the per-run arrays (offline rules)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--decide", type=Path, default=None, help="only compare the guard rules on saved runs (--out of "
                   "an earlier run) with the test-set result in its --json")
    args = p.parse_args(argv)
    if args.decide is not None:
        runs = json.loads(args.json.read_text())["runs"]
        for r in runs:
            r["decisions"] = decisions(args.decide / f"guard_{r['n']}_{r['seed']}.npz", r["seed"])
            print(r["n"], r["seed"], "test F1 head", round(r["test_head"]["f1"], 3), "thr",
                  round(r["test_threshold"]["f1"], 3), json.dumps(r["decisions"], default=float), flush=True)
        args.json.write_text(json.dumps({**json.loads(args.json.read_text()), "runs": runs}, indent=1, default=float))
        return 0
    from medsam_core import Predictor, load_model

    d = np.load(DATA)
    image, labels = d["image"], d["labels"].astype(np.int32)
    if args.inverted:
        image = (image.max() - image).astype(image.dtype)
    qi, ql = quadrants(image), quadrants(labels)
    predictor = Predictor(load_model("lite_medsam", device="cpu"), encoder_backend="torch")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"cpu": cpu_model(), "load_before": os.getloadavg()}, "runs": []}
    for n in (int(c) for c in args.counts.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            out["runs"].append(run_one(predictor, qi[:3], ql[:3], n, seed, qi[3], ql[3], args.epochs, args.out))
    out["machine"]["load_after"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
