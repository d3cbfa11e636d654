"""``medsam batch``: segment a folder of images from boxes (CSV, napari Shapes CSVs or label images).

    medsam batch --images DIR --out DIR (--boxes CSV|DIR | --boxes-from-labels DIR [--margin PX])
                 [--roi auto|whole|roi] [--overwrite] [--workers N | --scheduler ADDRESS] [model options]

--workers N runs the images on a Dask LocalCluster of N processes on this machine (127.0.0.1);
--scheduler ADDRESS on an existing Dask scheduler (docs/scaling.md). Without either: in this process.

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
    dist = p.add_mutually_exclusive_group()
    dist.add_argument("--workers", type=int, default=None, metavar="N",
                      help="run on a Dask LocalCluster of N worker processes on this machine (needs dask[distributed])")
    dist.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (docs/scaling.md)")
    p.add_argument("--no-dashboard", action="store_true", help="with --workers: do not serve the Dask dashboard")
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

    common = dict(boxes=args.boxes, boxes_from_labels=args.boxes_from_labels, margin=args.margin, roi=args.roi,
                  intensity=intensity, channel=channel, overwrite=args.overwrite, patterns=args.pattern,
                  on_progress=on_progress)
    try:
        if args.workers is None and args.scheduler is None:
            report = segment_folder(args.images, args.out, predictor=make_predictor, **common)
        else:
            report = _run_distributed(args, common)
    finally:
        if state.get("bar") is not None:
            state["bar"].close()
    for r in report.results:
        if r.status == "failed" or r.retries:  # what failed and why; what a dead worker made us redo
            print(f"medsam batch: {r.image}: {r.message}", file=sys.stderr)
    print(report.summary().split("\n")[0] + f"; report in {args.out}/{REPORT_NAME}")
    return 0 if report.ok else 1



def _run_distributed(args: argparse.Namespace, common: dict):
    """The same batch on Dask: workers load the model themselves (path + sha256), see distributed.py."""
    import importlib.util

    from .batch import segment_folder
    from .errors import MedSAMError

    if importlib.util.find_spec("distributed") is None:
        raise MedSAMError("--workers/--scheduler need Dask distributed: pip install 'napari-medsam[distributed]'")
    from contextlib import nullcontext

    from dask.distributed import Client

    from .distributed import dashboard_available, local_client

    if args.scheduler is not None:
        try:
            ctx = nullcontext(Client(args.scheduler, timeout="20s"))
        except OSError as exc:
            raise MedSAMError(f"cannot reach the Dask scheduler {args.scheduler}: {exc}") from None
    else:
        ctx = local_client(args.workers, dashboard=not args.no_dashboard and dashboard_available())
    with ctx as client:
        link = None if args.no_dashboard else client.dashboard_link
        if link and args.workers is not None and not dashboard_available():
            link = None
            print("medsam batch: no Dask dashboard (pip install bokeh to get one)", file=sys.stderr)
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"medsam batch: Dask, {workers} worker(s)" + (f"; dashboard {link}" if link else ""), file=sys.stderr)
        try:
            return segment_folder(args.images, args.out, client=client, model=args.model,
                                  checkpoint=args.checkpoint, device=args.device, **common)
        finally:
            if args.scheduler is not None:
                client.close()
