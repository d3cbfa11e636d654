"""Segment a folder of images from boxes: the job behind ``medsam batch``, callable from scripts.

    from medsam_core.batch import segment_folder
    report = segment_folder("images/", "labels/", boxes="boxes.csv")
    print(report.summary())

Boxes come from one CSV with an ``image`` column, a folder of per-image CSVs or napari Shapes
exports, or a folder of label images (see boxsources.py). Each image's labels go to
``out/<stem>.tif`` (``.nii.gz`` for NIfTI inputs, with the input's affine), written atomically,
so an existing output is always complete: a second run skips it (resume) unless ``overwrite``.
A failure on one image (corrupt file, bad boxes) is recorded and the others go on; the report
is also written to ``out/batch_report.json``. Every slice goes through roi.predict_boxes (the one
entry point: whole image, or an ROI crop for small boxes, see ``roi``): 2D images via
roi.segment_large, 3D volumes via segment.segment_boxes.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import clean_stale_tmp, write_text_atomic
from ._paths import check_not_input, check_output_dir
from .boxsources import boxes_from_labels, find_paired, read_any_boxes, read_table
from .cancel import check_cancel
from .errors import CancelledError, CheckpointError, ImageError, ModelNotFoundError, PromptError
from .io import READ_SUFFIXES, probe_spatial_shape, read_image, write_labels
from .preprocess import Intensity
from .roi import ROI_MODES, segment_large
from .segment import check_boxes_for_image, segment_boxes
from .series import check_outputs, list_images, split_name

REPORT_NAME = "batch_report.json"


@dataclass
class ImageResult:
    """One image's outcome. status: "done", "skipped" (output existed), "no_boxes" or "failed"."""

    image: str
    status: str
    output: str | None = None
    boxes: int = 0
    objects: int = 0
    message: str = ""
    seconds: float = 0.0
    retries: int = 0  # Dask: times the unit was run again because its worker died


@dataclass
class BatchReport:
    """Outcome of a batch; ``ok`` when nothing failed. ``cancelled`` when stopped early."""

    results: list[ImageResult] = field(default_factory=list)
    cancelled: bool = False
    encoder_calls: int = 0
    planned: list[str] = field(default_factory=list)  # every image the batch was asked to do

    @property
    def not_processed(self) -> list[str]:
        """Images of the batch that were never reached (cancel, Ctrl-C, a fatal error)."""
        seen = {r.image for r in self.results}
        return [name for name in self.planned if name not in seen]

    def by_status(self, status: str) -> list[ImageResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[ImageResult]:
        return self.by_status("failed")

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cancelled and not self.not_processed

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.by_status(s))} {s}" for s in ("done", "skipped", "no_boxes", "failed"))
        text = f"{len(self.results)} images: {counts}" + (" (cancelled)" if self.cancelled else "")
        if self.not_processed:
            text += f"; {len(self.not_processed)} of {len(self.planned)} not processed"
        return text + "".join(f"\n  FAILED {r.image}: {r.message}" for r in self.failed)

    def to_dict(self) -> dict:
        return {"results": [asdict(r) for r in self.results], "cancelled": self.cancelled,
                "encoder_calls": self.encoder_calls, "ok": self.ok, "total": len(self.planned),
                "not_processed": self.not_processed}


