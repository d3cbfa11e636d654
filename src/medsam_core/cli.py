"""The ``medsam`` command: segment images from box CSVs, show the setup, run the demo.

    medsam segment IMAGE --boxes BOXES.csv --out LABELS.tif|.nii.gz [--overlay OUT.png]
    medsam info
    medsam demo [--out DIR]

Errors that are the user's to fix (MedSAMError) print ``medsam: error: <message>`` on stderr and
exit with code 2, without a traceback and without writing any output file.

Adding a subcommand: write a module with ``register(subparsers)`` that calls
``subparsers.add_parser(...)`` and ``parser.set_defaults(func=handler)`` where ``handler(args)``
returns the exit code, then add the module's name to ``SUBCOMMAND_MODULES``. A listed module
that is missing is skipped, so the list may name modules still being written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ImageError, MedSAMError

#: Modules providing ``register(subparsers)``, in the order their commands appear in --help.
SUBCOMMAND_MODULES: list[str] = [
    "medsam_core.cli_train", "medsam_core.cli_batch", "medsam_core.cli_export", "medsam_core.cli_auto",
]

LABEL_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz")


# -- shared options and helpers -------------------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --device: shared by every subcommand that loads a model."""
    p.add_argument("--model", default="lite_medsam", help="registry name (default: lite_medsam, bundled)")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the bundled LiteMedSAM weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: automatic)")


def load_from_args(args: argparse.Namespace):
    from .checkpoint import load_model

    return load_model(args.model, checkpoint=args.checkpoint, device=args.device)


def check_output(path: str | Path, suffixes: tuple[str, ...], what: str, inputs=()) -> Path:
    """Fail before any model work if an output path cannot be written safely (see _paths.py):
    wrong ending, a folder, read-only, no folder, or one of ``inputs`` (also via a link)."""
    from ._paths import check_output as check

    return check(path, inputs=inputs, suffixes=suffixes, what=what)


def tqdm_progress(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A (done, total) callback driving a tqdm bar on stderr (silent when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="step", disable=None, leave=False)
        bar.update(done - bar.n)

    def close() -> None:
        if state.get("bar") is not None:
            state["bar"].close()

    return update, close


# -- segment ------------------------------------------------------------------------------------
def register_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment an image from a CSV of boxes into an instance-label file",
                       description="One instance id per box in box order (box i -> id i+1); where boxes "
                       "overlap, a later box only fills background pixels.")
    p.add_argument("image", help="TIFF, NIfTI (.nii/.nii.gz), .npz or PNG/JPEG image")
    p.add_argument("--boxes", required=True, help="CSV with header x_min,y_min,x_max,y_max[,z] (z: slice of 3D)")
    p.add_argument("--out", required=True, help="labels file: .tif/.tiff or .nii/.nii.gz")
    add_model_options(p)
    p.add_argument("--intensity", default="auto",
                   help="auto (0.5-99.5 percentile clip, as in training), as_is (8-bit data already windowed), "
                   "percentile, minmax or ct:<window> (e.g. ct:lung)")
    p.add_argument("--channel", default="auto", help="auto, rgb, mean, max or a channel index")
    p.add_argument("--roi", choices=("auto", "roi", "whole"), default="auto",
                   help="zoom: encode a crop around boxes too small on the whole image (auto), around every "
                   "box (roi) or never (whole)")
    p.add_argument("--no-clip-to-box", dest="clip_to_box", action="store_false",
                   help="keep mask pixels farther outside their box than the training box margin")
    p.add_argument("--overlay", default=None, help="also write a PNG picture of outlines and boxes")
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from ._atomic import clean_stale_tmp
    from ._paths import check_distinct
    from .io import read_image, write_labels
    from .overlay import render_overlay, save_png
    from .predictor import Predictor
    from .segment import check_boxes_for_image, parse_channel, parse_intensity, read_boxes_csv, segment_boxes

    inputs = (args.image, args.boxes, args.checkpoint)
    out = check_output(args.out, LABEL_SUFFIXES, "labels file", inputs)
    overlay = check_output(args.overlay, (".png",), "overlay file", inputs) if args.overlay else None
    check_distinct({"labels file": out, "overlay file": overlay})
    intensity, channel = parse_intensity(args.intensity), parse_channel(args.channel)
    image, meta = read_image(args.image)
    boxes, z = read_boxes_csv(args.boxes)
    if any(a not in "ZYXC" for a in meta.axes):
        raise ImageError(f"{args.image} has axes {meta.axes}; segment takes (Y, X[, C]) or (Z, Y, X[, C]) images")
    check_boxes_for_image(boxes, z, meta.shape)
    predictor = Predictor(load_from_args(args))
    update, close = tqdm_progress("slices" if z is not None else "encodes")
    try:
        labels = segment_boxes(predictor, image, boxes, z, intensity=intensity, channel=channel, progress=update,
                               roi=args.roi, clip_to_box=args.clip_to_box)
    finally:
        close()
    picture = None
    if overlay is not None:
        zi = None if z is None else int(np.bincount(z).argmax())  # the slice with the most boxes
        sel = slice(None) if z is None else z == zi
        picture = render_overlay(image if zi is None else image[zi], labels if zi is None else labels[zi],
                                 boxes[sel])
    clean_stale_tmp(out.parent)  # temp files a killed earlier run left behind (ours only, old)
    write_labels(out, labels, meta)
    if picture is not None:
        save_png(overlay, picture)
    found = len(np.unique(labels)) - 1
    print(f"{len(boxes)} boxes -> {found} objects written to {out}" + (f"; overlay {overlay}" if overlay else ""))
    note_background_engine(predictor)
    return 0


