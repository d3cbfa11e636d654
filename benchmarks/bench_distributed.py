"""``medsam batch`` on Dask distributed vs in-process: same bytes, overhead, a killed worker.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py [--n 20] [--out DIR]

A folder of ``--n`` real images made from /work/shared/data (../shared/data): 256 px crops of the
DSB2018 nuclei image, axial MRI slices (Colin27, INIA19), a (3, 128, 128) crop of the cells3d
volume (one unit whose slices share the encoder) and the DSB image tiled 4x4 to 2048 px (boxes
small enough for ROI crops); boxes from the reference labels (up to 6 per image). Runs, in order:

1. in-process ``segment_folder`` (1 torch thread: OMP_NUM_THREADS=1);
2. LocalCluster, 1 worker (1 torch thread) on 127.0.0.1; 3. the same with 2 workers;
4. fault run: 2 workers, one worker process SIGKILLed after 5 units are done.

Prints wall times (cluster start-up apart), the ratios, per-image medians, the load average, and
whether every output of runs 2-4 equals run 1 byte for byte. PyTorch encoder everywhere (the
default "auto" switches to OpenVINO when a background build ends, at a timing-dependent moment).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKEND = "torch"


def boxes_of(labels: np.ndarray, k: int = 6) -> list[tuple[int, int, int, int]]:
    from scipy import ndimage

    found = [s for s in ndimage.find_objects(labels) if s is not None]
    found.sort(key=lambda s: -(s[0].stop - s[0].start) * (s[1].stop - s[1].start))
    return [(s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in found[:k]]


def make_folder(root: Path, n: int) -> tuple[Path, Path]:
    """n images + one boxes CSV folder (<stem>.csv; the volume's with z)."""
    images, boxes = root / "images", root / "boxes"
    images.mkdir(parents=True)
    boxes.mkdir()
    cases = []
    with np.load(DATA / "fluo_nuclei_dsb2018.npz") as d:
        img, lab = d["image"], d["labels"]
    cases.append(("tiled2048", np.tile(img, (4, 4)), np.tile(lab, (4, 4))))
    for name in ("mri_t1_colin27_aal_dev", "mri_t1_macaque_inia19_dev"):
        with np.load(DATA / f"{name}.npz") as d:
            vol, vlab = d["image"], d["labels"]
        z = int(np.argmax((vlab > 0).sum(axis=(1, 2))))
        cases.append((name.split("_")[2], np.asarray(vol[z]), vlab[z]))
    with np.load(DATA / "confocal3d_nuclei_cells3d.npz") as d:
        vol3, lab3 = d["image"][28:31, :128, :128], d["labels"][28:31, :128, :128]
    rng = np.random.default_rng(0)
    while len(cases) < n - 1:
        y, x = rng.integers(0, 256, 2)
        cases.append((f"dsb{len(cases):02d}", img[y:y + 256, x:x + 256], lab[y:y + 256, x:x + 256]))
    for stem, im, lb in cases[: n - 1]:
        tifffile.imwrite(images / f"{stem}.tif", np.ascontiguousarray(im))
        rows = "".join(f"{x0},{y0},{x1},{y1}\n" for x0, y0, x1, y1 in boxes_of(lb))
        (boxes / f"{stem}.csv").write_text("x_min,y_min,x_max,y_max\n" + rows)
    tifffile.imwrite(images / "cells3d.tif", vol3, photometric="minisblack")
    rows = "".join(f"{x0},{y0},{x1},{y1},{z}\n" for z in range(3) for x0, y0, x1, y1 in boxes_of(lab3[z], 3))
    (boxes / "cells3d.csv").write_text("x_min,y_min,x_max,y_max,z\n" + rows)
    return images, boxes


def kill_one_busy_worker(client) -> str:
    busy = sorted(w for w, tasks in client.processing().items() if tasks)
    victim = (busy or sorted(client.scheduler_info()["workers"]))[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, 9)
    return victim


def run_dask(images, boxes, out, workers, kill_after=None) -> dict:
    from medsam_core.distributed import local_client, submit_folder

    t0 = time.perf_counter()
    with local_client(workers, dashboard=False, torch_threads=1) as client:
        start = time.perf_counter() - t0
        killed: list[str] = []

        def progress(done, total, name):
            if kill_after and done == kill_after and not killed:
                killed.append(kill_one_busy_worker(client))

        t1 = time.perf_counter()
        report = submit_folder(client, images, out, boxes=boxes, encoder_backend=BACKEND,
                               on_progress=progress).report()
        wall = time.perf_counter() - t1
    return {"report": report, "wall": wall, "start": start, "killed": killed}


def same_bytes(a: Path, b: Path, names) -> list[str]:
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="images in the folder (>= 5)")
    ap.add_argument("--out", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from medsam_core.batch import existing_output_problem, segment_folder

    root = Path(args.out or tempfile.mkdtemp(prefix="bench_dist_"))
    images, boxes = make_folder(root, args.n)
    names = sorted(p.name for p in images.iterdir())
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; load average at start {os.getloadavg()}")
    print(f"{len(names)} images in {images} (boxes: {boxes})")
    t = time.perf_counter()
    ref = segment_folder(images, root / "inproc", boxes=boxes, encoder_backend=BACKEND)
    base = time.perf_counter() - t
    assert ref.ok, ref.summary()
    med0 = statistics.median(r.seconds for r in ref.results)
    print(f"in-process          wall {base:7.1f} s  median/image {med0:5.2f} s  encoder calls {ref.encoder_calls}",
          flush=True)
    for label, workers, kill in (("LocalCluster 1 wkr", 1, None), ("LocalCluster 2 wkr", 2, None),
                                 ("fault run 2 wkr", 2, 5)):
        out = root / (label.split()[-2] + ("_fault" if kill else ""))
        r = run_dask(images, boxes, out, workers, kill)
        rep = r["report"]
        med = statistics.median(x.seconds for x in rep.results if x.status == "done")
        diff = same_bytes(root / "inproc", out, [Path(x.output).name for x in ref.results])
        problems = [n for n in names if existing_output_problem(out / f"{Path(n).name.split('.')[0]}.tif",
                                                                images / n)]
        print(f"{label:19s} wall {r['wall']:7.1f} s  x{r['wall'] / base:4.2f} of in-process "
              f"(x{(r['wall'] + r['start']) / base:4.2f} with the {r['start']:.1f} s cluster start)  "
              f"median/image {med:5.2f} s  {rep.summary().splitlines()[0]}; bytes differ: {diff or 'none'}; "
              f"outputs not verified: {problems or 'none'}", flush=True)
        if kill:
            again = [(x.image, x.retries, x.message) for x in rep.results if x.retries]
            print(f"  killed {r['killed']}; report lists reruns: {again}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
