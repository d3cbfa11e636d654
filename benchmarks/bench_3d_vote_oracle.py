"""The per-slice oracle of bench_3d.py with the walk's slice vote applied to its masks too.

The bar's oracle (the reference box + 3 px on every slice, one-mask output) is not voted; the walk's
3D mask is (walk.vote_slices, 2 slices each side on these isotropic volumes, the start slice kept).
This prints, per volume, the oracle as decoded and voted, and the walk's Dice from a bench_3d
result file against both.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d_vote_oracle.py benchmarks/results/3d_vote.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_3d  # noqa: E402

import medsam_core  # noqa: E402
from medsam_core.metrics import dice  # noqa: E402
from medsam_core.walk import vote_reach, vote_slices  # noqa: E402


def main(result_file: str, cache: str = "/tmp/medsam_bench_cache") -> None:
    walks = json.loads(Path(result_file).read_text())["cases"]
    model = medsam_core.load_model("lite_medsam", device="cpu")
    for case in walks:
        vol, labels, spacing, names = bench_3d.load(case)
        pred, intensity = bench_3d.cached_predictor(model, case, vol, cache=cache)
        reach = vote_reach(spacing, 2.0)
        raw, voted, walk = [], [], []
        for i in [int(i) for i in np.unique(labels) if i > 0]:
            name = names[i - 1] if names else f"{case} {i}"
            if name not in walks[case]["structures"]:
                continue
            obj = labels == i
            z0, _ = bench_3d.largest_slice_box(obj, 3.0)
            out = bench_3d.oracle(pred, vol, obj, 3.0, intensity)
            raw.append(dice(out, obj))
            voted.append(dice(vote_slices(out, reach, keep={z0}), obj))
            walk.append(walks[case]["structures"][name]["dice"])
        r, v, w = np.mean(raw), np.mean(voted), np.mean(walk)
        print(f"{case}: oracle {r:.3f}, voted oracle {v:.3f}; walk {w:.3f} = {w / r:.3f}x / {w / v:.3f}x", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
