"""Simulated annotator: does ranking objects by uncertainty save corrections over random order?

Plays the person on two data sets (``--dataset``):

* ``dsb``: dsb2018 (512 x 512 fluorescence nuclei, 125 objects) cut into quadrants: quadrants 0-2 are
  the pool to annotate (108 nuclei >= 15 px), quadrant 3 (29 nuclei) is held out;
* ``cells3d``: slices z = 24, 32, 40 of the cells3d confocal nuclei stack are the pool (~59 nuclei
  cross-sections), slice z = 46 is held out (the stack has only 20 nuclei, so the held-out slice cuts
  the same nuclei elsewhere: a secondary check).

Each round the "person" takes ``--per-round`` objects, in the order of a strategy, draws the object's
bounding box with a small fixed jitter, and accepts the model's mask when its Dice with the reference
is >= 0.9, otherwise "corrects" it (the kept mask is the reference). Then the decoder is fine-tuned
(decoder mode, from the base model, on every object labelled so far; the cached embeddings are
reused) and the next round starts with the new model. Strategies:

* ``fitted``: ``active.score_candidates`` with the extra signals (flip, contrast; agreement with the
  previous model from round 2) and weights refitted every round by ``signals.weights_from_corrections``
  on the objects labelled so far (their components and Dice measured with the model of the round in
  which they were labelled: the model's mask at prompting vs the kept one); round 1 has no
  corrections yet, so it ranks with the default weights (iou_pred + stability);
* ``default``: the same score with the default weights every round (what the widget ranked with);
* ``random``: random order.

Every strategy runs with ``--seeds`` seeds; seed s fixes the box jitter, the random order, the ranking's
jittered boxes and the fine-tuning, so strategies are compared pairwise per seed. Reported per round:
objects corrected among the round's objects, corrections the current model would need on the rest of
the pool, held-out Dice after fine-tuning; per run: ``total_to_finish`` = corrections made in the
rounds + corrections the last model needs on the objects never labelled (the cost of annotating the
whole pool); ``saved_vs_random`` = random's total minus the strategy's (same seed; > 0 = saved);
``corrections_left_after``: the errors the last model leaves among the objects never reviewed (what
a person who stops after the rounds and accepts the rest would leave in the labels). Runs with one
torch thread by default (``--threads``): on the shared 2-core machine two threads decoded 20x slower.

    MEDSAM_ENCODER_BACKEND=torch .venv/bin/python benchmarks/bench_active_learning.py --dataset dsb \
        --seeds 3 --rounds 3 --per-round 15 --epochs 2 --strategies fitted,random
    MEDSAM_ENCODER_BACKEND=torch .venv/bin/python benchmarks/bench_active_learning.py --dataset cells3d \
        --seeds 3 --rounds 3 --per-round 10 --epochs 2 --strategies fitted,random
    ... --strategies default --tag default --random-from benchmarks/results/active_learning_<dataset>.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
DATA = DATA_DIR / "fluo_nuclei_dsb2018.npz"
ACCEPT_DICE = 0.9
SIGNALS = ("flip", "contrast")
CELLS3D_POOL, CELLS3D_HELDOUT = (24, 32, 40), 46
PER_ROUND = {"dsb": 20, "cells3d": 10}


@dataclass
class Pool:
    """Images with reference labels and one object per (image, label id), its drawn box (4,)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    objects: list[tuple[int, int, tuple[float, float, float, float]]] = field(default_factory=list)


def make_pool(images, labels, jitter: float = 3.0, min_area: int = 15, seed: int = 0) -> Pool:
    """One object per label id of at least ``min_area`` pixels, its bounding box grown by up to
    ``jitter`` pixels per side (fixed per object, so both strategies see the same boxes)."""
    from medsam_core.data import bounding_box

    rng = np.random.default_rng(seed)
    pool = Pool(list(images), list(labels))
    for k, lab in enumerate(labels):
        h, w = lab.shape
        for i in np.unique(lab):
            if i == 0 or (lab == i).sum() < min_area:
                continue
            x0, y0, x1, y1 = bounding_box(lab == i)
            d = rng.uniform(0, jitter, 4)
            box = (max(0.0, x0 - d[0]), max(0.0, y0 - d[1]), min(w - 1.0, x1 + d[2]), min(h - 1.0, y1 + d[3]))
            pool.objects.append((k, int(i), box))
    return pool


