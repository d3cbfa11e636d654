"""Research (measured, not taken): boxes sized and moved by the orthogonal planes' masks.

The extent prior (walk_extent.py) segments two planes orthogonal to the slices through the start
mask. Their masks also show, for every slice, the structure's width and centre along one in-plane
axis. This script takes the one-box walks that ``bench_3d.py --first-cache DIR`` saved (default
options), and on every slice the walk kept decodes a second box: the start box moved by the planes'
centre drift and scaled by their width ratio to the start slice (clipped to [``lo``, 1]). The kept
mask becomes the second box's output (chosen like the walk's, most like the start mask) where its
predicted IoU beats the walk's own kept output. The walk's stops do not depend on the kept mask, so
this is exact for the same stops. Prints walk Dice / oracle per volume (oracle from a bench_3d
result file), with the walk's slice vote.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_3d_plane_boxes.py /tmp/first-cache \
         benchmarks/results/3d_vote.json colin27 macaque cells3d
"""

from __future__ import annotations

import glob
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_3d  # noqa: E402

import medsam_core  # noqa: E402
from medsam_core.metrics import dice  # noqa: E402
from medsam_core.walk import vote_reach  # noqa: E402
from medsam_core.walk_extent import orthogonal_planes  # noqa: E402

LOWEST = (0.6, 0.3)  # the smallest width ratio a box may take


def outputs(pred, box):
    one = pred.predict(boxes=box[None])
    multi = pred.predict(boxes=box[None], multimask_output=True)
    return [one[0][0], *multi[0][0]], [float(one[1][0]), *[float(x) for x in multi[1][0]]]


def most_like(masks, ref) -> int:
    return int(np.argmax([(m & ref).sum() / max((m | ref).sum(), 1) for m in masks]))


def plane_profiles(pred, vol, res, spacing, intensity) -> dict:
    """Per plane axis: {slice: (centre, width)} of the plane mask's run on that slice's row."""
    out = {}
    planes = orthogonal_planes(vol, res.masks[res.start], spacing)
    for (axis, _at, plane, zoom, _s), est in zip(planes, res.extent.planes, strict=True):
        pred.set_image(plane, intensity=intensity)
        m = pred.predict(boxes=est.boxes[-1][None])[0][0]
        prof = {}
        for z in range(vol.shape[0]):
            r = min(max(int(round((z + 0.5) * zoom - 0.5)), 0), m.shape[0] - 1)
            cols = np.flatnonzero(m[r])
            if cols.size:
                prof[z] = ((cols[0] + cols[-1]) / 2, cols[-1] - cols[0] + 1)
        out[axis] = prof
    return out


def main(first_cache: str, oracle_file: str, *cases: str, cache: str = "/tmp/medsam_bench_cache") -> None:
    model = medsam_core.load_model("lite_medsam", device="cpu")
    oracle = json.loads(Path(oracle_file).read_text())["cases"]
    tagdir = sorted(glob.glob(f"{first_cache}/*"))[0]
    for case in cases:
        vol, labels, spacing, names = bench_3d.load(case)
        pred, intensity = bench_3d.cached_predictor(model, case, vol, cache=cache)
        rows = {}
        for i in [int(i) for i in np.unique(labels) if i > 0]:
            obj, name = labels == i, names[i - 1] if names else f"{case} {i}"
            res, _ = pickle.loads(Path(f"{tagdir}/{name.replace(' ', '_')}.pkl").read_bytes())
            res.vote = vote_reach(spacing, 2.0)
            z0, box, start = res.start, res.keys[res.start], res.masks[res.start]
            prof = plane_profiles(pred, vol, res, spacing, intensity)
            ref = {a: prof[a].get(z0) for a in ("x", "y")}
            centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
            kept = {lo: {} for lo in LOWEST}
            walked = sorted(res.masks)
            for side in ([z for z in walked if z > z0], [z for z in walked if z < z0][::-1]):
                ratio, drift = np.ones(2), np.zeros(2)
                for z in side:
                    for k, a in enumerate(("x", "y")):
                        if ref[a] is not None and z in prof[a]:
                            drift[k], ratio[k] = prof[a][z][0] - ref[a][0], prof[a][z][1] / ref[a][1]
                    if not res.masks[z].any():
                        continue
                    pred.set_image(vol[z], intensity=intensity)
                    masks, scores = outputs(pred, box)
                    ia = most_like(masks, start)
                    for lo in LOWEST:
                        h = half * np.clip(ratio, lo, 1.0)
                        other, oscores = outputs(pred, np.concatenate([centre + drift - h, centre + drift + h]))
                        io = most_like(other, start)
                        kept[lo][z] = other[io] if oscores[io] > scores[ia] else masks[ia]
            row = {"walk": dice(res.volume(), obj)}
            for lo, new in kept.items():
                saved = dict(res.masks)
                res.masks.update(new)
                row[f"plane boxes (>= {lo})"] = dice(res.volume(), obj)
                res.masks = saved
            orc = oracle[case]["structures"][name]["oracle"]
            for k, v in row.items():
                rows.setdefault(k, []).append((v, orc))
            print(f"{case} {name:18s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
        print(case + ": " + "; ".join(
            f"{k} {np.mean([a for a, _ in v]) / np.mean([b for _, b in v]):.3f}x (min {min(a / b for a, b in v):.2f})"
            for k, v in rows.items()), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
