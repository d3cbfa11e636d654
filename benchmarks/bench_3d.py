"""3D: one box on one slice -> the whole structure, against the per-slice oracle, on every 3D case.

Cases (../shared/data): ``mri_t1_colin27_aal_dev.npz`` (human T1, 6 deep structures),
``mri_t1_macaque_inia19_dev.npz`` (macaque T1 template, 8 regions), ``confocal3d_nuclei_cells3d.npz``
(20 nuclei). Per structure:

* walk: ``medsam_core.walk_volume`` (``segment_volume``'s engine) from the reference box (pushed out
  by ``--pad`` px per side) on the structure's largest slice, with the file's spacing;
* oracle: the same predictor given the reference box (same padding) on every slice where the
  structure exists: the best a per-slice box prompt can do, an upper bound for a box walk;
* ratio: walk 3D Dice / oracle 3D Dice (per structure; per volume the ratio of the means);
* correction: one key box (the reference box) on the slice where the walk is worst (most wrong
  voxels among the structure's slices), re-walking only the side it affects
  (``walk_volume(..., previous=result)``);
* time: the walk's wall time with every slice already encoded (decoding only); encodes per volume.

Every volume's slices are encoded once into a disk EmbeddingCache (``--cache``, default
/tmp/medsam_bench_cache/<case>-<window hash>): reruns only decode.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_3d.py [--out benchmarks/results/3d_walk.json]
[--walk key=value ...] (options for the walk, e.g. ``--walk mask_prompt=False``) [--cases colin27 ...]
[--structures Pallidum_R "cells3d 8"] [--fix key=value ...] (correction walk only)
[--first-cache /tmp/medsam_3d_first] (reuse the one-box walks: a correction variant decodes one side)
[--axis 1] (walk across another axis: the volume with that axis moved first, spacing to match; the
defaults were tuned across axis 0, so axes 1 and 2 are slices of planes they were never tuned on)
[--stride 2] (every 2nd slice along the walk axis, slice spacing x 2: a thick-slice scan)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

import medsam_core  # noqa: E402
from medsam_core import EmbeddingCache, Intensity, Predictor  # noqa: E402
from medsam_core.metrics import dice  # noqa: E402
from medsam_core.prompts import fit_box  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CASES = {
    "colin27": "mri_t1_colin27_aal_dev.npz",
    "macaque": "mri_t1_macaque_inia19_dev.npz",
    "cells3d": "confocal3d_nuclei_cells3d.npz",
}
# check cases (make_check_volumes.py: other structures of the same two MRI brains; never tuned on),
# read from $MEDSAM_CHECK_VOLUMES (default /tmp/medsam_check_volumes); each shares its brain's
# embedding cache (the same slices)
CHECK_DIR = Path(os.environ.get("MEDSAM_CHECK_VOLUMES", "/tmp/medsam_check_volumes"))
CHECK_CASES = {"colin27-other": "mri_t1_colin27_aal_other.npz", "macaque-other": "mri_t1_macaque_inia19_other.npz"}


def load(case: str):
    path = CHECK_DIR / CHECK_CASES[case] if case in CHECK_CASES else DATA / CASES[case]
    if not path.exists():
        sys.exit(f"{path} is missing" + (": build it with make_check_volumes.py" if case in CHECK_CASES else ""))
    with np.load(path) as d:
        names = [str(n) for n in d["label_names"]] if "label_names" in d else None
        return d["image"], d["labels"], tuple(float(s) for s in d["spacing"]), names


def reference_box(mask2d: np.ndarray, pad: float) -> np.ndarray:
    """The reference's box on one slice pushed out by ``pad`` px, made a valid prompt where the slice
    is under 2 px wide or high (``--pad 0`` on a one-pixel-wide slice gives an empty box otherwise)."""
    return fit_box(medsam_core.box_from_mask(mask2d, pad), mask2d.shape)


def largest_slice_box(obj: np.ndarray, pad: float) -> tuple[int, np.ndarray]:
    z = int(np.argmax(obj.sum(axis=(1, 2))))
    return z, reference_box(obj[z], pad)


def start_box(obj: np.ndarray, pad: float, how: str = "largest") -> tuple[int, np.ndarray]:
    """The one box: on the structure's largest slice (the issue's bar), or (``"middle"``) on the
    middle of its slice range (MedSAM's own recipe; the structure's slice nearest to it if that one is
    empty), the reference box there + ``pad``."""
    if how == "largest":
        return largest_slice_box(obj, pad)
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    mid = (zs[0] + zs[-1]) / 2
    z = int(zs[np.argmin(np.abs(zs - mid))])
    return z, reference_box(obj[z], pad)


def oracle(pred, vol, obj, pad, intensity) -> np.ndarray:
    out = np.zeros(obj.shape, bool)
    for z in np.flatnonzero(obj.any(axis=(1, 2))):
        pred.set_image(vol[z], intensity=intensity)
        masks, _ = pred.predict(boxes=reference_box(obj[z], pad)[None])
        out[z] = masks[0]
    return out


def worst_slice(out: np.ndarray, obj: np.ndarray) -> int:
    """The structure's slice with the most wrong voxels (where one key box helps most)."""
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    wrong = (out[zs] ^ obj[zs]).sum(axis=(1, 2))
    return int(zs[np.argmax(wrong)])


