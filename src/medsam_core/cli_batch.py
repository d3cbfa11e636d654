"""``medsam batch``: segment a folder of images from boxes (CSV, napari Shapes CSVs or label images).

    medsam batch --images DIR --out DIR (--boxes CSV|DIR | --boxes-from-labels DIR [--margin PX] |
                 --auto [--auto-masks decoder|head]) [--roi auto|whole|roi] [--overwrite]
                 [--workers N | --scheduler ADDRESS] [model options]

--auto takes no boxes: every object of each 2D image comes from the automatic head stored in
--checkpoint (``medsam auto-train`` writes one; autobatch.py); a checkpoint without one is refused
before anything is written (exit 2).

--workers N runs the images on a Dask LocalCluster of N processes on this machine (127.0.0.1);
--scheduler ADDRESS on an existing Dask scheduler (docs/scaling.md). Without either: in this process.

    medsam slide --image SLIDE --boxes CSV|GEOJSON [--out LABELS.zarr] [--geojson OUT.geojson] [--roi ...]

``medsam slide`` segments boxes on one whole slide (pyramidal TIFF/SVS/NDPI or OME-Zarr) without
loading it: labels go chunk by chunk into an NGFF label image (the slide's labels/ for an OME-Zarr,
or --out), optionally also GeoJSON polygons for QuPath (docs/pathology.md).

Exit codes: 0 every image done (or skipped because its output exists), 1 some images failed (see
stderr, the summary and DIR/batch_report.json), 2 bad arguments (nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from . import cli as _cli
from .cli import add_model_options
from .errors import ImageError


def load_from_args(args):
    """``cli.load_from_args``, looked up when called (not bound at import), so one patch of it reaches
    every command, whichever module was imported first."""
    return _cli.load_from_args(args)


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
    src.add_argument("--auto", action="store_true",
                     help="no boxes: segment every object with the automatic head inside --checkpoint "
                     "(train one with medsam auto-train)")
    p.add_argument("--auto-masks", choices=("decoder", "head"), default=None,
                   help="with --auto: masks from the decoder or the head's own (default: what the head was fitted to)")
    p.add_argument("--margin", type=float, default=0.0, help="grow boxes from labels by this many pixels")
    p.add_argument("--roi", choices=("auto", "whole", "roi"), default="auto",
                   help="crop around boxes too small on the whole image (auto), never (whole) or always (roi)")
    p.add_argument("--overwrite", action="store_true", help="re-segment images whose output exists")
    p.add_argument("--pattern", action="append", default=None,
                   help="only file names matching this glob (repeatable), e.g. '*.tif'")
    add_dask_options(p)
    add_model_options(p)
    p.add_argument("--intensity", default="auto", help="auto, as_is (8-bit already windowed), percentile, minmax or ct:<window>")
    p.add_argument("--channel", default="auto", help="auto, rgb, mean, max or a channel index")
    p.set_defaults(func=run_batch)
    register_slide(sub)


def add_dask_options(p) -> None:
    dist = p.add_mutually_exclusive_group()
    dist.add_argument("--workers", type=int, default=None, metavar="N",
                      help="run on a Dask LocalCluster of N worker processes on this machine (needs dask[distributed])")
    dist.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="run on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (docs/scaling.md)")
    p.add_argument("--no-dashboard", action="store_true", help="with --workers: do not serve the Dask dashboard")


def register_slide(sub) -> None:
    p = sub.add_parser(
        "slide", help="segment boxes on one whole slide (pyramidal TIFF/SVS/NDPI, OME-Zarr) without loading it",
        description="Boxes are level-0 pixels. Labels are written chunk by chunk into an OME-Zarr label image: "
        "the slide's labels/NAME for an OME-Zarr slide, or --out LABELS.zarr.")
    p.add_argument("--image", required=True, help="slide: .svs, .ndpi, pyramidal .tif/.ome.tif or an .ome.zarr folder")
    p.add_argument("--boxes", required=True, help="box CSV (x_min,y_min,x_max,y_max) or GeoJSON (feature bounding "
                   "boxes; class names kept)")
    p.add_argument("--out", default=None, help="new .zarr for the labels (default: the OME-Zarr slide's labels/)")
    p.add_argument("--name", default="medsam", help="label image name inside labels/ (default medsam)")
    p.add_argument("--geojson", default=None, help="also write the objects as GeoJSON polygons (QuPath)")
    p.add_argument("--roi", choices=("auto", "whole", "roi"), default="auto")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing label image of that name (kept until the new one is finished) and "
                        "an existing --geojson file")
    add_dask_options(p)  # units = groups of ROI crops owning disjoint label chunks (distributed_slide.py)
    add_model_options(p)
    p.add_argument("--intensity", default="auto", help="auto, as_is, percentile, minmax or ct:<window>")
    p.add_argument("--channel", default="auto", help="auto, rgb, mean, max or a channel index")
    p.set_defaults(func=run_slide)


def run_slide(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .predictor import Predictor
    from .segment import parse_channel, parse_intensity
    from .slide import boxes_from_geojson, segment_slide

    classes: dict[int, str] = {}
    if args.boxes.lower().endswith((".geojson", ".json")):
        boxes, classes = boxes_from_geojson(args.boxes)
    else:
        boxes = _slide_rows(args.boxes, args.image)
    bar = tqdm(total=None, desc="crops", unit="crop", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    if args.workers is not None or args.scheduler is not None:
        bar.close()
        return _run_slide_distributed(args, boxes, classes)
    try:
        result = segment_slide(Predictor(load_from_args(args)), args.image, boxes, out=args.out, name=args.name,
                               roi_mode=args.roi, intensity=parse_intensity(args.intensity),
                               channel=parse_channel(args.channel), geojson=args.geojson, classes=classes,
                               overwrite=args.overwrite, progress=progress, boxes_source=args.boxes)
    finally:
        bar.close()
    print(f"medsam slide: {len(result.objects)} objects from {result.encodes} crop(s) in {result.seconds:.1f} s; "
          f"labels in {result.labels}" + (f"; GeoJSON {result.geojson}" if result.geojson else ""))
    return 0


def _slide_rows(path: str, image: str):
    """Boxes of a CSV for one slide: all its rows, or, where it has an ``image`` column (a batch's
    boxes file), the rows that name this slide (by file name or stem)."""
    import csv

    from .boxsources import read_table
    from .errors import PromptError
    from .segment import read_boxes_csv
    from .series import split_name

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip().lower() for h in reader.fieldnames or []]
        if "image" not in header:
            return read_boxes_csv(path)[0]
        column = reader.fieldnames[header.index("image")]
        named = {(row.get(column) or "").strip() for row in reader}
    me = Path(image).name
    if not named & {me, split_name(Path(image))[0]}:
        raise PromptError(f"no row of {Path(path).name} names this slide ({me}); its image column names "
                          f"{', '.join(sorted(named)[:5])}")
    return read_table(path, [me], skipped=sorted(named - {me, split_name(Path(image))[0]}))[me][0]


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
                  on_progress=on_progress, auto=args.auto, auto_masks=args.auto_masks)
    if args.auto_masks and not args.auto:
        raise ImageError("--auto-masks goes with --auto")
    if args.auto:  # before anything is written or a cluster starts (in-process the model loads lazily)
        from .autobatch import check_checkpoint_has_head

        check_checkpoint_has_head(args.checkpoint)
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
    from .batch import segment_folder

    with dask_client(args, "medsam batch") as client:
        return segment_folder(args.images, args.out, client=client, model=args.model,
                              checkpoint=args.checkpoint, device=args.device, **common)


def _run_slide_distributed(args: argparse.Namespace, boxes, classes: dict) -> int:
    """``medsam slide --workers N | --scheduler ADDRESS``: crop groups on Dask, labels chunk-wise."""
    from .distributed_slide import segment_slide_distributed
    from .geojson import write_geojson
    from .ngff import open_ngff
    from .segment import parse_channel, parse_intensity
    from .slide import check_geojson_out
    from .wsi import is_pyramid_path

    if not is_pyramid_path(args.image):
        raise ImageError(f"{args.image} is not a whole slide (pyramidal TIFF/SVS/NDPI or OME-Zarr)")
    if args.geojson:  # as in-process: never the boxes' own file, an existing one only with --overwrite
        check_geojson_out(args.geojson, args.overwrite, inputs=(args.image, args.boxes))
    out = args.image if args.out is None else args.out  # checked before any work (slide.labels_destination)
    from tqdm.auto import tqdm

    with dask_client(args, "medsam slide") as client, tqdm(desc="units", unit="unit", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = segment_slide_distributed(client, args.image, boxes, out, name=args.name,
                                           intensity=parse_intensity(args.intensity),
                                           channel=parse_channel(args.channel), model=args.model,
                                           checkpoint=args.checkpoint, device=args.device, overwrite=args.overwrite,
                                           on_progress=progress)
    if args.geojson:
        write_geojson(args.geojson, open_ngff(result["labels"]).levels[0], classes)
    print(f"medsam slide: {result['boxes']} boxes in {result['units']} Dask unit(s) in {result['seconds']:.1f} s; "
          f"labels in {result['labels']}" + (f"; GeoJSON {args.geojson}" if args.geojson else ""))
    return 0


@contextmanager
def dask_client(args: argparse.Namespace, prog: str):
    """A Dask client from ``--scheduler ADDRESS`` (closed after) or ``--workers N`` (a LocalCluster on
    127.0.0.1, shut down after); prints the worker count and the dashboard link."""
    import importlib.util

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
            print(f"{prog}: no Dask dashboard (pip install bokeh to get one)", file=sys.stderr)
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"{prog}: Dask, {workers} worker(s)" + (f"; dashboard {link}" if link else ""), file=sys.stderr)
        try:
            yield client
        finally:
            if args.scheduler is not None:
                client.close()
