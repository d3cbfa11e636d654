"""``medsam batch --auto``: every image of a folder segmented by the checkpoint's automatic head.

    from medsam_core.batch import segment_folder
    report = segment_folder("images/", "labels/", auto=True, checkpoint="with_head.pt")

The batch machinery is the box batch's (``batch.segment_folder``: outputs ``<stem>.tif``, atomic
writes, resume, ``batch_report.json``, Ctrl-C, ``client=`` for Dask); only where the objects come
from differs: ``AutoSource`` stands where ``BoxSource`` stands, and each image goes through
``autoseg.segment_everything`` with the head stored in the loaded model's checkpoint
(``autoguard.head_from_model``). A model without a head is a ``CheckpointError`` that says how to
make one (``medsam auto-train``), raised before anything is written when the checkpoint is known
up front. 2D images only (Y, X[, C]): a volume or a whole slide is reported as failed with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ImageError, PromptError

HOW_TO_TRAIN = ("train one with `medsam auto-train --images DIR --labels DIR --out CKPT.pt` (or in napari: "
                "Active learning > Segment everything > Train), then pass --checkpoint CKPT.pt")


def no_head_error(what) -> CheckpointError:
    return CheckpointError(f"{what} has no automatic head: {HOW_TO_TRAIN}")


def require_head(model, what=None):
    """The automatic head inside a loaded model's checkpoint -> AutoHead, or CheckpointError."""
    from .autoguard import head_from_model

    head = head_from_model(model)
    if head is None:
        path = getattr(model, "weights_path", None)
        raise no_head_error(what or (f"checkpoint {Path(path).name}" if path else "the model"))
    return head


def check_checkpoint_has_head(checkpoint) -> None:
    """Before any work: the checkpoint file (None: the bundled weights) carries an automatic head."""
    from .autoguard import EXTRA
    from .checkpoint import read_checkpoint

    if checkpoint is None:
        raise no_head_error("the bundled model")
    _, _, extras = read_checkpoint(Path(checkpoint).expanduser())
    if EXTRA not in extras:
        raise no_head_error(f"checkpoint {Path(checkpoint).name}")


def auto_source(boxes, boxes_from_labels, auto_masks, predictor, checkpoint) -> AutoSource:
    """``segment_folder(auto=True)``'s checks -> the AutoSource standing in for ``boxes``."""
    if boxes is not None or boxes_from_labels is not None:
        raise PromptError("auto segments every object without boxes: give auto or boxes / boxes_from_labels, "
                          "not both")
    source = AutoSource(auto_masks)
    if predictor is None:
        check_checkpoint_has_head(checkpoint)
    elif hasattr(predictor, "set_image"):
        require_head(predictor.model)
    return source


class AutoSource:
    """Stands where batch.BoxSource stands: the objects of each image come from the automatic head.

    refine: "decoder" | "head" to override the head's fitted mask source, None to keep it.
    """

    automatic = True

    def __init__(self, refine: str | None = None):
        from .autohead import REFINE

        if refine is not None and refine not in REFINE:
            raise PromptError(f"automatic masks must be one of {REFINE}, got {refine!r}")
        self.refine = refine
        self._heads: dict = {}  # id(model) -> AutoHead, built once per loaded model

    def __getstate__(self) -> dict:  # a Dask unit carries the settings, never a head
        return {"refine": self.refine, "_heads": {}}

    def for_image(self, image: Path) -> AutoSource:
        return AutoSource(self.refine)

    def head_for(self, model):
        key = id(model)
        if key not in self._heads:
            head = require_head(model)
            if self.refine is not None:
                from .autoguard import with_post

                head = with_post(head, refine=self.refine)
            self._heads = {key: (model, head)}  # keep the model referenced so its id stays its own
        return self._heads[key][1]

    def segment_file(self, predictor, path: Path, out_path: Path, intensity=None, channel=None,
                     cancel=None):
        """One image file -> its labels in ``out_path`` -> batch.ImageResult; raises on a problem
        (batch._run_one records it; CheckpointError stops the batch)."""
        from .autoseg import segment_everything
        from .batch import ImageResult
        from .io import read_image, write_labels

        t0 = time.perf_counter()
        if out_path.name.endswith(".zarr"):
            raise ImageError(f"{path.name} is a whole slide: automatic segmentation takes 2D images that fit "
                             "in memory; segment the slide from boxes (medsam slide)")
        image, meta = read_image(path)
        if any(a not in "YXC" for a in meta.axes):
            raise ImageError(f"{path.name} has axes {meta.axes}: automatic segmentation takes 2D (Y, X[, C]) "
                             "images; give a volume's slices as separate images, or segment it from boxes")
        if not hasattr(predictor, "set_image"):
            predictor = predictor()
        head = self.head_for(predictor.model)
        saved = predictor.intensity, predictor.channel
        try:  # the batch's intensity / channel settings apply to this image only
            predictor.intensity = intensity or saved[0]
            predictor.channel = saved[1] if channel is None else channel
            props = segment_everything(predictor, head, image, cancel=cancel)
        finally:
            predictor.intensity, predictor.channel = saved
        labels = props.to_labels()
        write_labels(out_path, labels, meta)  # atomic; the smallest unsigned type that fits
        return ImageResult(path.name, "done", str(out_path), len(props.masks), int(len(np.unique(labels)) - 1),
                           message=f"automatic head, {head.post.refine} masks",
                           seconds=time.perf_counter() - t0)
