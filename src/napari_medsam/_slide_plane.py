"""Whole-slide planes in the widget: a box segments on level 0 of a multiscale layer larger than
``_layers.MAX_PLANE_PIXELS`` per plane without reading the plane whole, into labels on disk.

* ``SlidePlane`` stands in for the (H, W[, C]) plane image: it only holds the layer's levels, which
  ``medsam_core.roi`` reads as a pyramid (crops from level 0, the intensity window from the coarsest
  level). Turning it into an array raises, so nothing can read the plane whole by accident.
* ``new_slide_labels`` makes an empty NGFF image-label (``medsam_core.labelstore.LabelStore``) in a
  folder of its own under ``<MEDSAM_CACHE_DIR or the user cache dir>/slide-labels/`` and shows it as a
  multiscale Labels layer; ``SlideLabels`` (in the layer's metadata) keeps the store, the windows
  each object was written to, and whether its last change was saved (the plugin's writers mark it).
* Its folder goes when the layer leaves the viewer (removed, or napari closed) if it holds nothing
  unsaved. Unsaved labels are the only copy of that work, so they are kept (a warning names the
  folder, an OME-Zarr that File > Open reads back); kept folders older than ``KEEP_DAYS`` days whose
  napari has exited are removed the next time a slide gets labels.
* ``SlideEditor`` is ``_objects.PlaneEditor`` for such labels: it edits tiles of level 0 covering the
  windows it touches, and ``edits()`` gives ``WindowEdit``s holding only the changed window's pixels
  before and after, which commit and undo write back chunk by chunk.

Boxes (ROI mode) and points (``_slide_points``, on the box's crop) work there; polygons and
whole-plane tools are refused with a message. A QuPath GeoJSON opened onto a slide is drawn into such a
store too (``_import_reader``): ``object_box_on_slide`` and ``read_window`` let the widget adopt its
objects reading only windows of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam_core import MedSAMError, PromptError

log = logging.getLogger(__name__)
SLIDE_KEY = "medsam_slide_labels"  # Labels layer metadata: the SlideLabels behind the layer
TILE = 1024  # editor tile side (the label store's chunk)
ONLY_BOXES = ("this is a whole-slide plane (larger than the widget keeps in memory): boxes, points and "
              "polygons segment here, at full resolution; whole-plane tools (automatic segmentation, the model "
              "preview of the whole plane) need a plane that fits in memory")
KEEP_DAYS = 7  # kept unsaved slide labels of an exited napari are removed after this many days
MARKER = "medsam-slide-labels.json"  # in each folder: the napari process that owns it, when it was made


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
    folder: Path | None = None  # the folder new_slide_labels made for the store (removed with the layer)
    version: int = 0  # changes written (commits and undos)
    saved: int = 0  # ``version`` when the labels were last saved by the plugin's writer

    def top_id(self) -> int:
        return max(self.extents, default=0)

    def unsaved(self) -> bool:
        """True when the store holds labels changed since the last save (reads only the objects' windows)."""
        if self.version == self.saved:
            return False
        return any(np.asarray(self.store.read_region(w)).any() for ws in self.extents.values() for w in ws)


def labels_root() -> Path:
    """``<MEDSAM_CACHE_DIR or the user cache dir>/slide-labels``: where slides' labels are kept on disk."""
    from medsam_core.backends import default_cache_dir

    return default_cache_dir() / "slide-labels"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(root: Path | None = None, keep_days: float = KEEP_DAYS) -> list[Path]:
    """Remove slide-label folders older than ``keep_days`` whose napari process has exited; returns them."""
    root = Path(root or labels_root())
    gone = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        try:
            info = json.loads((folder / MARKER).read_text())
            old = time.time() - float(info["created"]) > keep_days * 86400
            if old and not _alive(int(info["pid"])):
                shutil.rmtree(folder)
                gone.append(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours (no marker) or in use: left alone
    return gone


def release(slide: SlideLabels, on_status=None) -> bool:
    """The labels layer left the viewer: remove its folder unless it holds unsaved labels (then warn).
    Returns True when the folder was removed."""
    if slide.folder is None or not slide.folder.exists():
        return False
    if slide.unsaved():
        msg = (f"MedSAM: unsaved whole-slide labels are kept in {slide.folder} (an OME-Zarr: File > Open reads "
               f"it back); delete the folder if you do not need them (removed after {KEEP_DAYS} days)")
        log.warning(msg)
        try:
            if on_status is not None:
                on_status(msg)
        except RuntimeError:  # the widget went first (napari closing): the log has it
            pass
        return False
    shutil.rmtree(slide.folder, ignore_errors=True)
    return True


def mark_saved(metadata) -> None:
    """A writer saved the labels of a layer with this ``metadata``: its slide store holds nothing unsaved."""
    slide = (metadata or {}).get(SLIDE_KEY)
    if isinstance(slide, SlideLabels):
        slide.saved = slide.version


def new_labels_folder(name: str) -> Path:
    """A new folder under ``labels_root()`` for one slide's labels, marked as this napari's (stale
    folders of exited ones are removed first)."""
    clean_stale()
    folder = labels_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"pid": os.getpid(), "created": time.time(), "name": name}))
    return folder


