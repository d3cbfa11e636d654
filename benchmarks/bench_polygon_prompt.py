"""Polygon (lasso) prompt: which decoder prompts a drawn polygon should become, measured.

Data: ../shared/data/fluo_nuclei_dsb2018.npz (512 x 512, 125 nuclei, manual masks). Polygons: each
nucleus' reference contour (skimage find_contours) simplified to 6-12 vertices
(approximate_polygon, tolerance raised until at most 12), every vertex moved by Gaussian noise of
sigma 1 px or 2.5 px (--seeds each; a seeded sample of --n nuclei): a person's quick lasso around the nucleus.

Conditions: polygons on the reference edge with sigma 1 / 2.5 px, and "around": the contour of
the reference grown by 2 px (a lasso drawn around the nucleus), sigma 1.5 px.

Variants (MEASURED; napari_medsam._polygon_prompts.decode_polygon, what the widget runs): box
from the polygon; box + the polygon as mask_input (logits +-4, +-16); box + the most interior
pixel as a positive point + up to 2 negative points in the box's corners outside the polygon; the
polygon itself; the box's mask clipped to the polygon grown by 3 px; the band rule (the polygon
shrunk by 3 px, plus the box's mask within 3 px of the polygon's edge). A first run also had box
+ 3 px and box + positive point only (both no better than box alone: docs/napari.md). ROI zoom "auto"
(the widget's default: nuclei here are segmented on 128 px crops) and, with --modes auto,whole,
"off" (whole image).
Dice against the reference mask; mean and median over objects x polygons.

Run: .venv/bin/python benchmarks/bench_polygon_prompt.py [--n 16] [--seeds 1] [--modes auto,whole] [--out results/polygon.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from napari_medsam._polygon_prompts import grow

REPO = Path(__file__).resolve().parents[1]
#: condition -> (px the reference mask is grown by before its contour is taken, vertex noise sigma in px)
CONDITIONS = {"on_edge_s1": (0, 1.0), "on_edge_s2.5": (0, 2.5), "around_s1.5": (2, 1.5)}
MEASURED = ("box", "box_mask16", "box_pos_neg", "polygon", "box_clip3", "box_band3")
DATA = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def simplified_contour(mask: np.ndarray, max_vertices: int = 12) -> np.ndarray:
    """(V, 2) XY polygon with at most ``max_vertices`` vertices along the mask's outer contour."""
    from skimage.measure import approximate_polygon, find_contours

    contours = find_contours(np.pad(mask, 1).astype(float), 0.5)
    c = max(contours, key=len) - 1  # (row, col), padding removed
    tol = 0.5
    while True:
        poly = approximate_polygon(c, tol)[:-1]  # closed: the last vertex repeats the first
        if len(poly) <= max_vertices or tol > 20:
            return poly[:, ::-1].copy()
        tol *= 1.25


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--modes", default="auto", help="ROI zoom modes, comma separated: auto, whole")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "polygon_prompt.json"))
    args = ap.parse_args()
    from medsam_core import Predictor, load_model, roi
    from napari_medsam._polygon_prompts import combine, decode_polygon, polygon_mask

    d = np.load(DATA)
    image, labels = d["image"], d["labels"]
    ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= 20]
    ids = sorted(np.random.default_rng(0).choice(ids, size=min(args.n, len(ids)), replace=False))
    predictor = Predictor(load_model("lite_medsam"), encoder_backend="torch")
    window = roi.global_intensity(image)
    rows, t0 = [], time.perf_counter()
    for k, lid in enumerate(ids):
        ref = labels == lid
        for cond, (grown, sigma) in CONDITIONS.items():
            base = simplified_contour(grow(ref, grown))
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 * int(lid) + 10 * seed + int(sigma * 2))
                xy = base + rng.normal(0, sigma, base.shape)
                for mode in args.modes.split(","):
                    box_mask = None
                    for v in MEASURED:
                        if v in ("box_clip3", "box_band3"):  # rules on the box's decode: not decoded again
                            mask = combine(box_mask, polygon_mask(xy, image.shape), v)  # = decode_polygon(v)
                        else:
                            mask = decode_polygon(predictor, image, xy, mode, window, None, v).full(image.shape)
                        box_mask = mask if v == "box" else box_mask
                        rows.append({"id": int(lid), "vertices": len(base), "sigma": cond, "seed": seed,
                                     "mode": mode, "variant": v, "dice": dice(mask, ref)})
        print(f"{k + 1}/{len(ids)} objects, {time.perf_counter() - t0:.0f} s", flush=True)
        write(args.out, rows, ids, t0)  # after every object: a cut-short run still reports


def write(out, rows, ids, t0) -> None:
    from _machine import cpu_model

    summary = {}
    for mode in ("auto", "whole"):
        for sigma in CONDITIONS:
            for v in dict.fromkeys(r["variant"] for r in rows):
                ds = [r["dice"] for r in rows if r["mode"] == mode and r["sigma"] == sigma and r["variant"] == v]
                if ds:
                    summary[f"{mode}/{sigma}/{v}"] = (float(np.mean(ds)), float(np.median(ds)), len(ds))
    verts = [r["vertices"] for r in rows if r["variant"] == "box" and r["mode"] == "auto"]
    info = {"cpu": cpu_model(), "load": os.getloadavg(), "objects_done": len({r["id"] for r in rows}),
            "objects_planned": len(ids),
            "vertices_min_median_max": [int(np.min(verts)), float(np.median(verts)), int(np.max(verts))],
            "seconds": time.perf_counter() - t0, "summary": summary}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(json.dumps(info["summary"]), flush=True)


if __name__ == "__main__":
    main()
