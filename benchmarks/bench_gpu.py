"""Encoder, decoder and fine-tuning step timings on a CUDA GPU (the CPU when there is none).

Run: ``python benchmarks/bench_gpu.py [--repeats 20]`` (benchmarks/gpu_check.sh runs it).
Times with ``torch.cuda.synchronize()`` around each call, medians after a warm-up:
encoder per image (fp32 and autocast), batch of 8 slices per image, decoder for 16 boxes,
one decoder fine-tuning step of 8 objects. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_case():
    if DATA.exists():
        with np.load(DATA) as d:
            return d["image"], d["labels"]
    rng = np.random.default_rng(0)  # no sample data beside the checkout: bright discs on noise
    image = (rng.random((512, 512)) * 50).astype(np.uint16)
    labels = np.zeros((512, 512), np.int32)
    yy, xx = np.mgrid[:512, :512]
    for i in range(20):
        cy, cx = rng.integers(40, 472, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2
        labels[disc], image[disc] = i + 1, 1000
    return image, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = ap.parse_args()
    import torch

    import medsam_core
    from medsam_core import EmbeddingCache, Predictor
    from medsam_core.backends import TorchEncoder
    from medsam_core.data import make_training_data
    from medsam_core.losses import DiceCELoss, IoURegressionLoss
    from medsam_core.preprocess import prepare_image
    from medsam_core.training import TrainConfig, _Source, set_trainable, train_step

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    repeats = args.repeats if device == "cuda" else 1  # the CPU run only checks that the script works
    nb = 8 if device == "cuda" else 2
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (no CUDA GPU: fallback run)"
    model = medsam_core.load_model("lite_medsam", device=device)
    image, labels = load_case()
    x = prepare_image(image, model.spec.preprocessing).tensor[None]
    rows = {}
    batch = np.repeat(x, nb, axis=0)
    for mode in ("off", "auto") if device == "cuda" else ("off",):  # autocast is CUDA-only
        enc = TorchEncoder(model, autocast=mode)
        label = "fp32" if mode == "off" or enc.autocast_dtype() is None else str(enc.autocast_dtype()).split(".")[-1]
        rows[f"encoder, 1 image, {label}"] = median_time(lambda e=enc: e.encode(x), repeats, sync)
        if device == "cuda":  # the CPU fallback only checks that the script runs
            rows[f"encoder, batch of {nb}, {label}, per image"] = median_time(
                lambda e=enc: e.encode(batch), max(1, repeats // 4), sync) / nb
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    boxes = []
    for i in ids[np.argsort(counts)[::-1][:16]]:
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    cache = EmbeddingCache()
    p = Predictor(model, cache, encoder_backend=TorchEncoder(model, autocast="off"))
    p.set_image(image)
    rows["decoder, 16 boxes"] = median_time(lambda: p.predict(boxes=np.asarray(boxes, float)), repeats, sync)
    data = make_training_data([(image, labels)]).subset(list(range(min(8, len(ids)))))
    config = TrainConfig(mode="decoder", seed=0).validate()
    source = _Source(model, data, config, cache, None, "auto")
    key, local = source.plan(np.random.default_rng(0))[0]
    tb = source.batch(key, local, np.random.default_rng(0), torch.device(device))
    opt = torch.optim.AdamW(set_trainable(model, config), lr=1e-4)
    rows[f"fine-tune step, decoder, {len(local)} objects"] = median_time(
        lambda: train_step(model, opt, tb, DiceCELoss(), IoURegressionLoss()), repeats, sync)
    print(f"\n{name}, torch {torch.__version__}, medians of {repeats}\n\n| step | median ms |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v * 1000:.1f} |")
    print(json.dumps({"device": name, "torch": torch.__version__, "median_s": rows}))


if __name__ == "__main__":
    main()
