"""The encoder graph before and after a change of tiny_vit.py (stop 34: 3D transposes for the channels-last round
trips, tiny_vit.py), side by side: PyTorch outputs, OpenVINO speed, and the masks on every 2D case.

The old graph is git's ``HEAD~N:src/medsam_core/modeling/tiny_vit.py`` at ``--old-rev`` (default: the
commit before the change); both are exported with the package's own route (``export_ir``) into
``--workdir``. Reports: max |diff| of the eager outputs (expected 0: the same numbers), each
engine's max |diff| to eager, interleaved timings (f32 and bf16, paired ratio new / old), and,
through ``bench_precision.compare``, the per-object Dice of the new f32 engine's masks against the
old one's and the predicted-IoU change on every 2D sample case.

Run: .venv/bin/python benchmarks/bench_engine_layout.py [--rounds 12] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, interleaved_times, paired_ratio  # noqa: E402
from bench_precision import CASES, DATA, compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def old_module(rev: str, workdir: Path):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/medsam_core/modeling/tiny_vit.py"],
                         capture_output=True, text=True, check=True).stdout
    path = workdir / "tiny_vit_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("tiny_vit_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-rev", default="8aa2965")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medsam-bench-layout"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    import medsam_core
    from medsam_core import _openvino_engine as ove
    from medsam_core.backends import EngineEncoder, TorchEncoder
    from medsam_core.modeling import tiny_vit as tv

    args.workdir.mkdir(parents=True, exist_ok=True)
    old = old_module(args.old_rev, args.workdir)
    new = (tv.TinyViTBlock.forward, tv.AttentionStage.forward, tv.Attention.forward)

    def use(which: str) -> None:
        chosen = (old.TinyViTBlock.forward, old.AttentionStage.forward, old.Attention.forward) if which == "old" else new
        tv.TinyViTBlock.forward, tv.AttentionStage.forward, tv.Attention.forward = chosen

    torch.set_num_threads(2)
    model = medsam_core.load_model("lite_medsam", device="cpu")
    enc = model.image_encoder.eval()
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    report: dict = {"cpu": cpu_model(), "load_avg": os.getloadavg(), "old_rev": args.old_rev}
    ref = {}
    with torch.inference_mode():
        for w in ("old", "new"):
            use(w)
            ref[w] = enc(torch.from_numpy(x)).numpy()
    report["eager_old_vs_new_max_abs"] = float(np.abs(ref["old"] - ref["new"]).max())
    engines, folders = {}, {}
    for w in ("old", "new"):
        use(w)
        folders[w] = args.workdir / w
        folders[w].mkdir(exist_ok=True)
        if not (folders[w] / "encoder.xml").exists():
            t0 = time.perf_counter()
            ove.export_ir(enc, 256, folders[w] / "encoder.xml")
            report[f"export_s_{w}"] = time.perf_counter() - t0
        for prec in ("f32", "bf16"):
            engines[f"{w} {prec}"] = ove.compile_engine(folders[w], 2, prec)
            out = engines[f"{w} {prec}"](x)
            report[f"max_abs_vs_eager {w} {prec}"] = float(np.abs(out - ref["old"]).max())
    use("new")
    print(json.dumps(report), flush=True)
    times = interleaved_times(engines, x, args.rounds)
    print("\n| engine | median s | min s | paired x old (same precision) |\n|---|---|---|---|")
    report["speed"] = {}
    for n, ts in times.items():
        base = times["old " + n.split()[1]]
        paired = paired_ratio(ts, base)
        report["speed"][n] = {"median_s": statistics.median(ts), "min_s": min(ts), "paired_x_old": paired}
        print(f"| {n} | {statistics.median(ts):.3f} | {min(ts):.3f} | {paired:.3f} |")
    eager = TorchEncoder(model, num_threads=2)
    info = {"engine": "openvino", "path": "", "precision": "f32"}
    backends = {"f32": EngineEncoder(engines["old f32"], eager, dict(info, graph="old")),
                "new": EngineEncoder(engines["new f32"], eager, dict(info, graph="new"))}
    report["masks_new_vs_old_f32"] = cases = compare(model, backends, [DATA / c for c in CASES])["new"]
    print("\n| case | objects | mean Dice new vs old (f32) | min Dice | max abs IoU-prediction change |\n"
          "|---|---|---|---|---|")
    for k, c in cases.items():
        print(f"| {k} | {c['objects']} | {c['mean_dice']:.4f} | {c['min_dice']:.4f} "
              f"| {c['max_iou_change']:.5f} |")
    report["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
