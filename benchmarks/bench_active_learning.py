"""Simulated annotator: does ranking objects by uncertainty save corrections over random order?

Plays the person on dsb2018 (512 x 512 fluorescence nuclei, 125 objects) split into quadrants:
quadrants 0-2 are the pool to annotate, quadrant 3 is held out. Each round the "person" takes
``--per-round`` objects (ranked by ``medsam_core.active`` uncertainty, or in random order), draws
the object's bounding box with a small fixed jitter, and accepts the model's mask when its Dice
with the reference is >= 0.9, otherwise "corrects" it (the kept mask is the reference). Then the
decoder is fine-tuned (decoder mode, from the base model, on every object labelled so far; the
cached embeddings are reused) and the next round starts with the new model.

Reported per round and strategy: objects corrected among the round's objects, corrections the
current model would need on the whole remaining pool, held-out Dice after fine-tuning. Finally the
automatic model (``medsam_core.auto``) is fitted on quadrants 0-2 and measured on quadrant 3.

    .venv/bin/python benchmarks/bench_active_learning.py --epochs 10 --random-seeds 3 --out benchmarks/results

The random order is run with ``--random-seeds`` seeds (mean and range are plotted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"
ACCEPT_DICE = 0.9


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
           rng: np.random.Generator) -> list[int]:
    if strategy == "random":
        return [int(i) for i in rng.choice(remaining, size=min(n, len(remaining)), replace=False)]
    from medsam_core.active import Candidate, rank, score_candidates

    cands = [Candidate(pool.objects[i][0], pool.objects[i][2], label=i) for i in remaining]
    images = dict(enumerate(pool.images))
    top = rank(score_candidates(predictor, images, cands, previous=previous, n_jitter=4), n)
    return [s.label for s in top]


def simulate(pool: Pool, strategy: str, rounds: int, per_round: int, base_model, make_predictor, train,
             seed: int = 0, log=print) -> list[dict]:
    """Rounds of choose -> annotate -> fine-tune. make_predictor(model) -> predictor;
    train(base_model, pool, labelled indices) -> (new model, held-out Dice). Returns one dict per round."""
    rng = np.random.default_rng(seed)
    model, previous_model = base_model, None
    labelled: list[int] = []
    rows = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        remaining = [i for i in range(len(pool.objects)) if i not in set(labelled)]
        if not remaining:
            break
        pred = make_predictor(model)
        prev = make_predictor(previous_model) if previous_model is not None else None
        pool_dice = model_dice(pred, pool, remaining)
        chosen = choose(strategy, pred, prev, pool, remaining, per_round, rng)
        dices = [pool_dice[remaining.index(i)] for i in chosen]
        corrected = int(sum(d < ACCEPT_DICE for d in dices))
        labelled += chosen
        new_model, heldout = train(base_model, pool, labelled)
        rows.append({
            "strategy": strategy, "round": rnd, "labelled": len(chosen), "corrected": corrected,
            "round_dice": float(np.mean(dices)), "pool_left": len(remaining),
            "pool_corrections": int(sum(d < ACCEPT_DICE for d in pool_dice)),
            "heldout_dice_after": heldout, "seconds": time.perf_counter() - t0, "chosen": chosen,
        })
        log(f"{strategy:11s} round {rnd}: corrected {corrected}/{len(chosen)}, pool needs "
            f"{rows[-1]['pool_corrections']}/{len(remaining)}, held-out Dice after {heldout:.4f} "
            f"({rows[-1]['seconds']:.0f} s)")
        previous_model, model = model, new_model
    return rows


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
    for strategy, style in (("uncertainty", "o-"), ("random", "s--")):
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-seeds", type=int, default=3, help="runs of the random order (its spread is shown)")
    ap.add_argument("--no-auto", action="store_true", help="skip the automatic-model measurement")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "images" / "active_learning.png")
    args = ap.parse_args(argv)
    import torch

    import medsam_core

    torch.manual_seed(args.seed)
    with np.load(DATA) as d:
        imgs, labs = quadrants(d["image"], d["labels"])
    cache = medsam_core.EmbeddingCache()
    base = medsam_core.load_model("lite_medsam", device="cpu")
    pool = make_pool(imgs[:3], labs[:3], seed=args.seed)
    print(f"pool: {len(pool.objects)} objects in 3 quadrants; held out: quadrant 3")
    train = make_trainer((imgs[3], labs[3]), args.epochs, cache, args.seed)
    t0 = time.perf_counter()
    rows, last = [], {}
    runs = [("uncertainty", args.seed)] + [("random", args.seed + k) for k in range(args.random_seeds)]
    for strategy, seed in runs:
        r = simulate(pool, strategy, args.rounds, args.per_round, base,
                     lambda m: medsam_core.Predictor(m, cache), train, seed=seed)
        for row in r:
            row["seed"] = seed
        rows += r
        last.setdefault(strategy, r)
    # the automatic model, fitted on the annotated quadrants, with the last uncertainty-round decoder
    auto = {}
    if not args.no_auto:
        tuned, _ = train(base, pool, [i for r in last["uncertainty"] for i in r["chosen"]])
        auto = auto_bench(base, tuned, cache, imgs[:3], labs[:3], imgs[3], labs[3])
    total = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "auto": auto, "total_s": total, "args": {k: str(v) for k, v in vars(args).items()},
              "torch_threads": torch.get_num_threads()}
    (args.out / "active_learning.json").write_text(json.dumps(result, indent=1))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.plot)
    print(f"total {total:.0f} s; wrote {args.out / 'active_learning.json'} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