class BoxSource:
    """Boxes per image from ``boxes`` (CSV file or folder of CSVs) or ``labels`` (folder of label images)."""

    def __init__(self, images: list[Path], boxes=None, labels=None, margin: float = 0.0,
                 skipped: list[str] | tuple[str, ...] = ()):
        if (boxes is None) == (labels is None):
            raise PromptError("give boxes (a CSV file or a folder of CSVs) or boxes_from_labels (a folder), not both")
        self.margin = float(margin)
        if self.margin < 0:
            raise PromptError(f"margin {margin} must be >= 0 pixels")
        self.table = self.folder = self.labels = None
        self._index: dict = {}  # stem -> files of the CSV or label folder, listed once
        if labels is not None:
            self.labels = Path(labels).expanduser()
            if not self.labels.is_dir():
                raise PromptError(f"label folder {self.labels} does not exist (check the path)")
            return
        if isinstance(boxes, dict):  # from a script: {image file name or stem: (N, 4) XYXY array}
            self.table = _table_from_dict(boxes, images)
            return
        path = Path(boxes).expanduser()
        if path.is_dir():
            self.folder = path
        elif path.is_file():
            self.table = read_table(path, [p.name for p in images], skipped)
        else:
            raise PromptError(f"boxes {path} is neither a CSV file nor a folder of CSVs (check the path)")

    def get(self, image: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """-> (boxes (N, 4) XYXY, z (N,) or None, ids (N,) to keep or None for 1..N); N may be 0."""
        if self.table is not None:
            boxes, z = self.table.get(image.name, (np.zeros((0, 4)), None))
            return boxes, z, None
        if self.folder is not None:
            csv_path = find_paired(self.folder, image, (".csv",), self._index)
            if csv_path is None:
                return np.zeros((0, 4)), None, None
            boxes, z = read_any_boxes(csv_path)
            return boxes, z, None
        lab_path = find_paired(self.labels, image, READ_SUFFIXES, self._index)
        if lab_path is None:
            raise ImageError(f"no label image named {split_name(image)[0]}.* in {self.labels} (paired by file stem)")
        labels, _ = read_image(lab_path)
        if tuple(labels.shape) != tuple(shape):
            raise ImageError(f"labels {lab_path.name} have shape {labels.shape}, the image {tuple(shape)}")
        return boxes_from_labels(labels, self.margin)

    def for_image(self, image: Path) -> BoxSource:
        """A copy holding only what ``image`` needs (what one Dask unit carries)."""
        part = copy.copy(self)
        part._index = {}
        if self.table is not None:
            part.table = {k: v for k, v in self.table.items() if k == image.name}
        return part


def _table_from_dict(boxes: dict, images: list[Path]) -> dict:
    by_name = {p.name: p.name for p in images} | {split_name(p)[0]: p.name for p in images}
    table = {}
    for key, value in boxes.items():
        name = by_name.get(str(key))
        if name is None:
            raise PromptError(f"boxes are given for {key!r}, which is not in the image folder")
        arr = np.asarray(value, np.float64)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise PromptError(f"boxes for {key!r} must be an (N, 4) XYXY array, got shape {arr.shape}")
        table[name] = (arr, None)
    return table


def _atomic_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def segment_image(predictor, path: Path, out_path: Path, source: BoxSource, roi: str = "auto",
                  intensity: Intensity | None = None, channel=None, cancel=None) -> ImageResult:
    """Segment one image file into ``out_path``; raises on any problem (segment_folder records it).

    predictor: a Predictor, or a zero-argument callable returning one (made only when needed).
    """
    if getattr(source, "automatic", False):  # autobatch.AutoSource: no boxes, the model's automatic head
        return source.segment_file(predictor, path, out_path, intensity, channel, cancel)
    t0 = time.perf_counter()
    if out_path.name.endswith(".zarr"):  # a whole slide (series.output_path): never loaded whole
        return _segment_slide_file(predictor, path, out_path, source, roi, intensity, channel, cancel, t0)
    image, meta = read_image(path)
    if any(a not in "ZYXC" for a in meta.axes):
        raise ImageError(f"{path.name} has axes {meta.axes}; batch takes (Y, X[, C]) or (Z, Y, X[, C]) images")
    boxes, z, ids = source.get(path, meta.shape)
    if len(boxes) == 0:
        return ImageResult(path.name, "no_boxes", message="no boxes for this image")
    check_boxes_for_image(boxes, z, meta.shape)
    if not hasattr(predictor, "set_image"):
        predictor = predictor()
    if z is None:
        labels = segment_large(predictor, image, boxes, mode=roi, intensity=intensity, channel=channel,
                               cancel=cancel)
    else:
        labels = segment_boxes(predictor, image, boxes, z, intensity=intensity, channel=channel, roi=roi)
    if ids is not None:  # keep the source label ids: box k -> ids[k]
        lut = np.concatenate([[0], ids]).astype(np.uint32)
        labels = lut[labels]
    write_labels(out_path, labels, meta)
    n_obj = len(np.unique(labels)) - 1
    return ImageResult(path.name, "done", str(out_path), len(boxes), n_obj, seconds=time.perf_counter() - t0)


def _segment_slide_file(predictor, path: Path, out_path: Path, source, roi, intensity, channel, cancel,
                        t0: float) -> ImageResult:
    from .slide import segment_slide
    from .wsi import open_pyramid

    with open_pyramid(path) as pyr:
        shape = pyr.shape[:2]
    boxes, z, ids = source.get(path, shape)
    if len(boxes) == 0:
        return ImageResult(path.name, "no_boxes", message="no boxes for this image")
    if z is not None:
        raise ImageError(f"{path.name} is a 2D slide: its boxes must not have a z column")
    if not hasattr(predictor, "set_image"):
        predictor = predictor()
    res = segment_slide(predictor, path, boxes, out=out_path, roi_mode=roi, intensity=intensity, channel=channel,
                        overwrite=True, cancel=cancel, ids=ids)
    return ImageResult(path.name, "done", str(out_path), len(boxes), len(set(res.objects)),
                       seconds=time.perf_counter() - t0)


def segment_folder(images: str | os.PathLike, out: str | os.PathLike, boxes=None, boxes_from_labels=None,
                   margin: float = 0.0, roi: str = "auto", predictor=None, model: str = "lite_medsam",
                   checkpoint=None, device=None, intensity: Intensity | None = None, channel=None,
                   overwrite: bool = False, patterns: list[str] | None = None,
                   on_progress: Callable[[int, int, str], None] | None = None, cancel=None,
                   client=None, encoder_backend=None, auto: bool = False, auto_masks: str | None = None
                   ) -> BatchReport:
    """Segment every image in the folder ``images`` into ``out`` (created if missing) -> BatchReport.

    boxes: a CSV with columns image,x_min,y_min,x_max,y_max[,z], a folder of <stem>.csv box
    CSVs / napari Shapes exports, or a dict {image name or stem: (N, 4) XYXY array} (2D); boxes_from_labels: a folder of label images paired by stem
    (one box per object, grown by ``margin`` px; output keeps the ids). roi: "auto" | "whole" |
    "roi" (per slice for 3D). predictor: a Predictor, or a zero-argument factory of one; default: one
    made from model/checkpoint/device. The model is loaded only when the first image needs it. on_progress(done, total, image name) after each image;
    cancel: a callable or threading.Event checked between images and crops.
    encoder_backend: for the predictor made here or on the workers (see Predictor).
    client: a ``dask.distributed.Client``: one unit per image on its workers (distributed.py; same
    outputs, resume rule and report; predictor must then be None or a picklable factory). Blocks;
    ``distributed.submit_folder`` does not.
    auto: no boxes; every object of each 2D image from the checkpoint's automatic head
    (autobatch.py; auto_masks "decoder" | "head" overrides the head's mask source). A model
    without a head: CheckpointError, before anything is written when predictor is None or a Predictor.
    Bad arguments raise a MedSAMError before anything is written.
    """
    if auto:
        from .autobatch import auto_source

        boxes = auto_source(boxes, boxes_from_labels, auto_masks, predictor, checkpoint)
    if client is not None:
        from .distributed import submit_folder

        handle = submit_folder(client, images, out, boxes, boxes_from_labels, margin, roi, model, checkpoint,
                               device, predictor, encoder_backend, intensity, channel, overwrite, patterns,
                               on_progress)
        return handle.report(cancel)
    files, out, outputs, source = prepare_folder(images, out, boxes, boxes_from_labels, margin, roi, patterns)
    holder: dict = {"p": predictor}

    def get_predictor():
        if holder["p"] is None:
            from .checkpoint import load_model
            from .predictor import Predictor

            holder["p"] = Predictor(load_model(model, checkpoint=checkpoint, device=device),
                                      encoder_backend=encoder_backend)
        elif not hasattr(holder["p"], "set_image"):  # a factory
            holder["p"] = holder["p"]()
        return holder["p"]

    report = BatchReport(planned=[p.name for p in files])
    calls0 = getattr(predictor, "encoder_calls", 0)  # a factory or None: 0
    try:
        for k, path in enumerate(files):
            try:
                check_cancel(cancel, "batch cancelled")
            except CancelledError:
                report.cancelled = True
                break
            report.results.append(_run_one(get_predictor, path, outputs[path], source, roi, intensity,
                                           channel, overwrite, cancel))
            if report.results[-1].status == "cancelled":
                report.results.pop()
                report.cancelled = True
                break
            if on_progress:
                on_progress(k + 1, len(files), path.name)
    except KeyboardInterrupt:  # Ctrl-C: the report written below must say so, then stop
        report.cancelled = True
        raise
    finally:
        p = holder["p"]
        report.encoder_calls = getattr(p, "encoder_calls", 0) - (calls0 if p is predictor else 0)
        _atomic_json(out / REPORT_NAME, report.to_dict())
    return report


def prepare_folder(images, out, boxes=None, boxes_from_labels=None, margin: float = 0.0, roi: str = "auto",
                   patterns: list[str] | None = None) -> tuple[list[Path], Path, dict[Path, Path], BoxSource]:
    """Every check of segment_folder before any model work -> (image files, out folder (created),
    {image: output path}, BoxSource). Raises a MedSAMError saying what to fix; writes nothing else.
    boxes may be an autobatch.AutoSource (``segment_folder(auto=True)``): it is the source then."""
    if roi not in ROI_MODES:
        raise PromptError(f"unknown ROI mode {roi!r}: use auto, whole or roi")
    files = list_images(images, patterns)
    if not files:
        raise ImageError(f"no images found in {images}; supported: {', '.join(READ_SUFFIXES)}")
    out = check_output_dir(out, inputs=(images, boxes_from_labels, boxes if isinstance(boxes, str | os.PathLike)
                                        else None))
    _refuse_shared_stems(files)
    outputs = check_outputs(files, out, protected=(boxes_from_labels,) if boxes_from_labels else ())
    _check_outputs_are_not_inputs(outputs)
    # files --pattern left out: a boxes CSV for the whole folder may name them (rows ignored)
    chosen = set(files)
    skipped = [p.name for p in Path(images).expanduser().iterdir() if p not in chosen] if patterns else ()
    source = boxes if getattr(boxes, "automatic", False) else BoxSource(files, boxes, boxes_from_labels, margin,
                                                                          skipped)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)  # temp files of a run killed earlier (ours only, old)
    return files, out, outputs, source


