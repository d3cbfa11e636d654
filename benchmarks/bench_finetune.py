"""Fine-tuning benchmark on the real DSB2018 nuclei image: held-out Dice before/after each mode.

    .venv/bin/python benchmarks/bench_finetune.py [--modes decoder lora full] [--epochs 20]
        [--epochs-encoder 5] [--reference-decoder] [--plot docs/images/finetune_dsb2018.png] [--json OUT.json]

The 125 nuclei are shuffled (seeded); objects 0-29 train round 1, objects 0-59 train round 2
("30 more"), objects 60-124 are held out in both rounds, so every Dice is on the same 65 objects
that no round trained on. Prompts are the objects' bounding boxes. Each mode starts from the
bundled LiteMedSAM. Every model is also scored on nuclei of three cells3d confocal slices (another
image and microscope, never trained on). Wall times are one run each (training is seconds to minutes; the machine
details and its load average are printed: a shared CPU can slow a run several-fold).
matplotlib is needed only for --plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medsam_core import EmbeddingCache, Predictor, load_model
from medsam_core.data import make_training_data
from medsam_core.guard import FineTuneSession
from medsam_core.training import TrainConfig, evaluate, fit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fluo_nuclei_dsb2018.npz"
EXTRA: dict[str, dict] = {"lora": {}, "full": {}}  # TrainConfig overrides per mode (learning rates: DEFAULT_LR)


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, load average "
            f"{' '.join(f'{x:.1f}' for x in load)}")


def progress(step: int, total: int, loss: float, info: dict) -> None:
    if step % 5 == 0 or step == total:
        print(f"  step {step}/{total} loss {loss:.4f}", flush=True)


def run_mode(model, train, held, mode: str, epochs: int, cache, **overrides) -> dict:
    losses = []
    t0 = time.perf_counter()
    config = TrainConfig(**{"mode": mode, "epochs": epochs, "seed": 0, **overrides})
    result = fit(model, train, config, cache=cache, heldout=held,
                 on_step=lambda s, t, loss, info: (losses.append(loss), progress(s, t, loss, info)))
    row = {"mode": mode, "epochs": epochs, "model": result.model, "steps": result.steps, "objects": result.n_train,
           "dice_before": result.dice_before, "dice_after": result.dice_after,
           "wall_s": time.perf_counter() - t0, "fit_s": result.elapsed_s,
           "encoder_calls": result.encoder_calls, "losses": losses}
    print(f"{mode:8s} {epochs:3d} ep {result.steps:4d} steps  Dice {result.dice_before:.4f} -> "
          f"{result.dice_after:.4f}  {row['wall_s']:.1f} s  encoder calls {result.encoder_calls}", flush=True)
    return row


def transfer_data(slices=(20, 30, 40), min_area: int = 30):
    """Nuclei of three confocal slices of cells3d (another microscope, 256 x 256): each object's
    bounding box prompts it. Used only to evaluate, never to train."""
    with np.load(DATA.with_name("confocal3d_nuclei_cells3d.npz")) as d:
        volume, labels = d["image"], d["labels"]
    pairs = []
    for z in slices:
        lab = labels[z].copy()
        ids, counts = np.unique(lab, return_counts=True)
        for i, c in zip(ids, counts, strict=True):
            if i and c < min_area:
                lab[lab == i] = 0
        pairs.append((volume[z], lab))
    return make_training_data(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["decoder", "lora", "full"])
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the decoder mode")
    ap.add_argument("--epochs-encoder", type=int, default=5, help="epochs of lora/full (slow on CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-decoder", action="store_true",
                    help="also run round 1 through segment-anything's decoder forward (the pre-fast-path baseline)")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("machine:", machine(), flush=True)

    with np.load(DATA) as d:
        image, labels = d["image"], d["labels"]
    data = make_training_data([(image, labels)])
    order = np.random.default_rng(0).permutation(len(data))
    held = data.subset(order[60:].tolist())
    round1, round2 = data.subset(order[:30].tolist()), data.subset(order[:60].tolist())
    model = load_model("lite_medsam", device="cpu")
    cache = EmbeddingCache()

    t0 = time.perf_counter()
    Predictor(model, cache).set_image(image)  # what napari has done before anyone fine-tunes
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = evaluate(model, held, cache)
    print(f"bundled model: held-out Dice {base.mean:.4f} on {len(held)} objects "
          f"(encode {encode_s:.1f} s, evaluate {time.perf_counter() - t0:.1f} s)", flush=True)

    # Decoder mode through the guard, as napari runs it: round 1 (30 objects) from the bundled
    # model; round 2 (60 objects) starts from the base again and becomes active only if it beats
    # round 1 on the held-out objects.
    rows = []
    session = FineTuneSession(model, cache=cache)
    cfg = TrainConfig(mode="decoder", epochs=args.epochs)
    rounds = ((1, round1), (2, round2)) if "decoder" in args.modes else ()
    for number, train in rounds:
        t0 = time.perf_counter()
        r = session.run_round(train, cfg, heldout=held, on_step=progress)
        rows.append({"round": number, "mode": "decoder", "epochs": args.epochs, "steps": r.result.steps,
                     "model": r.result.model,
                     "objects": len(train), "dice_before": r.dice_active, "dice_after": r.result.dice_after,
                     "wall_s": time.perf_counter() - t0, "fit_s": r.result.elapsed_s, "accepted": r.accepted,
                     "losses": r.result.losses, "encoder_calls": r.result.encoder_calls})
        print(f"decoder round {number}: {len(train)} objects, active Dice {r.dice_active:.4f} -> new "
              f"{r.result.dice_after:.4f}, {'accepted' if r.accepted else 'refused'}, "
              f"{time.perf_counter() - t0:.1f} s, encoder calls {r.result.encoder_calls}", flush=True)
    if args.reference_decoder:  # the same round 1 through segment-anything's own decoder forward pass
        row = run_mode(model, round1, held, "decoder", args.epochs, cache, fast_decoder=False)
        rows.append({"round": 1, **row, "mode": "decoder (reference forward)"})
    for mode in (m for m in args.modes if m != "decoder"):
        for number, train in ((1, round1), (2, round2)):
            row = run_mode(model, train, held, mode, args.epochs_encoder, cache, **EXTRA[mode])
            rows.append({"round": number, **row})

    # Another image, another microscope: do the fine-tuned models still help (or hurt) there?
    other = transfer_data()
    other_cache = EmbeddingCache()
    base_other = evaluate(model, other, other_cache).mean
    for r in rows:
        r["transfer_dice"] = evaluate(r.pop("model"), other, other_cache).mean
    print(f"transfer (cells3d confocal slices, {len(other)} nuclei): bundled {base_other:.4f}; "
          + ", ".join(f"r{r['round']} {r['mode']} {r['transfer_dice']:.4f}" for r in rows), flush=True)

    print("\n| round | mode | objects | epochs | steps | held-out Dice before | after | guard | wall time (s) "
          f"| cells3d Dice (bundled {base_other:.3f}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        guard = {True: "accepted", False: "refused"}.get(r.get("accepted"), "-")
        print(f"| {r['round']} | {r['mode']} | {r['objects']} | {r['epochs']} | {r['steps']} | "
              f"{r['dice_before']:.4f} | {r['dice_after']:.4f} | {guard} | {r['wall_s']:.1f} | "
              f"{r['transfer_dice']:.4f} |")
    print("machine:", machine())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "base_dice": base.mean,
                                               "base_transfer_dice": base_other, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, base.mean, args.plot)


def plot(rows: list[dict], base: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        if r["losses"]:
            ax1.plot(np.arange(1, len(r["losses"]) + 1), r["losses"], label=f"round {r['round']} {r['mode']}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (Dice + CE + IoU)")
    ax1.legend(fontsize=7)
    names = [f"r{r['round']} {r['mode']} ({r['objects']} obj, {r['wall_s']:.0f} s)" for r in rows]
    ax2.barh(names, [r["dice_after"] for r in rows], color="tab:blue", label="held-out DSB nuclei")
    ax2.plot([r["transfer_dice"] for r in rows], names, "o", color="tab:orange", label="cells3d slices (not trained on)")
    ax2.axvline(base, color="k", ls="--", label=f"bundled {base:.3f}")
    ax2.set_xlabel("Dice (65 held-out nuclei; bars) / cells3d (dots)")
    ax2.set_xlim(min(base, *(r["dice_after"] for r in rows), *(r["transfer_dice"] for r in rows)) - 0.05, 1.0)
    ax2.legend(fontsize=7)
    fig.suptitle("Fine-tuning LiteMedSAM on DSB2018 nuclei (30 / 60 objects)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print("wrote", path)


if __name__ == "__main__":
    main()
