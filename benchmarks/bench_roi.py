"""ROI mode vs whole-image mode on small objects in a large image, and memory on a 20,000 px image.

Accuracy: ../shared/data/fluo_nuclei_dsb2018.npz (512 x 512, 125 nuclei) tiled 4 x 4 to
2048 x 2048 (labels tiled with distinct ids); a seeded sample of objects; boxes = reference
bounding box pushed out by 0-5 px per side (seeded). Modes on the same boxes:

* whole-2048: whole-image mode on the tiled image (the reference approach: one encode);
* whole-1024 / whole-512: whole-image mode on 2 x 2 tiles / the original, the same objects,
  giving Dice against object size in model pixels (size * 256 / longest image side), which is
  what the automatic ROI rule (roi.ROI_MAX_MODEL_PX) is about;
* roi-256 / roi-128: ROI mode on the 2048 image with the minimum crop side 256 / 128.

Memory (subprocess, --memory): ROI segmentation of 5 boxes on a 20,000 x 20,000 uint16 dask
array computed from a function (tiles of the sample), never held whole; peak RSS (ru_maxrss)
after the model is loaded vs after segmenting, and the tracemalloc peak of the segmentation.

Run: .venv/bin/python benchmarks/bench_roi.py [--n 60] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def tiled(image: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    big = np.tile(image, (n, n))
    step = int(labels.max())
    rows = [[np.where(labels > 0, labels + step * (i * n + j), 0) for j in range(n)] for i in range(n)]
    return big, np.block(rows).astype(np.int64)


def sample_boxes(labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids (n,), boxes (n, 4) XYXY = bounding box + 0-5 px per side, clipped)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    objs = ndimage.find_objects(labels)
    ids = np.array([i + 1 for i, s in enumerate(objs) if s is not None])
    ids = np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))
    h, w = labels.shape
    boxes = []
    for i in ids:
        sy, sx = objs[i - 1]
        pad = rng.integers(0, 6, size=4)
        boxes.append([max(sx.start - pad[0], 0), max(sy.start - pad[1], 0),
                      min(sx.stop - 1 + pad[2], w - 1), min(sy.stop - 1 + pad[3], h - 1)])
    return ids, np.asarray(boxes, float)


def dices(labels: np.ndarray, gt: np.ndarray, ids: np.ndarray) -> np.ndarray:
    from medsam_core.metrics import dice

    return np.array([dice(labels == k + 1, gt == i) for k, i in enumerate(ids)])


def accuracy(n: int, roi_sides: tuple[int, ...] = (256, 128, 96)) -> dict:
    from medsam_core import Predictor, load_model
    from medsam_core.roi import segment_large

    with np.load(DATA) as d:
        image, labels = d["image"], d["labels"].astype(np.int64)
    big, gt = tiled(image, labels, 4)
    ids, boxes = sample_boxes(gt, n)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    pred = Predictor(load_model("lite_medsam", device="cpu"))
    out: dict = {"n_objects": len(ids), "box_side_px": [float(np.min(side)), float(np.median(side)), float(np.max(side))]}
    # the same objects on smaller tilings: tile (ty, tx) of the 2048 image -> coordinates modulo the tiling
    for n_tiles in (4, 2, 1):
        size = 512 * n_tiles
        sub_img, sub_gt = big[:size, :size], gt[:size, :size]
        tile = (ids - 1) // 125  # the object's 512 px tile in the 4 x 4 tiling (ids of tile t: base + 125 t)
        ty, tx = tile // 4, tile % 4
        off = np.stack([(tx - tx % n_tiles) * 512, (ty - ty % n_tiles) * 512], axis=1).astype(float)
        b = boxes - np.concatenate([off, off], axis=1)
        t0 = time.perf_counter()
        calls = pred.encoder_calls
        lab = segment_large(pred, sub_img, b, mode="whole")
        dt = time.perf_counter() - t0
        ref_ids = _moved_ids(ids, off)
        # two sampled objects from different tiles can be the same object here: score the first only
        # (the second, identical box gets no pixels under the earlier-box-wins rule)
        first = np.zeros(len(ids), bool)
        first[np.unique(ref_ids, return_index=True)[1]] = True
        d = dices(lab, sub_gt, ref_ids)[first]
        out[f"whole-{size}"] = _row(d, (side * 256 / size)[first], dt, pred.encoder_calls - calls, len(ids))
        out[f"whole-{size}"]["objects_scored"] = int(first.sum())
    for min_side in roi_sides:
        pred.cache.clear()
        t0 = time.perf_counter()
        calls = pred.encoder_calls
        lab = segment_large(pred, big, boxes, mode="roi", min_side=min_side)
        dt = time.perf_counter() - t0
        d = dices(lab, gt, ids)
        out[f"roi-{min_side}"] = _row(d, side * 256 / 2048, dt, pred.encoder_calls - calls, len(ids))
    return out


def _moved_ids(ids: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Id in the sub-image of each object moved by ``off`` (tiles repeat, ids differ per tile)."""
    tile = (ids - 1) // 125
    ty, tx = tile // 4 - off[:, 1] // 512, tile % 4 - off[:, 0] // 512
    return (ids - 125 * tile + 125 * (ty * 4 + tx)).astype(np.int64)


