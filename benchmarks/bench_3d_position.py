"""Where the box is, or how big it is: what a box walk loses by each, per structure, with no stop.

On every slice of each structure's reference (no stop rule, so this is about the prompt alone), the
start box (reference box + ``--pad`` px on the largest slice) is decoded four ways:

* held: where the user drew it (the walk's prompt with ``follow`` off);
* followed: moved by the walk's own ``follow`` (``walk_follow.image_shift`` chained slice to slice
  from the start, each direction, as ``BoxWalk._walk`` does it): what the package's prompt is;
* framed: the same, each slice matched against the last slice where the box moved, up to
  ``--frames`` slices back (``BoxWalk.follow_frames``), so motion under a pixel per slice adds up;
* centred: moved so that its centre is the reference box's centre on that slice, its size kept
  (what a perfect tracker of position alone would reach);
* sized: the reference box's own size (+ pad), centred where the user drew (what a perfect
  estimate of size alone would reach);

and each 3D Dice is given as a ratio to the per-slice oracle (the reference box + pad on every
slice, same predictor). Also the mean distance (px, |dx| + |dy|) between the box's centre and the
reference box's centre, held and followed. A structure whose "centred" ratio is high but "held" low
leaves the box by moving, not by changing size.

    OMP_NUM_THREADS=1 python bench_3d_position.py --out results/3d_position.json
    (default cases: the three dev volumes and the two check volumes of make_check_volumes.py)
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
from medsam_core.metrics import dice  # noqa: E402
from medsam_core.prompts import fit_box  # noqa: E402
from medsam_core.walk_follow import follow_radius, image_shift  # noqa: E402

WAYS = ("held", "followed", "framed", "centred", "sized", "oracle")
TRACKED = ("held", "followed", "framed")  # whose centre error is reported


def followed_shifts(vol, box, z0: int, zs, spacing, follow: float = 3.0,
                    frames: int = 1) -> dict[int, np.ndarray]:
    """(dx, dy) the walk's follow has summed on each slice from ``z0`` to the reference's ends, each
    slice matched against the last one where the box moved, up to ``frames`` slices back."""
    radius = follow_radius(follow, spacing)
    out = {z0: np.zeros(2)}
    for step, end in ((1, int(zs[-1])), (-1, int(zs[0]))):
        frame, frame_drift = z0, np.zeros(2)
        for z in range(z0 + step, end + step, step):
            moved = np.asarray(image_shift(vol[frame], vol[z], box + np.tile(frame_drift, 2), radius), float)
            out[z] = frame_drift + moved
            if moved.any() or abs(z - frame) >= frames:
                frame, frame_drift = z, out[z]
    return out


def centre(box) -> np.ndarray:
    box = np.asarray(box, float)
    return (box[:2] + box[2:]) / 2


def run_structure(pred, vol, obj, spacing, intensity, pad: float, frames: int = 3) -> dict:
    z0, box = b.largest_slice_box(obj, pad)
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    shifts = followed_shifts(vol, box, z0, zs, spacing)
    framed = followed_shifts(vol, box, z0, zs, spacing, frames=frames)
    half = (box[2:] - box[:2]) / 2
    masks = {w: np.zeros(obj.shape, bool) for w in WAYS}
    error = {w: [] for w in TRACKED}
    for z in zs:
        ref = b.reference_box(obj[z], pad)
        c, rhalf = centre(ref), (ref[2:] - ref[:2]) / 2
        boxes = {
            "held": box,
            "followed": box + np.tile(shifts[z], 2),
            "framed": box + np.tile(framed[z], 2),
            "centred": np.concatenate([c - half, c + half]),
            "sized": np.concatenate([centre(box) - rhalf, centre(box) + rhalf]),
            "oracle": ref,
        }
        pred.set_image(vol[z], intensity=intensity)
        got = pred.predict(boxes=np.stack([fit_box(boxes[w], obj.shape[1:]) for w in WAYS]))[0]
        for w, m in zip(WAYS, got, strict=True):
            masks[w][z] = m
        for w in TRACKED:
            error[w].append(float(np.abs(centre(boxes[w]) - c).sum()))
    scores = {w: dice(masks[w], obj) for w in WAYS}
    return {"start": int(z0), "ref_slices": [int(zs[0]), int(zs[-1])], "dice": scores,
            "centre_error_px": {k: float(np.mean(v)) for k, v in error.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=[*b.CASES, *b.CHECK_CASES])
    ap.add_argument("--pad", type=float, default=3.0)
    ap.add_argument("--frames", type=int, default=3, help="follow_frames of the 'framed' box")
    ap.add_argument("--cache", default="/tmp/medsam_bench_cache")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = medsam_core.load_model("lite_medsam", device="cpu")
    out = {"machine": b.cpu_model(), "pad": args.pad, "frames": args.frames, "cases": {}}
    for case in args.cases:
        vol, labels, spacing, names = b.load(case)
        pred, intensity = b.cached_predictor(model, case, vol, cache=args.cache)
        rows = {}
        for i in [int(i) for i in np.unique(labels) if i > 0 and (labels == i).any(axis=(1, 2)).sum() >= 3]:
            name = names[i - 1] if names else f"{case} {i}"
            r = rows[name] = run_structure(pred, vol, labels == i, spacing, intensity, args.pad, args.frames)
            o = r["dice"]["oracle"]
            print(f"{case:14s} {name:18s} " + " ".join(f"{w} {r['dice'][w] / o:.2f}x" for w in WAYS[:-1])
                  + f"  (oracle {o:.3f}); centre off by "
                  + ", ".join(f"{r['centre_error_px'][w]:.1f} px {w}" for w in TRACKED), flush=True)
        orc = float(np.mean([r["dice"]["oracle"] for r in rows.values()]))
        summary = {w: float(np.mean([r["dice"][w] for r in rows.values()])) / orc for w in WAYS[:-1]}
        summary.update({f"centre_error_{k}": float(np.mean([r["centre_error_px"][k] for r in rows.values()]))
                        for k in TRACKED})
        ratios = ", ".join(f"{w} {summary[w]:.3f}x" for w in WAYS[:-1])
        off = ", ".join(f"{summary['centre_error_' + w]:.1f} px {w}" for w in TRACKED)
        print(f"{case}: {ratios} the oracle (ratio of means); centre off by {off}", flush=True)
        out["cases"][case] = {"structures": rows, "summary": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