def side_bound(pred, vol, obj, res, zw, pad, intensity) -> dict:
    """What any correction on slice ``zw`` could reach when only its side is re-walked (the rest of
    ``res`` kept): that side replaced by the per-slice oracle's masks on the structure's slices
    (nothing past its end), by the reference itself, or by nothing."""
    out = res.volume()
    side = np.arange(len(vol)) > res.start if zw > res.start else np.arange(len(vol)) < res.start
    perfect, orc, empty = out.copy(), out.copy(), out.copy()
    perfect[side], orc[side], empty[side] = obj[side], False, False
    for z in np.flatnonzero(side & obj.any(axis=(1, 2))):
        pred.set_image(vol[z], intensity=intensity)
        orc[z] = pred.predict(boxes=reference_box(obj[z], pad)[None])[0][0]
    return {"oracle_side": dice(orc, obj), "reference_side": dice(perfect, obj), "empty_side": dice(empty, obj)}


def stops_text(res) -> dict:
    return {d: {"reason": s.reason, "slice": s.slice} for d, s in res.stops.items()}


def first_walk(pred, vol, box, z, spacing, intensity, walk_opts, store: Path | None):
    """The one-box walk and its time; with ``store`` (a pickle path) reused from an earlier run made
    with the same walk options (a correction variant then costs only the re-walked side)."""
    if store is not None and store.exists():
        res, t_walk = pickle.loads(store.read_bytes())
        return res, t_walk
    t0 = time.perf_counter()
    res = medsam_core.walk_volume(pred, vol, box, z, spacing=spacing, intensity=intensity, **walk_opts)
    t_walk = time.perf_counter() - t0
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_bytes(pickle.dumps((res, t_walk)))
    return res, t_walk


def extra_keys(obj: np.ndarray, z: int, how: str | None, pad: float) -> dict:
    """``--keys``: the reference boxes (+ ``pad``) a user adds to the start box. "ends": on the
    structure's first and last slice, the walk bound by them; "ends-guide": the same boxes as the
    widget uses key boxes (they guide, the stop rules end the walk); "mid": half way from the start
    to each end (the walk goes on past them); None: no more keys (the one-box walk)."""
    if how is None:
        return {}
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    where = [zs[0], zs[-1]] if how.startswith("ends") else [round((z + zs[0]) / 2), round((z + zs[-1]) / 2)]
    return {int(k): reference_box(obj[int(k)], pad) for k in where if int(k) != z}


