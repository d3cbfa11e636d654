"""``medsam auto`` (segment every object of every image in a folder) and ``medsam auto-train``.

    medsam auto-train --images DIR --labels DIR --out CKPT.pt [--checkpoint BASE.pt] [--partial]
    medsam auto --images DIR --out DIR [--checkpoint CKPT.pt] [--decoder-masks | --head-masks]

``auto-train`` trains the automatic head (``autohead``) on image/label pairs with the same file
names, guarded like ``medsam train`` (held-out objects; refused -> exit 3, nothing written, unless
``--force``), and writes the model's checkpoint with the head inside (extra "auto_head"). Label
images are taken as complete (every object labelled) unless ``--partial``: then unlabelled pixels
count as background only near the labelled objects. ``auto`` is ``medsam batch --auto``: ``<stem>.tif``
instance labels in ``--out`` for every 2D image of ``--images`` (resumable, with a report); a
checkpoint without a head is an error that says how to make one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import MedSAMError

EXIT_REFUSED = 3


def register(sub) -> None:
    from .cli import add_model_options

    p = sub.add_parser("auto", help="segment every object of each image in a folder with the automatic head",
                       description=__doc__.split("\n\n")[2])
    p.add_argument("--images", required=True, help="folder of 2D images (TIFF, NIfTI, npz, PNG)")
    p.add_argument("--out", required=True, help="folder for the labels (<image stem>.tif; created if needed)")
    add_model_options(p)
    masks = p.add_mutually_exclusive_group()
    masks.add_argument("--decoder-masks", dest="refine", action="store_const", const="decoder",
                       help="masks from the decoder (boxes of the head's instances)")
    masks.add_argument("--head-masks", dest="refine", action="store_const", const="head",
                       help="the head's own instance masks (no decoder)")
    p.add_argument("--overwrite", action="store_true",
                   help="segment images whose labels exist already (e.g. with a retrained head); default: skip them")
    p.set_defaults(func=run_auto, refine=None)

    t = sub.add_parser("auto-train", help="train the automatic head on labelled images; write a checkpoint with it")
    t.add_argument("--images", required=True, help="folder of images")
    t.add_argument("--labels", required=True, help="folder of instance label images with the same file names")
    t.add_argument("--out", required=True, help="checkpoint to write (.pt or .pth)")
    add_model_options(t)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--holdout", type=float, default=0.2, help="share of objects held out for the guard")
    t.add_argument("--partial", action="store_true", help="label images are incomplete (see the module help)")
    t.add_argument("--max-seconds", type=float, default=None, help="stop training after this long")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="write the checkpoint even if the guard refuses the head")
    t.set_defaults(func=run_auto_train)


def run_auto(args: argparse.Namespace) -> int:
    """``medsam auto``: ``medsam batch --auto`` under its own name (``batch.segment_folder(auto=True)``):
    the same outputs (``<stem>.tif``; ``.nii.gz`` for NIfTI inputs), resume, report, Ctrl-C and
    per-image failures (a 3D volume or a slide fails alone, with its reason)."""
    from ._paths import check_output_dir
    from .autobatch import no_head_error
    from .autoguard import head_from_model
    from .batch import REPORT_NAME, segment_folder
    from .cli import load_from_args, tqdm_progress
    from .predictor import Predictor

    images = Path(args.images).expanduser()
    if not images.is_dir():
        raise MedSAMError(f"--images {images} is not a folder")
    check_output_dir(args.out, inputs=[images], what="output folder")  # before the model loads
    model = load_from_args(args)
    if head_from_model(model) is None:  # before anything is written
        raise no_head_error(args.checkpoint or "the bundled model")
    update, close = tqdm_progress("images")
    try:
        report = segment_folder(images, args.out, predictor=Predictor(model), auto=True, auto_masks=args.refine,
                                overwrite=args.overwrite, on_progress=lambda done, total, _name: update(done, total))
    finally:
        close()
    for r in report.results:
        if r.status == "failed":
            print(f"medsam auto: {r.image}: {r.message}", file=sys.stderr)
        elif r.status == "done":
            print(f"{r.image}: {r.objects} objects -> {r.output}", flush=True)
    print(report.summary().split("\n")[0] + f"; report in {args.out}/{REPORT_NAME}")
    return 0 if report.ok else 1


def run_auto_train(args: argparse.Namespace) -> int:
    from .autoguard import HeadSession, save_with_model
    from .autohead import HeadConfig
    from .cli import check_output, load_from_args, tqdm_progress
    from .data import read_folder_pairs
    from .predictor import Predictor

    inputs = [args.checkpoint] + [p for d in (args.images, args.labels) if Path(d).expanduser().is_dir()
                                  for p in Path(d).expanduser().iterdir() if p.is_file()]
    out = check_output(args.out, (".pt", ".pth"), "checkpoint", inputs=inputs)
    config = HeadConfig(epochs=args.epochs, holdout=args.holdout, seed=args.seed,
                        max_seconds=args.max_seconds).validate()
    pairs = read_folder_pairs(args.images, args.labels)
    images = [img for img, _ in pairs]
    labels = [np.asarray(lab).astype(np.int32) for _, lab in pairs]
    known = None if args.partial else [np.ones(lab.shape, bool) for lab in labels]
    model = load_from_args(args)
    predictor = Predictor(model)
    n = sum(len(np.unique(lab)) - 1 for lab in labels)
    print(f"training the automatic head on {n} objects in {len(images)} image(s)", flush=True)
    session = HeadSession()
    update, close = tqdm_progress("epochs")
    gen = session.run_round(predictor, images, labels, known, config, force=args.force)
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                rnd = stop.value
                break
            if step.stage == "train":
                update(step.done, step.total)
    finally:
        close()
    print(f"held-out F1 {rnd.f1:.3f} (Dice {rnd.dice:.3f}) vs threshold detector F1 {rnd.f1_active:.3f} "
          f"(Dice {rnd.dice_active:.3f}) on {rnd.meta['heldout_objects']} held-out objects, head worse in "
          f"{rnd.meta['p_worse']:.0%} of resamples; {rnd.fit.epochs_run} epochs, {rnd.fit.seconds:.0f} s; "
          f"masks: {rnd.head.post.refine}")
    if not rnd.accepted:
        why = " (the head finds none of the held-out objects)" if rnd.meta.get("finds_none") else ""
        print(f"guard: refused{why}, no checkpoint written (use --force to write {out} anyway)", file=sys.stderr)
        return EXIT_REFUSED
    save_with_model(out, model, rnd.head)
    print(f"guard: {'forced' if rnd.forced else 'accepted'}; wrote {out} (medsam auto --checkpoint {out} ...)")
    return 0