def note_background_engine(predictor) -> None:
    """Tell the user (stderr) when this run ended before the fast encoder was ready."""
    state = getattr(predictor, "encoder_state", None)  # a stand-in predictor may not have it
    if state is not None and state() == "pending":
        print("note: the fast CPU encoder (OpenVINO) is being built in the background, once for these "
              "weights (about a minute); later runs use it. 'medsam export' builds it in the foreground.",
              file=sys.stderr)


# -- info ---------------------------------------------------------------------------------------
def register_info(sub) -> None:
    p = sub.add_parser("info", help="print the model, its weights hash, the device and versions")
    add_model_options(p)
    p.set_defaults(func=run_info)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-medsam")
    except PackageNotFoundError:
        from napari_medsam import __version__

        return __version__


def run_info(args: argparse.Namespace) -> int:
    import torch

    model = load_from_args(args)
    device = next(model.parameters()).device
    lines = [
        ("model", f"{model.spec.name}: {model.spec.description}"),
        *_checkpoint_lines(model, getattr(args, "checkpoint", None)),
        ("weights", str(model.weights_path)),
        ("sha256", str(model.weights_sha256)),
        ("device", str(device)),
        ("napari-medsam", package_version()),
        ("torch", torch.__version__),
        ("numpy", np.__version__),
        ("python", sys.version.split()[0]),
    ]
    for key, value in lines:
        print(f"{key + ':':15s}{value}")
    return 0


def _checkpoint_lines(model, checkpoint) -> list[tuple[str, str]]:
    """What a checkpoint file says about itself, so `info` does not present a fine-tune as the
    bundled weights only (the model line is the architecture's description)."""
    if not checkpoint:
        return []
    meta = getattr(model, "meta", None) or {}
    said = [f"{k} {meta[k]}" for k in ("mode", "round", "epochs") if meta.get(k) is not None]
    for key, label in (("dice_after", "held-out Dice"), ("date", "written")):
        if meta.get(key) is not None:
            value = meta[key]
            said.append(f"{label} {value:.3f}" if isinstance(value, float) else f"{label} {value}")
    what = "fine-tuned: " + ", ".join(said) if said else "a checkpoint file without napari-medsam metadata"
    return [("checkpoint", what)]


# -- demo ---------------------------------------------------------------------------------------
def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="segment the shipped nuclei sample from its boxes; write labels and a PNG")
    p.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out, created if needed)")
    add_model_options(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ._paths import check_output_dir
    from .io import write_labels
    from .metrics import dice, nsd
    from .overlay import render_overlay, save_png
    from .predictor import Predictor
    from .samples import nuclei
    from .segment import segment_boxes

    sample = nuclei()
    out = check_output_dir(args.out, what="demo output folder")
    for name in ("labels.tif", "overlay.png"):
        if (out / name).exists():
            check_output(out / name, (name[-4:],), name, inputs=(args.checkpoint,))
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(load_from_args(args))
    labels = segment_boxes(predictor, sample.image, sample.boxes)
    ids = range(1, len(sample.boxes) + 1)
    dices = [dice(labels == i, sample.labels == i) for i in ids]
    nsds = [nsd(labels == i, sample.labels == i, tolerance=2.0) for i in ids]
    picture = render_overlay(sample.image, labels, sample.boxes)
    write_labels(out / "labels.tif", labels)
    save_png(out / "overlay.png", picture)
    print(f"sample: {sample.image_path.name} {sample.image.shape}, {len(sample.boxes)} boxes")
    print(f"wrote {out / 'labels.tif'} and {out / 'overlay.png'}")
    print(f"mean Dice {np.mean(dices):.3f}  mean NSD (2 px) {np.mean(nsds):.3f}  against the reference labels")
    note_background_engine(predictor)
    return 0


# -- parser and entry point -----------------------------------------------------------------------
CORE_SUBCOMMANDS: list[Callable] = [register_segment, register_info, register_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam", description="Box-prompt segmentation with MedSAM-family models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in CORE_SUBCOMMANDS:
        register(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written (yet); a broken import inside it still raises
                continue
            raise
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a cluster's wall-time limit, ``docker stop``) while a command
    runs: raised where the process is, so it stops as on Ctrl-C (a batch writes its report, temp
    files go) instead of dying with nothing said."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the ``medsam`` command; returns the exit code (0 ok, 2 bad input, 130 interrupted,
    143 terminated)."""
    args = build_parser().parse_args(argv)
    import signal
    import threading

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return _run(args)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from .runtime import tune_malloc

    tune_malloc()  # the application opts in; see runtime.py
    import warnings

    # Warnings are notes to the user here, not source locations.
    warnings.formatwarning = lambda message, category, *rest: f"medsam: note: {message}\n"
    try:
        return int(args.func(args) or 0)
    except MedSAMError as exc:
        print(f"medsam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("medsam: terminated" if isinstance(exc, Terminated) else "medsam: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:
        print(f"medsam: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
