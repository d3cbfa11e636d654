"""3D, slice by slice: for one structure, the per-slice oracle, the start box held on every slice, and
the walk, side by side (where a one-box walk loses against the oracle, and what one held box can reach).

Per slice of the structure (and of the walk): the reference's area; the oracle's Dice (the reference box
+ ``--pad`` px on that slice, one-mask output) and area; the held box's Dice (the walk's start box on that
slice) and area; the Dice of each multimask output for the held box with its predicted IoU; the walk's
Dice and area (``WalkResult.volume()``, the package's defaults) and the features its rules saw. Totals:
3D Dice of the oracle, of the held box on every slice of the reference, and of the walk.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_slices.py colin27 ParaHippocampal_R
[--pad 3] [--stride 1]  (cases and encodes shared with bench_3d.py's cache)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_3d as b  # noqa: E402

import medsam_core  # noqa: E402
from medsam_core.metrics import dice  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("case", choices=[*b.CASES, *b.CHECK_CASES])
    ap.add_argument("structures", nargs="+", help="names, e.g. ParaHippocampal_R or 'macaque 1'")
    ap.add_argument("--pad", type=float, default=3.0)
    ap.add_argument("--stride", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = medsam_core.load_model("lite_medsam", device="cpu")
    vol, lab, sp, names = b.load(args.case)
    pred, inten = b.cached_predictor(model, args.case, vol)
    vol, lab, sp = b.thick_slices(vol, lab, sp, args.stride)
    for name in args.structures:
        obj = lab == ((names.index(name) + 1) if names else int(name.split()[-1]))
        z, box = b.largest_slice_box(obj, args.pad)
        res = medsam_core.walk_volume(pred, vol, box, z, spacing=sp, intensity=inten)
        out = res.volume()
        zs = np.flatnonzero(obj.any((1, 2)) | out.any((1, 2)))
        orc, held = np.zeros_like(obj), np.zeros_like(obj)
        print(f"{name}: start slice {z}, box {np.round(box, 1).tolist()}; {res.describe()}")
        for zz in range(zs[0], zs[-1] + 1):
            pred.set_image(vol[zz], intensity=inten)
            if obj[zz].any():
                orc[zz] = pred.predict(boxes=b.reference_box(obj[zz], args.pad)[None])[0][0]
            # one decoder pass: the one-mask output first, then the three multimask outputs
            masks, ious = pred.predict(boxes=box[None], multimask_output="all")
            multi, scores = masks[0][1:], ious[0][1:]
            if obj[zz].any():
                held[zz] = masks[0][0]
            f = res.features.get(zz, {})
            rules = " ".join(f"{k} {f[k]:.2f}" for k in ("score", "agree", "contrast", "mean") if k in f)
            print(f"  slice {zz:3d} ref {int(obj[zz].sum()):5d} | oracle {dice(orc[zz], obj[zz]):.2f} "
                  f"({int(orc[zz].sum()):5d}) | held {dice(held[zz], obj[zz]):.2f} ({int(held[zz].sum()):5d}) "
                  f"multimask " + " ".join(f"{dice(m, obj[zz]):.2f}/{s:.2f}" for m, s in zip(multi, scores, strict=True))
                  + f" | walk {dice(out[zz], obj[zz]):.2f} ({int(out[zz].sum()):5d}) {rules}")
        o, h, w = dice(orc, obj), dice(held, obj), dice(out, obj)
        print(f"  3D Dice: oracle {o:.3f}, held box on every reference slice {h:.3f} ({h / o:.2f}x), "
              f"walk {w:.3f} ({w / o:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