def watch_release(viewer, slide: SlideLabels, on_status=None) -> None:
    """Remove ``slide``'s folder (``release``) when the layer holding it leaves ``viewer``."""

    def on_removed(event):
        if getattr(event.value, "metadata", {}).get(SLIDE_KEY) is slide:  # (the layer may come proxied)
            viewer.layers.events.removed.disconnect(on_removed)
            release(slide, on_status)

    viewer.layers.events.removed.connect(on_removed)


def new_slide_labels(viewer, name: str, shape, scale, translate, on_status=None, folder=None):
    """An empty chunked label image of level-0 ``shape`` shown as a multiscale Labels layer, in a new
    folder under ``labels_root()`` (removed with the layer when nothing unsaved is in it) unless ``folder``."""
    from medsam_core.labelstore import LabelStore

    owned = folder is None
    folder = new_labels_folder(name) if owned else Path(folder)
    store = LabelStore.create(folder / "labels.ome.zarr", tuple(shape), name="medsam", chunk=TILE)
    layer = viewer.add_labels(list(store.levels), multiscale=True, name=name, scale=scale, translate=translate)
    slide = SlideLabels(store, folder=folder if owned else None)
    layer.metadata[SLIDE_KEY] = slide
    watch_release(viewer, slide, on_status)
    if on_status is not None:
        on_status(f"MedSAM: whole slide: labels are kept on disk in {store.path}")
    return layer


#: Reads of slide labels for a box or an object's window stay below this many pixels (a coarser level beyond).
MAX_READ = 4096 * 4096


def read_window(slide: SlideLabels, window) -> tuple[np.ndarray, int]:
    """Labels in level-0 ``window`` (y0, y1, x0, x1) -> (region, k): read from level 0, or from the first
    level k (2**k smaller) whose window holds at most MAX_READ pixels (a box drawn zoomed far out)."""
    y0, y1, x0, x1 = (int(v) for v in window)
    levels = slide.store.levels
    k = 0
    while k + 1 < len(levels) and ((y1 - y0) >> k) * ((x1 - x0) >> k) > MAX_READ:
        k += 1
    return np.asarray(levels[k][y0 >> k : -(-y1 >> k), x0 >> k : -(-x1 >> k)]), k


def object_box_on_slide(slide: SlideLabels, label_id: int, near=None) -> np.ndarray | None:
    """(4,) XYXY tight box of object ``label_id`` of slide labels, read only from the windows its pixels
    were written to (``extents``), or around the XYXY box ``near`` for an object with none; None if absent."""
    h, w = slide.store.shape
    windows = list(slide.extents.get(int(label_id), ()))
    if not windows and near is not None:
        pad = max(64, int(max(near[2] - near[0], near[3] - near[1])))
        windows = [(max(int(near[1]) - pad, 0), min(int(near[3]) + pad + 1, h),
                    max(int(near[0]) - pad, 0), min(int(near[2]) + pad + 1, w))]
    box = None
    for y0, y1, x0, x1 in windows:
        region, k = read_window(slide, (y0, y1, x0, x1))
        rows, cols = np.nonzero(region == label_id)
        if not len(rows):
            continue
        b = np.array([(cols.min() << k) + (x0 >> k << k), (rows.min() << k) + (y0 >> k << k),
                      ((cols.max() + 1) << k) - 1 + (x0 >> k << k), ((rows.max() + 1) << k) - 1 + (y0 >> k << k)],
                     float)
        box = b if box is None else np.array([*np.minimum(box[:2], b[:2]), *np.maximum(box[2:], b[2:])])
    return box


def slide_labels_for(labels, folder: Path, extents: dict) -> SlideLabels:
    """SlideLabels over a LabelStore filled elsewhere (an import): ``extents`` {id: (y0, y1, x0, x1)}."""
    return SlideLabels(labels, extents={int(k): [tuple(int(v) for v in w)] for k, w in extents.items()},
                       folder=folder)


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
        self.slide.version += 1
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
