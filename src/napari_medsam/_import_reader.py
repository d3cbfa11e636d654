"""Opening other tools' segmentations for correction (issue 17): label images and QuPath GeoJSON.

* A label image (integer TIFF, 2D or 3D, no channels) whose file name says it holds labels --
  Cellpose's ``<name>_cp_masks.tif`` / ``_masks``, StarDist's and QuPath's ``_labels`` / ``-labels``,
  ``_label``, ``_mask``, ``_seg``, ``_instances`` -- opens as a Labels layer, not an image (a binary
  mask becomes one label per connected object, so each can be corrected alone). Any other
  integer file opens as an image (napari's "Convert to labels" then makes it a Labels layer the
  widget accepts as well).
* A ``.geojson`` file (QuPath's polygons, ours) is rasterised onto the image it belongs to: a GeoJSON
  file has pixel coordinates but no image size, so the reader takes the last 2D image open in the
  current napari viewer (its size, scale and translate) when every polygon fits on it, else the
  polygons' own extent (the widget then asks for labels the size of the image). Onto a whole slide
  (``_layers.is_slide``) the polygons are drawn tile by tile into labels on disk
  (``slide_geojson_layer``), which the widget targets like its own slide labels.

Both layers carry ``metadata["medsam_imported"]`` (the file name) and a provenance whose records
say "imported from <file>" (2D only), with GeoJSON class names, so the MedSAM widget redoes one of
their objects when a box is drawn on it (``_import_session``) and the saved sidecar tells imported
objects from corrected ones.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from medsam_core import split_suffix
from medsam_core.errors import MedSAMError

from ._reader import PROV_KEY

log = logging.getLogger(__name__)
IMPORT_KEY = "medsam_imported"  # Labels layer metadata: the file name its labels were imported from
LABEL_NAME = re.compile(r"(^|[_\-. ])(cp_masks?|masks?|labels?|label_image|seg|segmentation|instances)$", re.I)
GEOJSON_SUFFIXES = (".geojson",)
MAX_PIXELS = 16384 * 16384  # = _layers.MAX_PLANE_PIXELS: larger GeoJSON extents are whole slides (not opened)


def is_label_name(path) -> bool:
    """True when the file name (without its ending) says it holds labels (see the module docstring)."""
    return bool(LABEL_NAME.search(split_suffix(path)[0]))


def imported_metadata(labels, source: str, classes: dict[int, str] | None = None) -> dict:
    """Labels-layer metadata for labels imported from file ``source``: the marker and, for 2D
    labels, a provenance recording every object as "imported from <source>" (class names kept)."""
    meta: dict = {IMPORT_KEY: source}
    if getattr(labels, "ndim", 0) == 2:
        from medsam_core.imported import import_labels

        meta[PROV_KEY] = import_labels(labels, source, classes).provenance
    return meta


def label_file_layer(path: str, data, kwargs: dict) -> tuple | None:
    """(data, kwargs, "labels") for a label image file (name and dtype), else None. ``kwargs``: the
    image layer's keyword arguments (name, scale, metadata) from ``_reader.layer_data``."""
    if not is_label_name(path) or data.dtype.kind not in "iub" or data.ndim not in (2, 3):
        return None
    if "channel_axis" in kwargs or kwargs.get("rgb"):
        return None
    kwargs = dict(kwargs)
    data = instances(data)
    kwargs["metadata"] = {**kwargs.get("metadata", {}), **imported_metadata(data, Path(path).name)}
    return (data, kwargs, "labels")


