"""Fine-tuning speed, decoder mode: the issue's target case timed against the reference path.

    .venv/bin/python benchmarks/bench_finetune_speed.py [--repeats 3] [--epochs 20]

The target case: 30 DSB2018 nuclei, 20 epochs, mask decoder only, on the embedding already in the
cache (as napari has it). Times ``fit`` (training steps plus the held-out evaluation before and
after, 10 held-out objects) ``--repeats`` times and reports the median. Then, interleaved in the
same run, one training step of 8 objects (forward + backward + AdamW) through the differentiable
fast decoder and through segment-anything's reference forward pass, ``--steps`` times each,
median per step and the ratio, so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # benchmarks/_machine.py (scripts run from benchmarks/ on sys.path)

from medsam_core import EmbeddingCache, Predictor, load_model
from medsam_core.data import make_training_data
from medsam_core.losses import DiceCELoss, IoURegressionLoss
from medsam_core.training import TrainConfig, _Source, fit, set_trainable, train_step

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=6, help="paired single steps, fast vs reference")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with np.load(DATA) as d:
        image, labels = d["image"], d["labels"]
    data = make_training_data([(image, labels)])
    order = np.random.default_rng(0).permutation(len(data))
    train, held = data.subset(order[:30].tolist()), data.subset(order[30:40].tolist())
    model = load_model("lite_medsam", device="cpu")
    cache = EmbeddingCache()
    Predictor(model, cache).set_image(image)
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, load {load()}", flush=True)

    times = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        r = fit(model, train, TrainConfig(mode="decoder", epochs=args.epochs, seed=k), cache=cache, heldout=held)
        times.append(time.perf_counter() - t0)
        print(f"fit {k + 1}: {times[-1]:.1f} s ({r.steps} steps, encoder calls {r.encoder_calls}, "
              f"loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}), load {load()}", flush=True)
    print(f"median fit of 30 objects x {args.epochs} epochs: {statistics.median(times):.1f} s "
          f"(runs: {', '.join(f'{t:.1f}' for t in times)})")

    config = TrainConfig(mode="decoder", seed=0).validate()
    source = _Source(model, train, config, cache, None, "auto")
    key, local = source.plan(np.random.default_rng(0))[0]
    batch = source.batch(key, local[:8], np.random.default_rng(0), torch.device("cpu"))
    per = {True: [], False: []}
    for _ in range(args.steps):
        for fast in (True, False):
            work = copy.deepcopy(model)
            opt = torch.optim.AdamW(set_trainable(work, config), lr=1e-4)
            t0 = time.perf_counter()
            train_step(work, opt, batch, DiceCELoss(), IoURegressionLoss(), fast=fast)
            per[fast].append(time.perf_counter() - t0)
    fast_s, ref_s = statistics.median(per[True]), statistics.median(per[False])
    print(f"one step of {len(batch.boxes)} objects: fast {fast_s * 1000:.0f} ms, reference {ref_s * 1000:.0f} ms "
          f"(median of {args.steps}, interleaved): {ref_s / fast_s:.2f}x faster; load {load()}")


def load() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
