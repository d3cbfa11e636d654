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

Cases: ``dsb`` (as is) and ``dsb-inverted`` (65535 - image: dark nuclei on a bright background, where
a brightness threshold finds the background). Scores on quadrant 3: F1 at mask IoU 0.5 and mean
Dice of matched objects. Timing: head training on 90 objects (encodes of the 4 views included),
"segment everything" on the whole 512 px image after its encode (head only and with the decoder).

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


def run_case(predictor, images, labels, test_image, test_labels, counts, epochs: int) -> dict:
    from medsam_core.auto import AutoModel, fit_auto, match
    from medsam_core.autoguard import HeadSession
    from medsam_core.autohead import HeadConfig, known_region
    from medsam_core.autoseg import segment_everything

    order = person_order(labels)
    out = {"bundled": match(AutoModel().propose(predictor, test_image).masks, test_labels).to_dict()}
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
        res = {"threshold": match(thr.propose(predictor, test_image).masks, test_labels).to_dict()}
        session = HeadSession()
        t0 = time.perf_counter()
        gen = session.run_round(predictor, [images[k] for k in keep], [part[k] for k in keep], known,
                                HeadConfig(epochs=epochs), force=True)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                rnd = stop.value
                break
        res["train_s"] = time.perf_counter() - t0
        res["guard"] = {k: rnd.meta[k] for k in ("heldout_f1", "heldout_dice", "active_f1", "active_dice", "forced")}
        res["post"] = dict(vars(rnd.head.post))
        props = segment_everything(predictor, rnd.head, test_image)
        res["head"] = match(props.masks, test_labels).to_dict()
        for refine in ("head", "decoder"):
            from medsam_core.autoguard import with_post

            res[f"head_{refine}_masks"] = match(segment_everything(predictor, with_post(rnd.head, refine=refine),
                                                                   test_image).masks, test_labels).to_dict()
        out[str(n)] = res
        out[f"head_{n}"] = rnd.head
        print(n, {k: (v["f1"], round(v["mean_dice"], 3)) for k, v in res.items() if isinstance(v, dict) and "f1" in v},
              f"train {res['train_s']:.0f} s", flush=True)
    return out


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
    p.add_argument("--cases", default="dsb,dsb-inverted")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    from medsam_core import Predictor, load_model

    d = np.load(DATA)
    image, labels = d["image"], d["labels"].astype(np.int32)
    predictor = Predictor(load_model("lite_medsam"))
    counts = [int(c) for c in args.counts.split(",")]
    result = {"machine": {"cpu": cpu_model(), "load_before": os.getloadavg()}, "counts": counts}
    t_all = time.perf_counter()
    for case in args.cases.split(","):
        img = image if case == "dsb" else (image.max() - image).astype(image.dtype)
        qi, ql = quadrants(img), quadrants(labels)
        print(case, flush=True)
        res = run_case(predictor, qi[:3], ql[:3], qi[3], ql[3], counts, args.epochs)
        heads = {k: res.pop(k) for k in list(res) if k.startswith("head_")}
        if case == "dsb" and f"head_{max(counts)}" in heads:
            res["timing_512"] = time_everything(predictor, heads[f"head_{max(counts)}"], img)
            print("timing", res["timing_512"], flush=True)
        result[case] = res
    result["machine"]["load_after"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t_all
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "automatic.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