def run_structure(pred, vol, obj, spacing, intensity, args, walk_opts, known_oracle=None, name="") -> dict:
    z, box = start_box(obj, args.pad, args.start)
    keys = extra_keys(obj, z, args.keys, args.pad)
    if keys:  # a few boxes: the walk between and (with "mid") past them
        walk_opts = {**walk_opts, "key_boxes": keys, "bound_by_keys": args.keys == "ends"}
    store = None
    if args.first_cache:
        setting = [{k: v for k, v in walk_opts.items() if k != "key_boxes"}, args.pad, args.intensity] + \
            ([args.axis] if args.axis else []) + ([args.keys] if args.keys else []) + \
            ([args.stride] if args.stride > 1 else []) + ([args.start] if args.start != "largest" else [])
        tag = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]
        store = Path(args.first_cache) / tag / f"{name.replace(' ', '_')}.pkl"
    res, t_walk = first_walk(pred, vol, box, z, spacing, intensity, walk_opts, store)
    out = res.volume()
    orc_dice = known_oracle if known_oracle is not None else dice(oracle(pred, vol, obj, args.pad, intensity), obj)
    zw = worst_slice(out, obj)
    key = reference_box(obj[zw], args.pad if args.key_pad is None else args.key_pad)
    t0 = time.perf_counter()
    fixed = medsam_core.walk_volume(pred, vol, box, z, spacing=spacing, intensity=intensity,
                                    **{**walk_opts, **args.fix_opts, "key_boxes": {**keys, zw: key},
                                       "previous": res, "bound_by_keys": False})
    t_fix = time.perf_counter() - t0
    zs = np.flatnonzero(obj.any(axis=(1, 2)))
    found = np.flatnonzero(out.any(axis=(1, 2)))
    fixed_found = np.flatnonzero(fixed.volume().any(axis=(1, 2)))
    return {
        "start": z, "ref_slices": [int(zs[0]), int(zs[-1])], "keys": sorted(keys),
        "walk_slices": [int(found[0]), int(found[-1])] if found.size else None,
        "dice": dice(out, obj), "oracle": orc_dice, "stops": stops_text(res),
        "time_s": t_walk, "slices_walked": len(res.masks),
        "correction_slice": zw, "dice_corrected": dice(fixed.volume(), obj), "time_correction_s": t_fix,
        "slices_rewalked": fixed.rewalked, "stops_corrected": stops_text(fixed),
        **({"bound": side_bound(pred, vol, obj, res, zw, args.pad, intensity)} if args.side_bound else {}),
        "walk_slices_corrected": [int(fixed_found[0]), int(fixed_found[-1])] if fixed_found.size else None,
    }


def cached_predictor(model, case: str, vol, mode: str = "auto", cache: str = "/tmp/medsam_bench_cache",
                     max_bytes: int = 2**32, **predictor_kw):
    """(Predictor, Intensity) for ``case``: the volume-wide window, and a disk EmbeddingCache per
    volume and window, so every benchmark shares each slice's one encode."""
    intensity = medsam_core.volume_intensity(vol, Intensity(mode=mode))
    tag = hashlib.sha256(repr(intensity).encode()).hexdigest()[:8]
    store = Path(cache) / f"{case.removesuffix('-other')}-{tag}"
    return Predictor(model, cache=EmbeddingCache(max_bytes=max_bytes, disk_dir=store), **predictor_kw), intensity


def walk_axis_first(vol, labels, spacing, axis: int = 0):
    """The volume, labels and spacing with ``axis`` first (same voxels, slices of another plane)."""
    if axis:
        vol, labels = (np.ascontiguousarray(np.moveaxis(a, axis, 0)) for a in (vol, labels))
        spacing = (spacing[axis], *(s for i, s in enumerate(spacing) if i != axis))
    return vol, labels, spacing


def thick_slices(vol, labels, spacing, stride: int):
    """Every ``stride``-th slice, the slice spacing multiplied to match: a thick-slice scan. Take the
    intensity window from the whole volume first (``cached_predictor``), so each kept slice is the same
    image as before and its cached encode is reused."""
    if stride <= 1:
        return vol, labels, spacing
    return vol[::stride], labels[::stride], (spacing[0] * stride, *spacing[1:])


