"""Segment boxes on a whole slide without loading it: the job behind ``medsam slide``.

    from medsam_core.slide import segment_slide
    result = segment_slide(predictor, "case.svs", boxes, out="case_labels.ome.zarr", geojson="case.geojson")

The slide (pyramidal TIFF / SVS / NDPI or OME-Zarr) is opened lazily (``wsi.open_pyramid``);
boxes are level-0 pixels. Every box goes through ``roi.iter_box_masks`` (the one entry point;
on a slide larger than ``roi.MAX_WHOLE_PIXELS`` auto mode crops every box), each crop's masks
are pasted into an on-disk NGFF label image (``labelstore.LabelStore``: the image's
``labels/<name>`` for an OME-Zarr slide, or a new ``.zarr``), so memory stays at one crop.
Optionally the objects go to a GeoJSON FeatureCollection (QuPath) with class names. Boxes can
come from a GeoJSON file too (each feature's bounding box; its class name is kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError, PromptError
from .preprocess import check_boxes


@dataclass
class SlideResult:
    """labels: path of the NGFF label image; geojson: path or None; objects: ids written;
    encodes: crops encoded; seconds: wall time; classes: {id: class name}."""

    labels: Path
    geojson: Path | None
    objects: list[int]
    encodes: int
    seconds: float
    classes: dict[int, str] = field(default_factory=dict)


def boxes_from_geojson(path: str | os.PathLike) -> tuple[np.ndarray, dict[int, str]]:
    """(N, 4) XYXY pixel boxes (the bounding box of each Polygon/MultiPolygon feature, QuPath's
    pixel-corner coordinates -> pixel indices) and {box index + 1: class name}."""
    from .geojson import _class_name, _features

    try:
        doc = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptError(f"cannot read boxes from {path}: {exc}") from None
    boxes, classes, skipped = [], {}, {}
    for feat in _features(doc):
        geom = feat.get("geometry") or {}
        kind = str(geom.get("type"))
        if kind not in ("Polygon", "MultiPolygon"):
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        pts = np.asarray([p[:2] for ring in _rings(geom) for p in ring], np.float64)
        if len(pts) < 3:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        x0, y0 = np.floor(pts.min(axis=0))
        x1, y1 = np.ceil(pts.max(axis=0)) - 1
        boxes.append([x0, y0, max(x0, x1), max(y0, y1)])
        name = _class_name(feat.get("properties") or {})
        if name:
            classes[len(boxes)] = str(name)
    if skipped:  # points (cell centroids), lines, empty polygons: no box to draw around
        warnings.warn(f"{Path(path).name}: {', '.join(f'{n} {k}' for k, n in skipped.items())} feature(s) skipped: "
                      "only Polygon and MultiPolygon features give boxes", stacklevel=2)
    return np.array(boxes, np.float64).reshape(-1, 4), classes


def _rings(geom: dict) -> list:
    coords = geom.get("coordinates") or []
    return coords if geom["type"] == "Polygon" else [r for poly in coords for r in poly]


def labels_destination(image, out, kind: str) -> Path:
    """Where a slide's labels go, checked before any work: ``out`` (a new .zarr, never the slide
    itself) or, when None, the OME-Zarr slide's own labels/ group. ``kind``: the Pyramid's kind."""
    if out is None:
        if kind != "ome-zarr":
            raise ImageError(f"{Path(image).name} is not an OME-Zarr: give --out NAME.zarr for the labels")
        return Path(image)
    dest = Path(out).expanduser()
    if dest.suffix.lower() != ".zarr":
        raise ImageError(f"labels go to an OME-Zarr store: {dest.name} must end in .zarr")
    if dest.resolve() == Path(image).expanduser().resolve():
        raise ImageError(f"{dest.name} is the slide itself: give another name, or none to use its labels/")
    return dest


def _is_label_image(path: Path) -> bool:
    from . import ngff

    try:
        return ngff.is_ngff(path) and ngff.open_ngff(path).is_label
    except Exception:  # unreadable: not one of ours to replace
        return False


def _set_aside(final: Path) -> Path:
    """Move an existing label image out of the way (restored if the new run does not finish)."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    return old


