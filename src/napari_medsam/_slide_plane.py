"""Whole-slide planes in the widget: a box segments on level 0 of a multiscale layer larger than
``_layers.MAX_PLANE_PIXELS`` per plane without reading the plane whole, into labels on disk.

* ``SlidePlane`` stands in for the (H, W[, C]) plane image: it only holds the layer's levels, which
  ``medsam_core.roi`` reads as a pyramid (crops from level 0, the intensity window from the coarsest
  level). Turning it into an array raises, so nothing can read the plane whole by accident.
* ``new_slide_labels`` makes an empty NGFF image-label (``medsam_core.labelstore.LabelStore``) in a
  temporary folder and shows it as a multiscale Labels layer; ``SlideLabels`` (in the layer's
  metadata) keeps the store and the windows each object was written to.
* ``SlideEditor`` is ``_objects.PlaneEditor`` for such labels: it edits tiles of level 0 covering the
  windows it touches, and ``edits()`` gives ``WindowEdit``s holding only the changed window's pixels
  before and after, which commit and undo write back chunk by chunk.

Only box prompts are supported there (ROI mode); points and polygons are refused with a message.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam_core import MedSAMError, PromptError

SLIDE_KEY = "medsam_slide_labels"  # Labels layer metadata: the SlideLabels behind the layer
TILE = 1024  # editor tile side (the label store's chunk)
ONLY_BOXES = ("this is a whole-slide plane (larger than the widget keeps in memory): only boxes segment here, "
              "at full resolution; points, polygons and whole-plane tools need a plane that fits in memory")


class SlidePlane:
    """A lazy plane of a multiscale layer: ``levels`` (level 0 first), (Y, X) or (Y, X, C) each."""

    def __init__(self, levels):
        self.levels = list(levels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.levels[0].shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None):
        raise PromptError(f"{ONLY_BOXES} (this plane is {self.shape[1]} x {self.shape[0]} pixels)")


@dataclass(eq=False)
class SlideLabels:
    """The on-disk labels of a slide plane: its LabelStore and, per label id, the window (y0, y1, x0, x1)
    windows (y0, y1, x0, x1) that hold every pixel it was ever written to (clearing an object reads only that window)."""

    store: object
    extents: dict[int, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    def top_id(self) -> int:
        return max(self.extents, default=0)


def new_slide_labels(viewer, name: str, shape, scale, translate, on_status=None, folder=None):
    """An empty chunked label image of level-0 ``shape`` (in a new temporary folder unless ``folder``)
    shown as a multiscale Labels layer."""
    from medsam_core.labelstore import LabelStore

    folder = Path(folder or tempfile.mkdtemp(prefix="medsam-slide-labels-"))
    store = LabelStore.create(folder / "labels.ome.zarr", tuple(shape), name="medsam", chunk=TILE)
    layer = viewer.add_labels(list(store.levels), multiscale=True, name=name, scale=scale, translate=translate)
    layer.metadata[SLIDE_KEY] = SlideLabels(store)
    if on_status is not None:
        on_status(f"MedSAM: whole slide: labels are kept on disk in {store.path}")
    return layer


def slide_labels_of(labels_layer) -> SlideLabels | None:
    return None if labels_layer is None else labels_layer.metadata.get(SLIDE_KEY)


def check_slide_labels(labels_layer, image_layer, channel_axis) -> None:
    """A whole slide's labels must be labels on disk made by ``new_slide_labels``."""
    from ._layers import is_slide

    if is_slide(image_layer, channel_axis) and slide_labels_of(labels_layer) is None:
        raise MedSAMError(f"{image_layer.name!r} is a whole slide: its labels must live on disk; let MedSAM "
                          "create its labels layer (or pick one it created)")


@dataclass
class WindowEdit:
    """Level-0 pixels of a slide's labels changed in one window: (h, w) old and new values."""

    slide: SlideLabels
    window: tuple[int, int, int, int]
    old: np.ndarray
    new: np.ndarray

    def inverse(self) -> WindowEdit:
        return WindowEdit(self.slide, self.window, self.new, self.old)

    @property
    def size(self) -> int:
        return int(self.old.size)

    def apply(self, labels_layer) -> None:
        """Write ``new`` into the store (only the chunks the window covers), update the coarser levels."""
        store = self.slide.store
        store.write_region(self.window, self.new)
        store.update_levels()
        labels_layer.refresh()


class SlideEditor:
    """``PlaneEditor`` for slide labels: tiles of level 0, copied before/after as the edits touch them."""

    def __init__(self, slide: SlideLabels, overwrite: bool):
        self.slide, self.overwrite = slide, overwrite
        self._tiles: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def plane(self, plane):
        raise PromptError(ONLY_BOXES)

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        if (ty, tx) not in self._tiles:
            h, w = self.slide.store.shape
            window = (ty * TILE, min((ty + 1) * TILE, h), tx * TILE, min((tx + 1) * TILE, w))
            before = self.slide.store.read_region(window)
            self._tiles[(ty, tx)] = (before, before.copy())
        return self._tiles[(ty, tx)][1]

    def _spans(self, window):
        y0, y1, x0, x1 = window
        for ty in range(y0 // TILE, -(-y1 // TILE)):
            for tx in range(x0 // TILE, -(-x1 // TILE)):
                a0, a1 = max(y0, ty * TILE), min(y1, (ty + 1) * TILE)
                b0, b1 = max(x0, tx * TILE), min(x1, (tx + 1) * TILE)
                yield (ty, tx), (slice(a0 - ty * TILE, a1 - ty * TILE), slice(b0 - tx * TILE, b1 - tx * TILE)), \
                    (slice(a0 - y0, a1 - y0), slice(b0 - x0, b1 - x0))

    def clear(self, plane, label_id: int) -> None:
        """Remove object ``label_id`` (its pixels become background), reading only its window."""
        for window in self.slide.extents.get(int(label_id), ()):
            for key, in_tile, _ in self._spans(window):
                arr = self._tile(*key)[in_tile]
                arr[arr == label_id] = 0

    def write(self, plane, mask, label_id: int) -> int:
        """Paint a ``roi.BoxMask`` (window + mask) as ``label_id``: background only unless overwriting."""
        if not hasattr(mask, "window"):
            raise MedSAMError("internal: slide labels take windowed masks (roi.BoxMask), not whole planes")
        window, m = tuple(int(v) for v in mask.window), np.asarray(mask.mask, bool)
        n = 0
        for key, in_tile, in_mask in self._spans(window):
            arr = self._tile(*key)[in_tile]
            sel = m[in_mask] if self.overwrite else m[in_mask] & ((arr == 0) | (arr == label_id))
            arr[sel] = label_id
            n += int(sel.sum())
        windows = self.slide.extents.setdefault(int(label_id), [])
        if n and window not in windows:
            windows.append(window)
        return n

    def edits(self) -> list[WindowEdit]:
        out = []
        for (ty, tx), (before, after) in self._tiles.items():
            diff = before != after
            if not diff.any():
                continue
            rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            window = (ty * TILE + r0, ty * TILE + r1, tx * TILE + c0, tx * TILE + c1)
            out.append(WindowEdit(self.slide, window, before[r0:r1, c0:c1].copy(), after[r0:r1, c0:c1].copy()))
        return out