def model_dice(predictor, pool: Pool, chosen: list[int]) -> list[float]:
    """Dice of the model's mask for each chosen object (one predict call per image)."""
    from medsam_core.metrics import dice

    out = {}
    for k in sorted({pool.objects[i][0] for i in chosen}):
        idx = [i for i in chosen if pool.objects[i][0] == k]
        predictor.set_image(pool.images[k])
        masks, _ = predictor.predict(boxes=np.array([pool.objects[i][2] for i in idx]))
        for i, m in zip(idx, masks, strict=True):
            out[i] = dice(m, pool.labels[k] == pool.objects[i][1])
    return [out[i] for i in chosen]


def choose(strategy: str, predictor, previous, pool: Pool, remaining: list[int], n: int,
           rng: np.random.Generator, history: list[tuple[dict, float]], seed: int = 0):
    """The next ``n`` objects of ``strategy``: (indices, their components or None, FittedWeights or None)."""
    if strategy == "random":
        return [int(i) for i in rng.choice(remaining, size=min(n, len(remaining)), replace=False)], None, None
    from medsam_core.active import Candidate, Weights, rank, score_candidates
    from medsam_core.signals import weights_from_corrections

    fw = weights_from_corrections([c for c, _ in history], [d for _, d in history]) if strategy == "fitted" else None
    cands = [Candidate(pool.objects[i][0], pool.objects[i][2], label=i) for i in remaining]
    images = dict(enumerate(pool.images))
    scored = score_candidates(predictor, images, cands, previous=previous, n_jitter=4, seed=seed,
                              signals=SIGNALS if strategy == "fitted" else (),
                              weights=fw.weights if fw is not None else Weights())
    top = rank(scored, n)
    return [s.label for s in top], [s.components for s in top], fw


def simulate(pool: Pool, strategy: str, rounds: int, per_round: int, base_model, make_predictor, train,
             seed: int = 0, log=None) -> tuple[list[dict], dict]:
    """Rounds of choose -> annotate -> fine-tune. make_predictor(model) -> predictor;
    train(base_model, pool, labelled indices) -> (new model, held-out Dice). Returns one dict per
    round and the run's summary (total_to_finish, ...)."""
    log = log or functools.partial(print, flush=True)
    rng = np.random.default_rng(seed)
    model, previous_model = base_model, None
    labelled: list[int] = []
    history: list[tuple[dict, float]] = []  # (components, Dice) of the objects labelled so far
    rows = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        remaining = [i for i in range(len(pool.objects)) if i not in set(labelled)]
        if not remaining:
            break
        pred = make_predictor(model)
        prev = make_predictor(previous_model) if previous_model is not None else None
        pool_dice = model_dice(pred, pool, remaining)
        chosen, comps, fw = choose(strategy, pred, prev, pool, remaining, per_round, rng, history, seed + rnd)
        dices = [pool_dice[remaining.index(i)] for i in chosen]
        if comps is not None:
            history += list(zip(comps, dices, strict=True))
        corrected = int(sum(d < ACCEPT_DICE for d in dices))
        labelled += chosen
        new_model, heldout = train(base_model, pool, labelled)
        rows.append({
            "strategy": strategy, "round": rnd, "labelled": len(chosen), "corrected": corrected,
            "round_dice": float(np.mean(dices)), "pool_left": len(remaining),
            "pool_corrections": int(sum(d < ACCEPT_DICE for d in pool_dice)),
            "heldout_dice_after": heldout, "seconds": time.perf_counter() - t0, "chosen": chosen,
            "weights": None if fw is None else {"fitted": fw.fitted, "n": fw.n, **vars(fw.weights)},
        })
        log(f"{strategy:8s} seed {seed} round {rnd}: corrected {corrected}/{len(chosen)}, pool needs "
            f"{rows[-1]['pool_corrections']}/{len(remaining)}, held-out Dice after {heldout:.4f} "
            f"({rows[-1]['seconds']:.0f} s){'' if fw is None else '; ranking ' + fw.describe()}")
        previous_model, model = model, new_model
    rest = [i for i in range(len(pool.objects)) if i not in set(labelled)]
    left = int(sum(d < ACCEPT_DICE for d in model_dice(make_predictor(model), pool, rest))) if rest else 0
    made = int(sum(r["corrected"] for r in rows))
    summary = {"strategy": strategy, "seed": seed, "corrected_in_rounds": made, "left_after": len(rest),
               "corrections_left_after": left, "total_to_finish": made + left,
               "heldout_dice_final": rows[-1]["heldout_dice_after"] if rows else None}
    log(f"{strategy:8s} seed {seed}: {made} corrections in the rounds + {left} of {len(rest)} left = "
        f"{made + left} to finish the pool")
    return rows, summary


