"""Automatic segmentation after N labelled objects: learned head vs threshold detector vs no training.

dsb2018 (512 x 512 fluorescence nuclei, 125 objects) cut into quadrants (256 x 256): quadrants 0-2
are where the person labels, quadrant 3 (29 nuclei) is held out and never labelled. The person
labels N objects (30, 90) working outward from the top-left corner of quadrant 0, then 1, then 2
(nearest first), so the labelled objects form contiguous areas and the rest of the pool stays
unlabelled (the head learns background only in the known region around them).

Methods, all with the bundled LiteMedSAM decoder (no decoder fine-tuning here):

* ``bundled``: the threshold detector with default settings (no training) -> decoder;
* ``threshold``: ``auto.fit_auto`` fitted on the labelled areas (crops to the known region);
* ``head``: ``autoguard.HeadSession.run_round`` (20 % of the labelled objects held out by the
  guard; post-processing and decoder-vs-head masks fitted on the rest), then segment everything.
  The guard decides (``guard.accepted``); ``--force`` keeps a refused head all the same (the
  scores are always of the trained head, so a refusal shows what the guard kept out).

Cases: ``dsb`` (as is), ``dsb-inverted`` (65535 - image: dark nuclei on a bright background, where
a brightness threshold finds the background) and ``cells3d`` (confocal nuclei, 60 x 256 x 256:
the person labels the left halves (x < 128) of slices z = 20, 23, ..., 50, nearest the top-left
first; the test set is the right halves of z = 25, 30, 35, 40, 45; the same ~20 nuclei appear
in many slices, so 90 labelled sections are about 10 distinct nuclei). Scores pooled over the test
images: F1 at mask IoU 0.5 and mean Dice of matched objects. Timing: head training on 90 objects
(encodes of the 4 views included), "segment everything" on the whole 512 px image after its
encode (head only and with the decoder).

    .venv/bin/python benchmarks/bench_automatic.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"
CELLS3D = REPO.parent / "shared" / "data" / "confocal3d_nuclei_cells3d.npz"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def quadrants(a: np.ndarray) -> list[np.ndarray]:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return [a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:]]


def person_order(labels: list[np.ndarray]) -> list[tuple[int, int]]:
    """(image, label id) in the order a person works: image by image, nearest the top-left first."""
    from scipy import ndimage

    out = []
    for k, lab in enumerate(labels):
        ids = [i for i in np.unique(lab) if i]
        cents = ndimage.center_of_mass(np.ones_like(lab), lab, ids)
        out += [(k, int(i)) for _, i in sorted(zip([np.hypot(*c) for c in cents], ids, strict=True))]
    return out


def labelled(labels: list[np.ndarray], order, n: int) -> list[np.ndarray]:
    chosen = order[:n]
    return [np.where(np.isin(lab, [i for k2, i in chosen if k2 == k]), lab, 0) for k, lab in enumerate(labels)]


def pooled(proposer, tests) -> dict:
    """Match each test image's proposals; counts summed, Dice averaged over matched objects."""
    from medsam_core.auto import match

    rs = [match(proposer(img).masks, lab) for img, lab in tests]
    tp, n_pred, n_ref = (sum(getattr(r, k) for r in rs) for k in ("matched", "n_pred", "n_ref"))
    dice = sum(r.mean_dice * r.matched for r in rs if r.matched) / tp if tp else float("nan")
    return {"n_pred": n_pred, "n_ref": n_ref, "matched": tp, "recall": tp / n_ref if n_ref else 0.0,
            "precision": tp / n_pred if n_pred else 0.0,
            "f1": 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 0.0, "mean_dice": dice}