def run_case(model, case: str, args, walk_opts) -> dict:
    vol, labels, spacing, names = load(case)
    vol, labels, spacing = walk_axis_first(vol, labels, spacing, args.axis)
    pred, intensity = cached_predictor(model, case, vol, args.intensity, args.cache)
    vol, labels, spacing = thick_slices(vol, labels, spacing, args.stride)
    ids = [int(i) for i in np.unique(labels) if i > 0 and (labels == i).any(axis=(1, 2)).sum() >= 3]
    ids = [i for i in ids if not args.only or i in args.only]
    if args.structures:
        ids = [i for i in ids if (names[i - 1] if names else f"{case} {i}") in args.structures]
    known = {}
    if args.oracle_from:  # the oracle is deterministic: reuse a run made with the same window and pad
        meta = json.loads(Path(args.oracle_from).read_text())
        old = meta["cases"].get(case)
        same_axis = meta.get("axis", 0) == args.axis and meta.get("stride", 1) == args.stride
        if old and same_axis and old["summary"]["window"] == list(intensity.value_range or ()):
            known = {k: v["oracle"] for k, v in old["structures"].items()}
    rows = {}
    for i in ids:
        obj = labels == i
        name = names[i - 1] if names else f"{case} {i}"
        r = run_structure(pred, vol, obj, spacing, intensity, args, walk_opts, known.get(name), name)
        rows[name] = r
        print(f"  {name:22s} ref {r['ref_slices']} walk {r['walk_slices']} from {r['start']}: Dice "
              f"{r['dice']:.3f} oracle {r['oracle']:.3f} ({r['dice'] / max(r['oracle'], 1e-9):.2f}x) "
              f"corr@{r['correction_slice']} {r['dice_corrected']:.3f} ({r['dice_corrected'] - r['dice']:+.3f}, "
              f"{r['walk_slices_corrected']})  {r['time_s']:.2f} s  "
              f"up: {r['stops']['up']['reason']} @{r['stops']['up']['slice']}, "
              f"down: {r['stops']['down']['reason']} @{r['stops']['down']['slice']}"
              + (f"  side bound: oracle {r['bound']['oracle_side']:.3f}, reference {r['bound']['reference_side']:.3f}"
                 if "bound" in r else ""), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("dice", "oracle", "dice_corrected")}
    low = [r for r in rows.values() if r["dice"] < 0.8 * r["oracle"]]
    summary = {**mean, "ratio": mean["dice"] / mean["oracle"],
               "under_0.8x": len(low), "lifted_0.1": sum(r["dice_corrected"] - r["dice"] >= 0.1 for r in low),
               "corrections_worse_0.02": sum(r["dice_corrected"] < r["dice"] - 0.02 for r in rows.values()),
               "min_ratio": float(min(r["dice"] / r["oracle"] for r in rows.values())),
               "median_time_s": float(np.median([r["time_s"] for r in rows.values()])),
               "encodes": pred.encoder_calls, "window": list(intensity.value_range or ()),
               "slices": int(len(vol))}
    print(f"{case}: mean Dice {mean['dice']:.3f} oracle {mean['oracle']:.3f} ratio {summary['ratio']:.3f} "
          f"(min {summary['min_ratio']:.2f}), corrected {mean['dice_corrected']:.3f}, "
          f"{pred.encoder_calls} encodes this run", flush=True)
    return {"summary": summary, "structures": rows}


def _summary(rows: dict, extra: dict) -> dict:
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("dice", "oracle", "dice_corrected")}
    low = [r for r in rows.values() if r["dice"] < 0.8 * r["oracle"]]
    return {**extra, **mean, "ratio": mean["dice"] / mean["oracle"],
            "min_ratio": float(min(r["dice"] / r["oracle"] for r in rows.values())),
            "under_0.8x": len(low), "lifted_0.1": sum(r["dice_corrected"] - r["dice"] >= 0.1 for r in low),
            "median_time_s": float(np.median([r["time_s"] for r in rows.values()]))}


def parse_opts(items) -> dict:
    opts = {}
    for item in items or ():
        k, v = item.split("=", 1)
        opts[k] = json.loads(v.replace("True", "true").replace("False", "false"))
    return opts