def make_trainer(heldout_pair, epochs: int, cache, seed: int = 0):
    """train(base, pool, labelled) for ``simulate``: decoder-only fit on the labelled objects."""
    from medsam_core.data import make_training_data
    from medsam_core.training import TrainConfig, fit

    heldout = make_training_data([heldout_pair])

    def train(base, pool: Pool, labelled: list[int]):
        pairs, boxes = [], []
        for k in range(len(pool.images)):
            sel = [pool.objects[i] for i in labelled if pool.objects[i][0] == k]
            if not sel:
                continue
            lab = np.where(np.isin(pool.labels[k], [o[1] for o in sel]), pool.labels[k], 0)
            pairs.append((pool.images[k], lab))
            boxes.append({o[1]: o[2] for o in sel})
        data = make_training_data(pairs, boxes)
        cfg = TrainConfig(mode="decoder", epochs=epochs, seed=seed)
        result = fit(base, data, cfg, cache=cache, heldout=heldout)
        print(f"  fine-tuned on {len(data)} objects: held-out Dice {result.dice_before:.4f} -> "
              f"{result.dice_after:.4f} ({result.steps} steps, {result.elapsed_s:.0f} s)")
        return result.model, result.dice_after

    return train


def quadrants(image, labels):
    h, w = image.shape[0] // 2, image.shape[1] // 2
    cut = [(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)), (slice(h, None), slice(0, w)),
           (slice(h, None), slice(w, None))]
    return [image[s] for s in cut], [labels[s] for s in cut]


def auto_bench(base, tuned, cache, train_imgs, train_labs, test_img, test_lab) -> dict:
    from medsam_core import Predictor
    from medsam_core.auto import fit_auto, match

    out = {}
    for name, model in (("base", base), ("fine-tuned", tuned)):
        pred = Predictor(model, cache)
        auto = fit_auto(pred, train_imgs, train_labs)
        res = match(auto.propose(pred, test_img).masks, test_lab)
        out[name] = {**res.to_dict(), "auto_model": auto.to_dict()}
        print(f"auto ({name}): found {res.matched}/{res.n_ref} (recall {res.recall:.3f}), precision "
              f"{res.precision:.3f}, mean Dice of matched {res.mean_dice:.4f}, min_score {auto.min_score}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    metrics = (lambda r: r["corrected"], lambda r: r["pool_corrections"] / r["pool_left"],
               lambda r: r["heldout_dice_after"])
    styles = ("o-", "s--", "^:")
    for strategy, style in zip(dict.fromkeys(r["strategy"] for r in rows), styles * 3, strict=False):
        sel = [r for r in rows if r["strategy"] == strategy]
        x = sorted({r["round"] for r in sel})
        for ax, get in zip(axes, metrics, strict=True):
            per_round = [[get(r) for r in sel if r["round"] == k] for k in x]
            mean = [float(np.mean(v)) for v in per_round]
            runs = len(per_round[0]) if per_round else 0
            line = ax.plot(x, mean, style, label=strategy if runs == 1 else f"{strategy} (mean of {runs}, range)")
            if runs > 1:
                ax.fill_between(x, [min(v) for v in per_round], [max(v) for v in per_round],
                                color=line[0].get_color(), alpha=0.2)
    for ax, t in zip(axes, ("objects corrected in the round", "share of pool needing correction (before round)",
                            "held-out Dice after fine-tuning"), strict=True):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("round")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_dataset(name: str):
    """(pool images, pool labels, held-out (image, labels)) of ``name`` ("dsb" or "cells3d")."""
    if name == "dsb":
        with np.load(DATA) as d:
            imgs, labs = quadrants(d["image"], d["labels"].astype(np.int32))
        return imgs[:3], labs[:3], (imgs[3], labs[3])
    with np.load(DATA_DIR / "confocal3d_nuclei_cells3d.npz") as d:
        img, lab = d["image"], d["labels"].astype(np.int32)
    return ([img[z] for z in CELLS3D_POOL], [lab[z] for z in CELLS3D_POOL],
            (img[CELLS3D_HELDOUT], lab[CELLS3D_HELDOUT]))