def instances(data: np.ndarray) -> np.ndarray:
    """A binary mask (one foreground value: 0/1, 0/255 from a threshold or a semantic tool) -> one label
    per connected object (8-connected in 2D), so each can be redone on its own; instance labels as is."""
    from scipy import ndimage

    values = np.unique(data[:: max(1, data.shape[0] // 256)])  # a cheap first look
    if len(values) > 2 or len(np.unique(data)) > 2:
        return data
    labelled, _ = ndimage.label(data > 0, structure=np.ones((3,) * data.ndim, bool))
    return labelled.astype(np.uint32)


def _target_image(extent: tuple[int, int]):
    """The last 2D image layer of the current viewer whose plane holds ``extent`` (H, W), else None."""
    try:
        import napari
        from napari.layers import Image

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer, no Qt: the polygons' extent is used
        return None
    if viewer is None:
        return None
    from ._layers import is_slide

    for layer in reversed(list(viewer.layers)):
        if not isinstance(layer, Image) or layer.name.startswith("MedSAM"):
            continue
        if layer.multiscale and not is_slide(layer):
            continue
        shape = plane_shape(layer)
        if len(shape) == 2 and shape[0] >= extent[0] and shape[1] >= extent[1]:
            return layer
    return None


def plane_shape(layer) -> tuple[int, ...]:
    """(H, W) of a 2D image layer's level-0 plane (RGB channels dropped); longer for nD layers."""
    shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
    return tuple(int(v) for v in shape[: layer.ndim])  # (an RGB layer's ndim leaves its channels out)


def _extent(doc) -> tuple[int, int]:
    """(H, W) holding every pixel whose centre a coordinate of the GeoJSON document reaches."""
    xs, ys = [0.0], [0.0]

    def walk(c):
        if isinstance(c, list | tuple) and len(c) >= 2 and all(isinstance(v, int | float) for v in c[:2]):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, list | tuple):
            for v in c:
                walk(v)

    feats = doc.get("features", []) if isinstance(doc, dict) else doc
    for f in feats if isinstance(feats, list) else []:
        walk(((f or {}).get("geometry") or {}).get("coordinates") or [])
    return max(1, int(np.ceil(max(ys) - 0.5))), max(1, int(np.ceil(max(xs) - 0.5)))  # pixel r: centre r + 0.5


def geojson_reader(path: str):
    """A reader function for one .geojson file, else None (never raises)."""
    if not str(path).lower().endswith(GEOJSON_SUFFIXES) or not Path(path).is_file():
        return None

    def reader(_path=None):
        import json

        from medsam_core.geojson import read_geojson

        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            extent = _extent(doc)
            image = _target_image(extent)
            if image is not None and image.multiscale:  # a whole slide: drawn into labels on disk
                return [slide_geojson_layer(path, image)]
            shape = extent if image is None else plane_shape(image)
            if shape[0] * shape[1] > MAX_PIXELS:
                raise MedSAMError(f"its polygons span {shape[1]} x {shape[0]} pixels, a whole slide: open the "
                                  "slide first (its labels are then drawn on disk), or use `medsam slide --boxes`")
            found = read_geojson(path, shape)
        except (MedSAMError, OSError, ValueError) as exc:
            log.warning("napari-medsam could not read %s: %s", path, exc)
            return None
        for why in found.skipped:
            log.warning("napari-medsam: %s: %s", Path(path).name, why)
        name = Path(path).name
        kwargs: dict = {"name": name,  # "cells.geojson": not the image's name
                        "metadata": imported_metadata(found.labels, name, found.classes)}
        if image is not None:
            kwargs["scale"], kwargs["translate"] = list(image.scale[-2:]), list(image.translate[-2:])
        return [(found.labels, kwargs, "labels")]

    return reader


def slide_geojson_layer(path, image) -> tuple:
    """(levels, kwargs, "labels") for a GeoJSON opened onto whole-slide ``image``: its polygons drawn tile by
    tile into a new NGFF image-label in a folder under ``_slide_plane.labels_root()`` (removed with the layer
    unless edited and unsaved), marked imported (provenance "imported from <file>", classes kept), with the
    ``SlideLabels`` the widget writes through. Level 0 is never held in memory."""
    from medsam_core.geojson import rasterise_geojson_to_store

    from ._slide_plane import TILE

    name = Path(path).name
    found = _in_new_folder(name, lambda dest: rasterise_geojson_to_store(path, dest, plane_shape(image), chunk=TILE))
    for why in found.skipped:
        log.warning("napari-medsam: %s: %s", name, why)
    return slide_layer_tuple(found.labels, found.extents, name, name, found.classes,
                             list(image.scale[-2:]), list(image.translate[-2:]))


def copied_slide_labels(level0, source: str, name: str, scale) -> tuple:
    """(levels, kwargs, "labels") for whole-slide labels another tool wrote (an OME-Zarr's ``labels/``
    group): copied tile by tile into a new store of the widget's (``labelstore.copy_to_store``), so
    corrections never write into that file; marked imported from ``source``."""
    from medsam_core.labelstore import copy_to_store

    from ._slide_plane import TILE

    store, extents = _in_new_folder(name, lambda dest: copy_to_store(level0, dest, chunk=TILE))
    return slide_layer_tuple(store, extents, source, name, {}, list(scale), None)


def _in_new_folder(name: str, make):
    """``make(dest)`` for a new store in a new slide-labels folder (removed again if it fails); logs the time."""
    import shutil
    import time

    from ._slide_plane import new_labels_folder

    folder = new_labels_folder(name)
    t0 = time.perf_counter()
    try:
        out = make(folder / "labels.ome.zarr")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("napari-medsam: %s: labels on disk in %.1f s (%s)", name, time.perf_counter() - t0, folder)
    return out


def slide_layer_tuple(store, extents: dict, source: str, name: str, classes: dict, scale, translate) -> tuple:
    """A multiscale Labels layer tuple over ``store`` (in a folder ``_in_new_folder`` made) marked imported
    from ``source`` with its ``SlideLabels`` (removed with the layer of the current viewer)."""
    import napari

    from medsam_core.imported import imported_provenance

    from ._slide_plane import SLIDE_KEY, slide_labels_for, watch_release

    slide = slide_labels_for(store, store.path.parent, extents)
    viewer = napari.current_viewer()
    if viewer is not None:
        watch_release(viewer, slide)
    meta = {IMPORT_KEY: source, SLIDE_KEY: slide, PROV_KEY: imported_provenance(sorted(extents), source, classes)}
    kwargs = {"name": name, "multiscale": True, "metadata": meta, "scale": scale}
    if translate is not None:
        kwargs["translate"] = translate
    return (list(store.levels), kwargs, "labels")
