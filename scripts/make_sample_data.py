"""Rebuild the sample shipped in src/medsam_core/sample_data/ from ../shared/data/fluo_nuclei_dsb2018.npz.

A 256x256 crop of the DSB2018 nuclei image (rows 212-467, cols 248-503) holding 25 whole nuclei;
the 4 nuclei cut by (or touching) the crop border are removed from the labels and get no box. Boxes are each
object's bounding box (inclusive pixel indices) pushed out by 2 px, clipped to the image.

    .venv/bin/python scripts/make_sample_data.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"
OUT = REPO / "src" / "medsam_core" / "sample_data"
TOP, LEFT, SIZE, MARGIN = 212, 248, 256, 2


def main() -> int:
    with np.load(SOURCE) as d:
        image, labels = d["image"], d["labels"]
    crop = np.ascontiguousarray(image[TOP : TOP + SIZE, LEFT : LEFT + SIZE])
    lab = labels[TOP : TOP + SIZE, LEFT : LEFT + SIZE]
    full_area = np.bincount(labels.ravel())
    crop_area = np.bincount(lab.ravel(), minlength=len(full_area))
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist())
    whole = [i for i in np.unique(lab) if i > 0 and crop_area[i] == full_area[i] and i not in border]
    # Number the whole objects 1..N in raster order of their first pixel (reading order).
    first = {i: int(np.flatnonzero(lab.ravel() == i)[0]) for i in whole}
    order = sorted(whole, key=first.get)
    out_lab = np.zeros(lab.shape, np.uint8)
    rows = []
    for new_id, old in enumerate(order, start=1):
        m = lab == old
        out_lab[m] = new_id
        ys, xs = np.nonzero(m)
        rows.append([max(0, xs.min() - MARGIN), max(0, ys.min() - MARGIN),
                     min(SIZE - 1, xs.max() + MARGIN), min(SIZE - 1, ys.max() + MARGIN)])
    OUT.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(OUT / "nuclei_dsb2018_crop.tif", crop, compression="zlib", photometric="minisblack")
    tifffile.imwrite(OUT / "nuclei_dsb2018_crop_labels.tif", out_lab, compression="zlib",
                     photometric="minisblack")
    with open(OUT / "nuclei_dsb2018_crop_boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x_min", "y_min", "x_max", "y_max"])
        w.writerows([[int(v) for v in r] for r in rows])
    print(f"{len(order)} whole objects, {len(np.unique(lab)) - 1 - len(order)} cut by or touching the border removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