def _run_one(get_predictor, path: Path, out_path: Path, source: BoxSource, roi: str, intensity, channel,
             overwrite: bool, cancel) -> ImageResult:
    redo = ""
    if (out_path.is_file() or out_path.name.endswith(".zarr") and out_path.is_dir()) and not overwrite:
        problem = existing_output_problem(out_path, path)
        if problem is None:
            return ImageResult(path.name, "skipped", str(out_path),
                               message="output exists (--overwrite, overwrite=True, segments it again)")
        redo = f"the existing output was not usable ({problem}) and was made again"
    t0 = time.perf_counter()
    try:
        result = segment_image(get_predictor, path, out_path, source, roi, intensity, channel, cancel)
        if redo:
            result.message = "; ".join(m for m in (redo, result.message) if m)
        return result
    except CancelledError:
        return ImageResult(path.name, "cancelled")
    except (CheckpointError, ModelNotFoundError):
        raise  # the model cannot be loaded: every image would fail, stop with this error
    except Exception as exc:  # one bad image must not stop the batch; the message says what failed
        msg = str(exc) if isinstance(exc, ImageError | PromptError) else f"{type(exc).__name__}: {exc}"
        return ImageResult(path.name, "failed", message=msg, seconds=time.perf_counter() - t0)


def existing_output_problem(out_path: Path, image_path: Path) -> str | None:
    """Why the labels file ``out_path`` cannot count as the finished output of ``image_path``
    (unreadable, empty, not integer labels, another shape), or None when it can."""
    if out_path.name.endswith(".zarr"):
        from .ngff import open_ngff
        from .wsi import open_pyramid

        try:
            lab = open_ngff(out_path)
            with open_pyramid(image_path) as pyr:
                want = pyr.shape[:2]
        except ImageError as exc:
            return f"unreadable: {str(exc)[:160]}"
        got = tuple(int(s) for s in lab.levels[0].shape)
        return None if lab.is_label and got == want else f"labels {got}, the slide is {want}"
    try:
        labels, _ = read_image(out_path)
    except ImageError as exc:
        return f"unreadable: {str(exc)[:160]}"
    if labels.dtype.kind not in "ui" or labels.ndim not in (2, 3):
        return f"not a label image (dtype {labels.dtype}, shape {labels.shape})"
    try:
        want = probe_spatial_shape(image_path)
    except ImageError:
        return None  # the image itself is unreadable: segment_image reports that, do not redo blindly
    if tuple(labels.shape) != tuple(want):
        return f"shape {labels.shape}, the image is {tuple(want)}"
    return None


def _check_outputs_are_not_inputs(outputs: dict[Path, Path]) -> None:
    """An existing output that is (a link to) an input image is refused before any work."""
    for out_path in outputs.values():
        if out_path.exists() or out_path.is_symlink():
            check_not_input(out_path, outputs.keys(), what="labels file")


def _refuse_shared_stems(files: list[Path]) -> None:
    """Boxes (a CSV's ``image`` column, <stem>.csv, label images) pair with images by stem: with
    ``a.tif`` and ``a.nii.gz`` both in the folder, which one a box belongs to is a guess."""
    seen: dict[str, Path] = {}
    for p in files:
        stem = split_name(p)[0]
        if stem in seen:
            raise ImageError(f"{seen[stem].name} and {p.name} share the name {stem!r}: boxes and outputs pair "
                             "with images by name, so rename one or move it out of the folder")
        seen[stem] = p
