"""What holding the start box can reach, per structure: the ceiling of a box walk that never moves its box.

For each structure: the start box (reference box + ``--pad`` px on its largest slice) decoded on every
slice from 3 slices before the structure to 3 after, then the contiguous span around the start slice
that gives the best 3D Dice, found with the reference (no walk can know it). The walk's default
prompt is that held box (``anchor`` 1, docs/3d.md), so this is the best any stop rule can do with
it; where it is low the structure leaves the box. Also printed: the share of each reference slice's
area inside the start box (min and mean over the structure's slices), the per-slice oracle's Dice
(reference box on every slice) for the ratio, and whether the extent prior's two orthogonal planes
could steer a box instead: the mean IoU with the reference box (+ pad) over the structure's slices of
the held box, and of a "plane box" (its x side from the mask on the plane along x, its y side from
the plane along y, each + pad, where that plane's mask covers the slice; the held box's side elsewhere).

    python bench_3d_bounds.py --cases colin27 macaque colin27-other macaque-other --out results/3d_bounds.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_3d as b  # noqa: E402

import medsam_core  # noqa: E402


def held_bound(pred, vol, obj, box, z, intensity) -> tuple[float, tuple[int, int]]:
    """(best 3D Dice, (first, last) slice) of the start box held on every slice, cut at the best span."""
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    lo, hi = max(int(zs[0]) - 3, 0), min(int(zs[-1]) + 3, len(vol) - 1)
    held = np.zeros(obj.shape, bool)
    for zz in range(lo, hi + 1):
        pred.set_image(vol[zz], intensity=intensity)
        held[zz] = pred.predict(boxes=box[None])[0][0]
    # Dice of span [a, c] from per-slice sums: 2 * sum(inter) / (sum(pred) + |ref|)
    inter = (held & obj).sum(axis=(1, 2)).astype(float)
    area = held.sum(axis=(1, 2)).astype(float)
    ref = float(obj.sum())
    best, span = 0.0, (z, z)
    for a in range(lo, z + 1):
        for c in range(z, hi + 1):
            d = 2 * inter[a:c + 1].sum() / (area[a:c + 1].sum() + ref)
            if d > best:
                best, span = float(d), (a, c)
    return best, span


def box_iou(a, c) -> float:
    ix = max(0.0, min(a[2], c[2]) - max(a[0], c[0]))
    iy = max(0.0, min(a[3], c[3]) - max(a[1], c[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (c[2] - c[0]) * (c[3] - c[1]) - ix * iy
    return float(ix * iy / union) if union > 0 else 0.0


def plane_boxes(pred, vol, obj, box, z, spacing, intensity, pad) -> tuple[float, float]:
    """(held box, plane box) mean IoU with the reference box over the structure's slices."""
    from medsam_core.walk_extent import estimate_extent, orthogonal_planes

    pred.set_image(vol[z], intensity=intensity)
    start = pred.predict(boxes=box[None])[0][0]
    ext = estimate_extent(pred, vol, start, box, z, spacing, intensity)
    runs = {}
    for (axis, _at, plane, _zoom, _s), est in zip(orthogonal_planes(vol, start, spacing), ext.planes, strict=True):
        if est.lo is None or est.zoom != 1.0:
            continue
        pred.set_image(plane, intensity=intensity)
        pm = pred.predict(boxes=np.asarray(est.boxes[-1])[None])[0][0]
        runs[axis] = {int(r): np.flatnonzero(pm[r]) for r in np.flatnonzero(pm.any(axis=1))}
    held, planed = [], []
    for zz in np.flatnonzero(obj.any(axis=(1, 2))):
        ref = b.reference_box(obj[zz], pad)
        pb = np.asarray(box, float).copy()
        for axis, (i0, i1) in (("x", (0, 2)), ("y", (1, 3))):
            if axis in runs and zz in runs[axis]:
                pb[i0], pb[i1] = runs[axis][zz][0] - pad, runs[axis][zz][-1] + pad
        held.append(box_iou(box, ref))
        planed.append(box_iou(pb, ref))
    return float(np.mean(held)), float(np.mean(planed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(b.CASES))
    ap.add_argument("--pad", type=float, default=3.0)
    ap.add_argument("--oracle-from", nargs="*", default=[], help="result files of bench_3d.py (same pad) to "
                    "read the per-slice oracle from")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    known = {}
    for path in args.oracle_from:
        for case, v in json.loads(Path(path).read_text())["cases"].items():
            known.update({(case, k): r["oracle"] for k, r in v["structures"].items()})
    model = medsam_core.load_model("lite_medsam", device="cpu")
    out = {"pad": args.pad, "cases": {}}
    for case in args.cases:
        vol, labels, spacing, names = b.load(case)
        pred, intensity = b.cached_predictor(model, case, vol)
        rows = {}
        for i in [int(i) for i in np.unique(labels) if i > 0]:
            obj = labels == i
            name = names[i - 1] if names else f"{case} {i}"
            z, box = b.largest_slice_box(obj, args.pad)
            best, span = held_bound(pred, vol, obj, box, z, intensity)
            orc = known.get((case, name))
            if orc is None:
                orc = b.dice(b.oracle(pred, vol, obj, args.pad, intensity), obj)
            zs = np.flatnonzero(obj.any(axis=(1, 2)))
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = [float(obj[zz, y0:y1 + 1, x0:x1 + 1].sum() / obj[zz].sum()) for zz in zs]
            iou_held, iou_plane = plane_boxes(pred, vol, obj, box, z, spacing, intensity, args.pad)
            rows[name] = {"box_iou_held": iou_held, "box_iou_plane": iou_plane, "start": z, "ref_slices": [int(zs[0]), int(zs[-1])], "held_best": best,
                          "held_span": list(span), "oracle": orc, "inside_min": min(inside),
                          "inside_mean": float(np.mean(inside))}
            print(f"{case:14s} {name:18s} ref {zs[0]}-{zs[-1]} from {z}: held box, best span {span}: "
                  f"{best:.3f} = {best / orc:.2f}x the oracle {orc:.3f}; reference inside the box: "
                  f"min {min(inside):.2f} mean {np.mean(inside):.2f}; box IoU with the reference's: held "
                  f"{iou_held:.2f}, from the planes {iou_plane:.2f}", flush=True)
        ratios = [r["held_best"] / r["oracle"] for r in rows.values()]
        mean = float(np.mean([r["held_best"] for r in rows.values()])) / float(np.mean([r["oracle"] for r in rows.values()]))
        worse = sum(r["box_iou_plane"] < r["box_iou_held"] for r in rows.values())
        print(f"{case}: held-box bound {mean:.3f}x the oracle (mean Dice ratio; structures under 0.85x: "
              f"{sum(x < 0.85 for x in ratios)} of {len(ratios)}); plane boxes fit worse than the held box "
              f"for {worse} of {len(rows)}")
        out["cases"][case] = {"structures": rows, "ratio": mean}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
