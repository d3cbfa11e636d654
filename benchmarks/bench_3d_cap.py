"""3D walk: score "past the estimated end" (Extent.cap) offline on saved one-box walks, all volumes at once.

A cap only shortens a walk, so cutting a saved uncapped walk at the cap is (up to the evidence
count's last held slices) what the capped walk keeps. First save the uncapped walks, then score a
grid of (past, least, agree) on them; the real capped walk is ``bench_3d.py`` with the defaults.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d.py --walk extent_cap=null \\
         --first-cache /tmp/medsam_3d_uncapped --out /tmp/uncapped.json
     .venv/bin/python benchmarks/bench_3d_cap.py /tmp/medsam_3d_uncapped /tmp/uncapped.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_3d import CASES, load  # noqa: E402

from medsam_core.metrics import dice  # noqa: E402

GRID = [(None, 0, 0), (0.5, 3, 0.05), (0.5, 3, 0.1), (0.5, 3, 0.15), (0.5, 3, 0.2), (0.3, 3, 0.1), (0.7, 3, 0.1),
        (1.0, 3, 0.1), (0.5, 2, 0.1), (0.5, 4, 0.1), (0.5, 3, 99.0)]


def walks(first: Path):
    """{(case, name): (WalkResult, reference mask)} from bench_3d's --first-cache folder."""
    out = {}
    for case in CASES:
        _, labels, _, names = load(case)
        for i in [int(i) for i in np.unique(labels) if i > 0]:
            name = names[i - 1] if names else f"{case} {i}"
            found = list(first.glob(f"*/{name.replace(' ', '_')}.pkl"))
            if found:
                out[(case, name)] = (pickle.loads(found[0].read_bytes())[0], labels == i)
    return out


def capped(res, past, least, agree) -> np.ndarray:
    """The walk's mask cut where Extent.cap would end each direction."""
    v = res.volume().copy()
    if past is None or res.extent is None:
        return v
    zz = np.arange(v.shape[0])
    for step in (1, -1):
        cap = res.extent.cap(res.start, step, past, least, agree)
        if cap is not None:
            v[(zz - res.start) * step > cap] = False
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("first", type=Path, help="bench_3d --first-cache folder of uncapped walks")
    ap.add_argument("result", type=Path, help="the bench_3d result of the same run (for the oracle)")
    args = ap.parse_args()
    data, oracle = walks(args.first), json.loads(args.result.read_text())["cases"]
    base = {k: dice(r.volume(), obj) for k, (r, obj) in data.items()}
    for past, least, agree in GRID:
        per, changed = {}, []
        for (case, name), (res, obj) in data.items():
            d = dice(capped(res, past, least, agree), obj)
            per.setdefault(case, []).append((d, oracle[case]["structures"][name]["oracle"]))
            if abs(d - base[(case, name)]) > 1e-4:
                changed.append(f"{name} {base[(case, name)]:.3f}->{d:.3f}")
        cells = [f"{c} {np.mean([a for a, _ in v]) / np.mean([o for _, o in v]):.3f}x "
                 f"(min {min(a / o for a, o in v):.2f})" for c, v in per.items()]
        print(f"past={past} least={least} agree={agree}: " + " | ".join(cells) + ("; " + ", ".join(changed) if changed else ""))


if __name__ == "__main__":
    main()