def _row(d: np.ndarray, model_px: np.ndarray, seconds: float, encodes: int, n: int) -> dict:
    bins = [(0, 4), (4, 8), (8, 16), (16, 64)]
    by = {f"{a}-{b}": (round(float(d[(model_px >= a) & (model_px < b)].mean()), 3), int(((model_px >= a) & (model_px < b)).sum()))
          for a, b in bins if ((model_px >= a) & (model_px < b)).any()}
    return {"mean_dice": round(float(d.mean()), 3), "median_dice": round(float(np.median(d)), 3),
            "dice_by_model_px": by, "encodes": encodes, "seconds": round(seconds, 2),
            "ms_per_box": round(1000 * seconds / n, 1)}


# -- memory ---------------------------------------------------------------------------------------
def _vm_rss_mib() -> float:
    """Current resident memory (Linux /proc), unlike ru_maxrss which is the peak so far."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(side: int) -> dict:
    import tracemalloc

    import dask.array as da

    from medsam_core import Predictor, load_model
    from medsam_core.roi import segment_large

    with np.load(DATA) as d:
        base = d["image"]

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy = np.arange(y0, y1) % 512
        xx = np.arange(x0, x1) % 512
        return base[np.ix_(yy, xx)]

    chunk = 2048
    lazy = da.map_blocks(block, chunks=((chunk,) * (side // chunk) + ((side % chunk,) if side % chunk else ()),) * 2,
                         dtype=base.dtype)
    pred = Predictor(load_model("lite_medsam", device="cpu"))
    pred.set_image(base[:256, :256])  # warm up: the model and the encoder backend are resident
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cur_model = _vm_rss_mib()
    boxes = np.array([[100, 100, 130, 125], [side - 200, side - 200, side - 170, side - 160],
                      [side // 2, side // 3, side // 2 + 25, side // 3 + 30], [5000, 9000, 5030, 9020],
                      [5040, 9010, 5060, 9040]], float)
    out = np.zeros((side, side), np.uint8)  # calloc: only the pasted pages become resident
    tracemalloc.start()
    t0 = time.perf_counter()
    segment_large(pred, lazy, boxes, mode="auto", out=out)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cur = _vm_rss_mib()
    return {"side": side, "image_mib": side * side * 2 / 2**20, "boxes": len(boxes),
            "encodes": pred.encoder_calls - 1, "seconds": round(dt, 1),
            "peak_rss_mib_after_model": round(rss_model), "peak_rss_mib_after_roi": round(rss),
            "rss_mib_after_model": round(cur_model), "rss_mib_after_roi": round(cur),
            "tracemalloc_peak_mib": round(peak / 2**20, 1), "objects": int(len(np.unique(out)) - 1)}


def machine() -> dict:
    import torch

    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": platform.processor(),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_avg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--memory-child", type=int, default=0)
    p.add_argument("--roi-sides", default="256,128,96", help="minimum crop sides to compare ('' for none)")
    a = p.parse_args()
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child)))
        return
    result = {"machine": machine()}
    if not a.skip_accuracy:
        result["accuracy"] = accuracy(a.n, tuple(int(v) for v in a.roi_sides.split(",") if v))
        print(json.dumps(result["accuracy"], indent=1), flush=True)
    if not a.skip_memory:
        proc = subprocess.run([sys.executable, __file__, "--memory-child", "20000"], capture_output=True, text=True,
                              check=True)
        result["memory"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result["memory"], indent=1), flush=True)
    print(json.dumps(result["machine"]))
    target = REPO / "benchmarks" / "results" / ("bench_roi.json" if a.roi_sides and not a.skip_memory
                                                  else "bench_roi_partial.json")
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
