"""``medsam batch``: segment a folder of images from boxes (CSV, napari Shapes CSVs or label images).

    medsam batch --images DIR --out DIR (--boxes CSV|DIR | --boxes-from-labels DIR [--margin PX])
                 [--roi auto|whole|roi] [--overwrite] [model options]

Exit codes: 0 every image done (or skipped because its output exists), 1 some images failed (see
stderr, the summary and DIR/batch_report.json), 2 bad arguments (nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from .cli import add_model_options, load_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="segment every image of a folder from boxes; resumable",
        description="Labels go to OUT/<image stem>.tif (.nii.gz for NIfTI inputs). Images whose output "
        "exists are skipped (resume) unless --overwrite. A failing image is reported and the rest go on.")
    p.add_argument("--images", required=True, help="folder of images (TIFF, NIfTI, .npz, PNG/JPEG)")
    p.add_argument("--out", required=True, help="output folder (created; must not be the images folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--boxes", help="CSV with columns image,x_min,y_min,x_max,y_max[,z]; or a folder of "
                     "<image stem>.csv files (box CSVs or napari Shapes exports)")
    src.add_argument("--boxes-from-labels", metavar="DIR",
                     help="folder of label images paired by file stem: one box per object, ids kept")
    p.add_argument("--margin", type=float, default=0.0, help="grow boxes from labels by this many pixels")
    p.add_argument("--roi", choices=("auto", "whole", "roi"), default="auto",
                   help="crop around boxes too small on the whole image (auto), never (whole) or always (roi)")
    p.add_argument("--overwrite", action="store_true", help="re-segment images whose output exists")
    p.add_argument("--pattern", action="append", default=None,
                   help="only file names matching this glob (repeatable), e.g. '*.tif'")
    add_model_options(p)
    p.add_argument("--intensity", default="auto", help="auto, as_is (8-bit already windowed), percentile, minmax or ct:<window>")
    p.add_argument("--channel", default="auto", help="auto, rgb, mean, max or a channel index")
    p.set_defaults(func=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .batch import REPORT_NAME, segment_folder
    from .segment import parse_channel, parse_intensity

    intensity, channel = parse_intensity(args.intensity), parse_channel(args.channel)
    state: dict = {}

    def on_progress(done: int, total: int, name: str) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc="images", unit="image", disable=None)
        bar.set_postfix_str(name, refresh=False)
        bar.update(done - bar.n)

    def make_predictor():  # called only when an image needs the model: a finished batch loads nothing
        from .predictor import Predictor

        return Predictor(load_from_args(args))

    try:
        report = segment_folder(
            args.images, args.out, boxes=args.boxes, boxes_from_labels=args.boxes_from_labels,
            margin=args.margin, roi=args.roi, predictor=make_predictor, intensity=intensity, channel=channel,
            overwrite=args.overwrite, patterns=args.pattern, on_progress=on_progress)
    finally:
        if state.get("bar") is not None:
            state["bar"].close()
    for r in report.failed:
        print(f"medsam batch: {r.image}: {r.message}", file=sys.stderr)
    print(report.summary().split("\n")[0] + f"; report in {args.out}/{REPORT_NAME}")
    return 0 if report.ok else 1