def check_geojson_out(geojson, overwrite: bool, inputs) -> None:
    """The GeoJSON output, checked before any work: its suffix, its folder, never an input (the
    boxes' own GeoJSON, the slide), an existing file only with ``overwrite``."""
    from ._paths import check_output

    path = Path(geojson).expanduser()
    if path.suffix.lower() not in (".geojson", ".json"):
        raise ImageError(f"GeoJSON output {path.name} must end in .geojson")
    check_output(path, inputs=tuple(i for i in inputs if isinstance(i, str | os.PathLike)), what="GeoJSON output")
    if path.exists() and not overwrite:
        raise ImageError(f"{path} exists: pass --overwrite (overwrite=True) to replace it")


def segment_slide(predictor, image: str | os.PathLike, boxes, out: str | os.PathLike | None = None,
                  name: str = "medsam", roi_mode: str = "auto", intensity=None, channel=None,
                  geojson: str | os.PathLike | None = None, classes: dict[int, str] | None = None,
                  overwrite: bool = False, progress=None, cancel=None, ids=None,
                  boxes_source: str | os.PathLike | None = None) -> SlideResult:
    """Segment (N, 4) XYXY level-0 ``boxes`` on the slide ``image`` -> SlideResult; box i gets id i+1.

    out: a new ``.zarr`` path for the labels, or None to write into the OME-Zarr slide's
    ``labels/<name>``. geojson: also write the objects there (class names from ``classes``).
    progress(done, total) after each crop; cancel: callable or Event, checked before each crop
    (the label image then holds the crops done so far). ids: (N,) label id per box instead of i+1
    (e.g. the ids of the label image the boxes came from). boxes_source: the file the boxes were read
    from (never overwritten by ``geojson``). Bad arguments raise before anything is written. With
    ``overwrite``, the earlier label image is kept aside until the new one is finished, and put back
    if the run fails or is interrupted.
    """
    from . import roi, wsi
    from .labelstore import LabelStore

    t0 = time.perf_counter()
    pyr = wsi.open_pyramid(image)
    try:
        shape = pyr.shape[:2]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            raise PromptError("no boxes given: nothing to segment")
        boxes = check_boxes(boxes, shape)  # before anything is written
        roi.choose_roi(boxes, shape, roi_mode)  # validates the mode
        ids = np.arange(1, len(boxes) + 1) if ids is None else np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != len(boxes) or (ids <= 0).any() or ids.max() > np.iinfo(np.uint32).max:
            raise PromptError(f"{len(ids)} ids for {len(boxes)} boxes: give one id > 0 (uint32) per box")
        dest = labels_destination(image, out, pyr.kind)
        if geojson is not None:
            check_geojson_out(geojson, overwrite, inputs=(image, boxes_source))
        window = wsi.intensity_window(pyr, intensity, channel)
        final = dest / "labels" / name if dest.resolve() == Path(image).expanduser().resolve() else dest
        if overwrite and final.exists() and not _is_label_image(final):
            raise ImageError(f"{final} exists and is not a label image: give a new path (--overwrite replaces "
                             "label images only, never other folders)")
        old = _set_aside(final) if overwrite and final.exists() else None
        store = None
        try:
            store = LabelStore.create(dest, shape, name=name, spacing=pyr.spacing,
                                      unit={"um": "micrometer"}.get(pyr.unit, pyr.unit), overwrite=overwrite)
            total = roi.count_encodes(boxes, shape, roi_mode, predictor.spec.preprocessing.input_size)
            done, windows = 0, []
            for idx, results in roi.iter_box_masks(predictor, pyr, boxes, roi_mode, window, channel, cancel=cancel):
                for i, r in zip(idx, results, strict=True):
                    store.paste(r.window, r.mask[None], np.array([ids[i]], np.uint32))
                    windows.append(r.window)
                done += 1
                if progress:
                    progress(done, total)
            store.update_levels()
        except BaseException:
            if old is not None:  # an interrupted --overwrite: the earlier, complete labels come back
                shutil.rmtree(final, ignore_errors=True)
                os.replace(old, final)
            elif store is not None:  # a first run stopped: the crops done so far, at every level
                with contextlib.suppress(Exception):
                    store.update_levels()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        pyr.close()
    gj = None
    if geojson is not None:
        from .geojson import write_geojson

        gj = write_geojson(geojson, store.level0, classes, regions=windows)
    return SlideResult(store.path, gj, [int(i) for i in ids], done, time.perf_counter() - t0,
                       dict(classes or {}))