def run_case(predictor, images, labels, tests, counts, epochs: int, force: bool) -> dict:
    from medsam_core.auto import AutoModel, fit_auto
    from medsam_core.autoguard import HeadSession, with_post
    from medsam_core.autohead import HeadConfig, known_region
    from medsam_core.autoseg import segment_everything

    order = person_order(labels)
    out = {"bundled": pooled(lambda img: AutoModel().propose(predictor, img), tests)}
    for n in counts:
        part = labelled(labels, order, n)
        keep = [k for k, lab in enumerate(part) if lab.any()]
        known = [known_region(part[k]) for k in keep]
        crops = []
        for k, kn in zip(keep, known, strict=True):
            ys, xs = np.nonzero(kn)
            sl = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
            crops.append((images[k][sl], part[k][sl]))
        thr = fit_auto(predictor, [c[0] for c in crops], [c[1] for c in crops])
        res = {"threshold": pooled(lambda img, thr=thr: thr.propose(predictor, img), tests)}
        session = HeadSession()
        t0 = time.perf_counter()
        gen = session.run_round(predictor, [images[k] for k in keep], [part[k] for k in keep], known,
                                HeadConfig(epochs=epochs), force=force)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                rnd = stop.value
                break
        res["train_s"] = time.perf_counter() - t0
        res["guard"] = {k: rnd.meta[k] for k in ("heldout_f1", "heldout_dice", "active_f1", "active_dice",
                                                 "accepted", "forced")}
        res["post"] = dict(vars(rnd.head.post))
        res["head"] = pooled(lambda img, h=rnd.head: segment_everything(predictor, h, img), tests)
        for refine in ("head", "decoder"):
            h = with_post(rnd.head, refine=refine)
            res[f"head_{refine}_masks"] = pooled(lambda img, h=h: segment_everything(predictor, h, img), tests)
        out[str(n)] = res
        out[f"head_{n}"] = rnd.head
        print(n, {k: (v["f1"], round(v["mean_dice"], 3)) for k, v in res.items() if isinstance(v, dict) and "f1" in v},
              f"train {res['train_s']:.0f} s", "guard", res["guard"], flush=True)
    return out


def load_case(case: str):
    """-> (labelled-pool images, their labels, [(test image, test labels)], image for timing or None)."""
    if case == "cells3d":
        d = np.load(CELLS3D)
        vol, lab = d["image"], d["labels"].astype(np.int32)
        pool = list(range(20, 51, 3))
        return ([vol[z][:, :128] for z in pool], [lab[z][:, :128] for z in pool],
                [(vol[z][:, 128:], lab[z][:, 128:]) for z in (25, 30, 35, 40, 45)], None)
    d = np.load(DATA)
    image, labels = d["image"], d["labels"].astype(np.int32)
    img = image if case == "dsb" else (image.max() - image).astype(image.dtype)
    qi, ql = quadrants(img), quadrants(labels)
    return qi[:3], ql[:3], [(qi[3], ql[3])], img if case == "dsb" else None


def time_everything(predictor, head, image) -> dict:
    from medsam_core.autoguard import with_post
    from medsam_core.autoseg import segment_everything

    t = time.perf_counter()
    predictor.set_image(image)
    out = {"encode_s": time.perf_counter() - t}
    for refine in ("head", "decoder"):
        t = time.perf_counter()
        props = segment_everything(predictor, with_post(head, refine=refine), image)
        out[f"everything_{refine}_s"] = time.perf_counter() - t
        out[f"objects_{refine}"] = len(props.masks)
    return out


def main(argv=None) -> int:
    import os

    from _machine import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="30,90")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--cases", default="dsb,dsb-inverted,cells3d")
    p.add_argument("--force", action="store_true", help="keep a head the guard refused (scores are the head's anyway)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="automatic.json")
    args = p.parse_args(argv)
    from medsam_core import Predictor, load_model

    predictor = Predictor(load_model("lite_medsam"))
    counts = [int(c) for c in args.counts.split(",")]
    result = {"machine": {"cpu": cpu_model(), "load_before": os.getloadavg()}, "counts": counts}
    t_all = time.perf_counter()
    for case in args.cases.split(","):
        images, labels, tests, timing_image = load_case(case)
        print(case, flush=True)
        res = run_case(predictor, images, labels, tests, counts, args.epochs, args.force)
        heads = {k: res.pop(k) for k in list(res) if k.startswith("head_") and not k.endswith("_masks")}
        if timing_image is not None and f"head_{max(counts)}" in heads:
            res["timing_512"] = time_everything(predictor, heads[f"head_{max(counts)}"], timing_image)
            print("timing", res["timing_512"], flush=True)
        result[case] = res
    result["machine"]["load_after"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t_all
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / args.name).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