def summarise(summaries: list[dict]) -> dict:
    """Per strategy: totals per seed, and corrections saved vs random (same seed): mean, min, max."""
    out = {}
    rand = {s["seed"]: s["total_to_finish"] for s in summaries if s["strategy"] == "random"}
    for strategy in dict.fromkeys(s["strategy"] for s in summaries):
        mine = [s for s in summaries if s["strategy"] == strategy]
        totals = [s["total_to_finish"] for s in mine]
        entry = {"seeds": [s["seed"] for s in mine], "total_to_finish": totals,
                 "corrected_in_rounds": [s["corrected_in_rounds"] for s in mine],
                 "heldout_dice_final": [s["heldout_dice_final"] for s in mine],
                 "total_mean": float(np.mean(totals))}
        saved = [rand[s["seed"]] - s["total_to_finish"] for s in mine if s["seed"] in rand]
        if strategy != "random" and saved:
            entry["saved_vs_random"] = {"per_seed": saved, "mean": float(np.mean(saved)), "min": min(saved),
                                        "max": max(saved)}
        out[strategy] = entry
    return out


def write(args, rows, summaries, auto, machine, t0, per_round: int, pool_objects: int):
    """Write benchmarks/results/active_learning_<dataset>.json (also after each seed: a cut run keeps its seeds)."""
    import os

    earlier = []
    if args.random_from is not None:
        earlier = [r for r in json.loads(args.random_from.read_text())["runs"] if r["strategy"] == "random"]
    result = {"dataset": args.dataset, "pool_objects": pool_objects, "per_round": per_round,
              "summary": summarise(summaries + earlier), "random_from": str(args.random_from or ""), "runs": summaries, "rows": rows, "auto": auto,
              "total_s": time.perf_counter() - t0, "machine": {**machine, "load_now": os.getloadavg()},
              "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"active_learning_{args.dataset}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    return result, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("dsb", "cells3d"), default="dsb")
    ap.add_argument("--strategies", default="fitted,random", help="comma list of fitted, default, random")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=None, help="objects per round (dsb 20, cells3d 10)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine 2 threads made decoding 20x slower)")
    ap.add_argument("--auto", action="store_true", help="also fit the threshold detector (auto.py) afterwards")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the rounds (none by default)")
    ap.add_argument("--tag", default="", help="output active_learning_<dataset>_<tag>.json")
    ap.add_argument("--random-from", type=Path, default=None,
                    help="an earlier result JSON whose random runs (same seeds, settings) this run is compared with")
    args = ap.parse_args(argv)
    import os

    import torch

    import medsam_core

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import cpu_model

    torch.set_num_threads(args.threads)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    per_round = args.per_round or PER_ROUND[args.dataset]
    imgs, labs, heldout = load_dataset(args.dataset)
    cache = medsam_core.EmbeddingCache()
    base = medsam_core.load_model("lite_medsam", device="cpu")
    machine = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    print(f"{args.dataset}: machine {machine}", flush=True)
    t0 = time.perf_counter()
    rows, summaries = [], []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        pool = make_pool(imgs, labs, seed=seed)
        train = make_trainer(heldout, args.epochs, cache, seed)
        print(f"seed {seed}: pool {len(pool.objects)} objects in {len(imgs)} images", flush=True)
        for strategy in strategies:
            r, summary = simulate(pool, strategy, args.rounds, per_round, base,
                                  lambda m: medsam_core.Predictor(m, cache), train, seed=seed)
            for row in r:
                row["seed"] = seed
            rows += r
            summaries.append(summary)
        write(args, rows, summaries, {}, machine, t0, per_round, len(pool.objects))  # after each seed
    auto = {}
    if args.auto and args.dataset == "dsb":
        last = [r for r in rows if r["strategy"] == strategies[0] and r["seed"] == 0]
        tuned, _ = make_trainer(heldout, args.epochs, cache)(base, pool, [i for r in last for i in r["chosen"]])
        auto = auto_bench(base, tuned, cache, imgs, labs, *heldout)
    machine["load_after"] = os.getloadavg()
    result, out = write(args, rows, summaries, auto, machine, t0, per_round, len(pool.objects))
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot)
    print(json.dumps(result["summary"], indent=1, default=float))
    print(f"total {result['total_s']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