def table(before_path: str, *after_paths: str) -> None:
    """Print the markdown tables of docs/3d.md from result files (before, then one or more after)."""
    before = json.loads(Path(before_path).read_text())["cases"]
    after = {}
    for p in after_paths:  # a case split over several runs (--only) is merged
        for k, v in json.loads(Path(p).read_text())["cases"].items():
            rows = {**after.get(k, {}).get("structures", {}), **v["structures"]}
            after[k] = {"summary": _summary(rows, v["summary"]), "structures": rows}
    print("| volume | before: Dice / oracle = ratio | after: Dice / oracle = ratio | after, one correction "
          "(under 0.8x: lifted >= +0.1) | walk time (median) | encodes |")
    print("|---|---|---|---|---|---|")
    for case, a in after.items():
        b, sa = before.get(case, {}).get("summary"), a["summary"]
        old = f"{b['dice']:.3f} / {b['oracle']:.3f} = {b['ratio']:.2f}x" if b else "-"
        lifted = f"{sa['lifted_0.1']} of {sa['under_0.8x']}" if "under_0.8x" in sa else "-"
        print(f"| {case} | {old} | {sa['dice']:.3f} / {sa['oracle']:.3f} = **{sa['ratio']:.2f}x** (min "
              f"{sa['min_ratio']:.2f}x) | {sa['dice_corrected']:.3f} ({lifted}) | {sa['median_time_s']:.1f} s | "
              f"{sa['encodes']} of {sa['slices']} slices |")
    print("\n| volume | structure | ref slices | before Dice (x oracle) | after Dice (x oracle) | oracle | "
          "stops (up / down) | corrected at slice: Dice | walk time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, a in after.items():
        for name, r in a["structures"].items():
            rb = before.get(case, {}).get("structures", {}).get(name)
            old = f"{rb['dice']:.3f} ({rb['dice'] / rb['oracle']:.2f}x)" if rb else "-"
            st = " / ".join(f"{s['reason']} @{s['slice']}" for s in (r["stops"]["up"], r["stops"]["down"]))
            lo, hi = r["ref_slices"]
            print(f"| {case} | {name} | {lo}-{hi} | {old} | {r['dice']:.3f} ({r['dice'] / r['oracle']:.2f}x) | "
                  f"{r['oracle']:.3f} | {st} | {r['correction_slice']}: {r['dice_corrected']:.3f} | {r['time_s']:.1f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print docs tables: BEFORE then AFTER file(s)")
    ap.add_argument("--cases", nargs="*", default=list(CASES),
                    help=f"of {', '.join([*CASES, *CHECK_CASES])} (the last two: make_check_volumes.py)")
    ap.add_argument("--pad", type=float, default=3.0, help="box padding in px around the reference")
    ap.add_argument("--key-pad", type=float, default=None,
                    help="the correction's key box padding (default: --pad; 0: a key drawn tighter than the start box)")
    ap.add_argument("--intensity", default="auto", help="Intensity mode made volume-wide (auto, percentile, minmax)")
    ap.add_argument("--cache", default="/tmp/medsam_bench_cache")
    ap.add_argument("--walk", nargs="*", help="walk options key=value (JSON values)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--only", type=int, nargs="*", help="structure label ids to run (default: all)")
    ap.add_argument("--structures", nargs="*", help="structure names to run, e.g. 'cells3d 8' Pallidum_R")
    ap.add_argument("--fix", nargs="*", help="options for the correction walk only (key=value), on top of --walk")
    ap.add_argument("--side-bound", action="store_true",
                    help="also score the correction's side replaced by the oracle / the reference (upper bounds)")
    ap.add_argument("--first-cache", default=None,
                    help="folder: pickle each one-box walk there and reuse it in later runs with the same --walk "
                         "(and the same walk code: empty it after changing the one-box walk)")
    ap.add_argument("--axis", type=int, default=0, choices=(0, 1, 2),
                    help="walk across this axis of each volume (default 0, the axis the defaults were tuned on; "
                         "1 and 2 check them on slices of the other planes)")
    ap.add_argument("--stride", type=int, default=1,
                    help="keep every k-th slice along the walk axis (slice spacing x k): thick-slice scans "
                         "the defaults were not tuned on")
    ap.add_argument("--keys", choices=["ends", "ends-guide", "mid"], default=None,
                    help="a few boxes: the start box plus the reference boxes on the structure's first and last "
                         "slice (ends: the walk bound by them; ends-guide: as the widget's key boxes, not bound) "
                         "or half way to each end (mid)")
    ap.add_argument("--start", choices=["largest", "middle"], default="largest",
                    help="the one box's slice: the structure's largest (the bar's setting) or the middle of its "
                         "slice range (MedSAM's recipe)")
    ap.add_argument("--oracle-from", default=None, help="reuse the oracle Dice of this result file (same window)")
    args = ap.parse_args()
    if args.table:
        return table(*args.table)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    walk_opts = parse_opts(args.walk)
    args.fix_opts = parse_opts(args.fix)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load avg {os.getloadavg()[0]:.1f}; walk options {walk_opts}")
    model = medsam_core.load_model("lite_medsam", device="cpu")
    results = {"machine": cpu_model(), "pad": args.pad, "axis": args.axis, "stride": args.stride, "keys": args.keys,
               "start": args.start, "walk_options": walk_opts,
               "correction_options": args.fix_opts, "cases": {}}
    for case in args.cases:
        print(f"== {case}", flush=True)
        results["cases"][case] = run_case(model, case, args, walk_opts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
