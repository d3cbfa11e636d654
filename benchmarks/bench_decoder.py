"""Decoder latency and agreement: the fast decoder beside segment-anything's reference decoder.

Run: ``.venv/bin/python benchmarks/bench_decoder.py [--repeats 5] [--threads 2]``

Measures, on the real dsb2018 image (512x512, 125 nuclei, boxes from the reference labels) with
the bundled LiteMedSAM weights and a cached image embedding, medians over repeats, in one run:
``SamModel.decode`` for 1 box, 4 boxes (per box) and 100 boxes (total), reference
(``fast=False``) and fast; the fast path's one-off per-image cost (first decode after a new
embedding); ``Predictor.predict`` (decode + low-res -> image masks) for 1 and 100 boxes. Then the
agreement on all 125 boxes: max |logit difference| inside the windows, IoU-score difference,
mask pixels that differ from the reference, and windowed vs whole-grid fast computation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # benchmarks/_machine.py (scripts run from benchmarks/ on sys.path)

import medsam_core
from medsam_core.modeling.fast_decoder import OUTSIDE_LOGIT, FastDecoder
from medsam_core.modeling.sam import SamModel
from medsam_core.preprocess import boxes_to_model, check_boxes, lowres_to_masks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Medians of (wall seconds, process CPU seconds summed over threads) over ``repeats`` runs.

    CPU time is printed beside wall time because on a shared machine the wall time mostly
    measures the other processes; CPU time shows the work done (still inflated by contention).
    """
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def load():
    with np.load(DATA) as d:
        img, lab = d["image"], d["labels"]
    boxes = []
    for i in range(1, int(lab.max()) + 1):
        ys, xs = np.nonzero(lab == i)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return img, check_boxes(np.array(boxes, float), img.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=3, help="repeats for the slow reference runs")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start")

    model = medsam_core.load_model("lite_medsam", device="cpu").eval()
    img, boxes = load()
    pred = medsam_core.Predictor(model)
    pred.set_image(img)
    emb = pred._embedding
    bm = torch.tensor(boxes_to_model(boxes, pred._prepared), dtype=torch.float32)
    r, rr = args.repeats, args.ref_repeats

    def dec(n, fast):
        with torch.inference_mode():
            return model.decode(emb, boxes=bm[:n], fast=fast)

    rows = []
    dec(1, True)  # warm-up: per-weights and per-image terms cached
    for label, n in (("1 box", 1), ("4 boxes, per box", 4), ("100 boxes, total", 100)):
        ref = median_time(lambda n=n: dec(n, False), rr if n < 100 else max(1, rr - 2))
        fast = median_time(lambda n=n: dec(n, True), r)
        div = n if "per box" in label else 1
        rows.append((f"decode, {label}", *(x / div for x in ref + fast)))

    fd = FastDecoder()  # a fresh one: pays the per-weights and per-image terms every time

    def first(fd=fd):
        fd._weights = None
        with torch.inference_mode():
            fd.decode(model.prompt_encoder, model.mask_decoder, emb, bm[:1], None, False, 256)

    first_t = median_time(first, r)
    for n in (1, 100):
        pred.model.decode = partial(SamModel.decode, model, fast=False)
        ref = median_time(lambda n=n: pred.predict(boxes=boxes[:n]), rr if n < 100 else max(1, rr - 2))
        del pred.model.decode
        fast = median_time(lambda n=n: pred.predict(boxes=boxes[:n]), r)
        rows.append((f"Predictor.predict, {n} box{'es' if n > 1 else ''}, total", *ref, *fast))

    print("\n| step | reference ms (wall / CPU) | fast ms (wall / CPU) | speed-up (wall / CPU) |")
    print("|---|---:|---:|---:|")
    for name, rw, rc, fw, fc in rows:
        print(f"| {name} | {rw * 1e3:.1f} / {rc * 1e3:.1f} | {fw * 1e3:.1f} / {fc * 1e3:.1f} "
              f"| {rw / fw:.1f}x / {rc / fc:.1f}x |")
    print(f"| fast: first box on a new image (per-image terms, once) | | "
          f"{first_t[0] * 1e3:.1f} / {first_t[1] * 1e3:.1f} | |")

    # Agreement on all boxes.
    with torch.inference_mode():
        ref, ref_iou = model.decode(emb, boxes=bm, fast=False)
        out, iou = model.decode(emb, boxes=bm)
        full, _ = FastDecoder().decode(model.prompt_encoder, model.mask_decoder, emb, bm, None, False, 256,
                                       windowed=False)
    inside = out != OUTSIDE_LOGIT
    m_ref = lowres_to_masks(ref.numpy(), pred._prepared, pred.spec.preprocessing)
    m_fast = lowres_to_masks(out.numpy(), pred._prepared, pred.spec.preprocessing)
    m_full = lowres_to_masks(full.numpy(), pred._prepared, pred.spec.preprocessing)
    inter = (m_ref & m_fast).sum((1, 2, 3))
    union = (m_ref | m_fast).sum((1, 2, 3))
    print(f"\nagreement on {len(bm)} boxes: max |logit diff| inside windows "
          f"{(out - ref)[inside].abs().max():.2e}, whole grid (windowed=False) {(full - ref).abs().max():.2e}; "
          f"max |IoU-score diff| {(iou - ref_iou).abs().max():.2e}")
    print(f"mask pixels differing from the reference: fast {int((m_ref != m_fast).sum())}, "
          f"whole grid {int((m_ref != m_full).sum())}; windowed vs whole grid {int((m_fast != m_full).sum())} "
          f"(of {int(m_ref.sum())} reference mask pixels); min mask IoU {(inter / np.maximum(union, 1)).min():.4f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
