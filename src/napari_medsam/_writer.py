"""npe2 writers: a Labels layer to TIFF (ImageJ, spacing kept) or NIfTI (spacing and affine kept).

Signature of npe2 single-layer writers: ``writer(path, data, meta) -> [paths written]`` where
``meta`` is the layer's attributes (``scale``, ``metadata``, ...). Where the labels came from an
image opened by this plugin, ``meta["metadata"]["medsam_io_meta"]`` carries that image's
ImageMeta (NIfTI affine and header), reused when the labels have the image's shape. Spacing is
the layer's ``scale`` when it is not all ones, else the stored image spacing. Writes are atomic
(``medsam_core.io.write_labels``). A layer carrying provenance (``meta["metadata"]["medsam_provenance"]``)
also gets its sidecar ``<name>.provenance.json``, synced with the labels written and written
atomically; a provenance failure warns and leaves the labels file written.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from medsam_core import check_output
from medsam_core.errors import ImageError, MedSAMError
from medsam_core.io import ImageMeta, write_labels

from ._reader import EVENTS_KEY, LABELS_FILE_KEY, META_KEY, PROV_KEY
from ._slide_plane import SLIDE_KEY, mark_saved

log = logging.getLogger(__name__)


class SaveRefused(MedSAMError):
    """Why the labels were not saved (nothing written). Deliberately not a ValueError: napari takes
    a writer's ValueError for "this plugin cannot write that" and tells the user only that the
    plugin "is not a valid writer", dropping the reason (a wrong suffix, 4D labels, the output
    being the image itself)."""


def _shown(writer):
    """Re-raise the writer's refusals (ImageError, PromptError: ValueErrors) as SaveRefused."""

    @functools.wraps(writer)
    def wrapped(path: str, data, meta: dict) -> list[str]:
        try:
            return writer(path, data, meta)
        except (MedSAMError, ValueError) as exc:
            if isinstance(exc, SaveRefused):
                raise
            raise SaveRefused(f"{Path(path).name} was not saved: {exc}") from exc

    return wrapped


def labels_meta(data, meta: dict | None) -> ImageMeta:
    """ImageMeta for writing ``data`` ((Y, X) or (Z, Y, X) labels) from a layer's attributes."""
    meta = meta or {}
    arr = np.asarray(data)
    stored = (meta.get("metadata") or {}).get(META_KEY)
    image_meta = ImageMeta.from_dict(stored) if stored else None
    if image_meta is not None and image_meta.shape is not None and tuple(image_meta.shape) != arr.shape:
        log.warning("labels %s do not have the shape of the image %s they were drawn on; writing "
                    "them without its affine", arr.shape, tuple(image_meta.shape))
        image_meta = None
    scale = meta.get("scale")
    spacing = None
    if scale is not None and len(scale) >= arr.ndim:
        sc = tuple(float(s) for s in list(scale)[-arr.ndim:])
        if any(s != 1.0 for s in sc):
            spacing = sc
    if image_meta is None:
        return ImageMeta(spacing=spacing or (1.0,) * arr.ndim, axes="ZYX"[3 - arr.ndim:], shape=arr.shape)
    if spacing is not None and image_meta.affine is None:
        image_meta = replace(image_meta, spacing=spacing)
    return image_meta


def _write(path: str, data, meta: dict | None, suffixes: tuple[str, ...]) -> list[str]:
    name = Path(path).name.lower()
    if not Path(name).suffix:  # File > Save suggests the layer's name without an extension
        path, name = str(path) + suffixes[0], name + suffixes[0]
    if not any(name.endswith(s) for s in suffixes):
        raise ImageError(f"cannot save labels as {Path(path).name}: use a {' or '.join(suffixes)} file name")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise ImageError(f"only 2D (Y, X) or 3D (Z, Y, X) labels can be saved, got shape {arr.shape}")
    layer_meta = (meta or {}).get("metadata") or {}
    source = layer_meta.get(META_KEY) or {}
    source = source.get("source") if isinstance(source, dict) else getattr(source, "source", None)
    if source and layer_meta.get(LABELS_FILE_KEY) and _same_file(source, layer_meta[LABELS_FILE_KEY]):
        source = None  # these labels were read from that file: saving them back over it is a plain save
    check_output(path, inputs=(source,), what="labels file")  # never the image the labels were drawn on
    out = write_labels(path, arr, labels_meta(arr, meta))
    return [str(out), *write_provenance(out, arr, (meta or {}).get("metadata"))]


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, TypeError, ValueError):
        return False


def write_provenance(labels_path, arr: np.ndarray, layer_metadata: dict | None) -> list[str]:
    """Write a Labels layer's provenance and effort log (from its ``metadata``) beside
    ``labels_path``, synced with ``arr``; -> [the sidecar path], or [] if it has none or it failed
    (warned: the labels file stays written). Used by the npe2 writers and the image series."""
    from medsam_core.effort import attach_events
    from medsam_core.provenance import Provenance, sidecar_path

    layer_meta = layer_metadata or {}
    prov = layer_meta.get(PROV_KEY)
    if prov is None:
        if sidecar_path(labels_path).exists():
            _warn(f"{sidecar_path(labels_path).name} is left from an earlier file: it does not describe "
                  f"the labels just written to {Path(labels_path).name}; delete it")
        return []
    try:
        prov = Provenance.from_dict(prov) if isinstance(prov, dict) else prov
        prov.sync_with_labels(arr)  # a person's edits since the last refresh are flagged now
        if layer_meta.get(EVENTS_KEY) is not None:  # the effort log travels with the records
            attach_events(prov, layer_meta[EVENTS_KEY])
        return [str(prov.save(labels_path))]
    except (MedSAMError, OSError, ValueError, AttributeError) as exc:
        _warn(f"labels saved to {Path(labels_path).name}, but not their provenance: {exc}")
        return []


def _warn(msg: str) -> None:
    log.warning(msg)
    warnings.warn(f"napari-medsam: {msg}", stacklevel=3)


@_shown
def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer to an ImageJ TIFF (zlib, spacing kept). Returns the paths written."""
    return _write(path, data, meta, (".tif", ".tiff"))


def _level0(data):
    """A Labels layer's full-resolution data (level 0 of a multiscale layer), not copied."""
    if isinstance(data, list | tuple):
        return data[0]
    if type(data).__name__ == "MultiScaleData":  # what napari hands a writer for a multiscale layer
        return data[0]
    return data


def _layer_name(meta: dict | None) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str((meta or {}).get("name") or "medsam")).strip("._") or "medsam"
    return name


@_shown
def write_labels_zarr(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer as an NGFF image-label: into ``path/labels/<layer name>`` when
    ``path`` is an OME-Zarr image (the slide the labels were drawn on), else as a new store at
    ``path`` (``.zarr`` added when missing). Chunk-wise (a zarr-backed layer is never loaded whole),
    atomic per label image; the provenance sidecar is written beside it. Returns the paths written."""
    from medsam_core.ngff import is_ngff, write_ngff_labels

    arr = _level0(data)
    if len(arr.shape) != 2:
        raise ImageError(f"OME-Zarr labels are written from 2D (Y, X) labels; got shape {tuple(arr.shape)}")
    if not str(path).lower().endswith(".zarr"):
        path = str(path) + ".zarr"
    stored = ((meta or {}).get("metadata") or {}).get(META_KEY) or {}
    spacing = list((meta or {}).get("scale") or [])[-2:] or list(stored.get("spacing") or [1.0, 1.0])[-2:]
    unit = {"um": "micrometer", "mm": "millimeter"}.get(stored.get("unit", ""), stored.get("unit", ""))
    dest = Path(path)
    if is_ngff(dest):
        out = write_ngff_labels(dest, arr, name=_layer_name(meta), overwrite=True)
    else:
        source = stored.get("source") if isinstance(stored, dict) else None
        if dest.is_dir():  # an earlier labels store of ours: replaced atomically, never an input
            if source and dest.resolve() == Path(source).resolve():
                raise ImageError(f"{dest.name} is the image these labels were drawn on: choose another name")
        else:
            check_output(path, inputs=(source,), what="labels store")
        out = write_ngff_labels(dest, arr, name=_layer_name(meta), spacing=spacing, unit=unit, overwrite=True)
    small = arr.shape[0] * arr.shape[1] <= 4096 * 4096  # provenance syncs with the pixels in memory
    side = write_provenance(out, np.asarray(arr), (meta or {}).get("metadata")) if small else []
    mark_saved((meta or {}).get("metadata"))  # a slide's labels folder may go with its layer now
    return [str(out), *side]


@_shown
def write_labels_geojson(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer as a GeoJSON FeatureCollection of polygons (QuPath), class names from
    the layer's provenance when it has one. Returns the paths written."""
    from medsam_core.geojson import write_geojson

    arr = _level0(data)
    if not str(path).lower().endswith((".geojson", ".json")):
        path = str(path) + ".geojson"
    check_output(path, what="GeoJSON file")
    prov = ((meta or {}).get("metadata") or {}).get(PROV_KEY)
    classes = {}
    if prov is not None and hasattr(prov, "records"):
        names = prov.classes.names
        classes = {lid: names.get(rec.class_id, "") for lid, rec in prov.records.items()}
    slide = ((meta or {}).get("metadata") or {}).get(SLIDE_KEY)
    regions = None if slide is None else [w for ws in slide.extents.values() for w in ws]  # never scan a slide
    out = write_geojson(path, arr, classes, regions=regions)
    mark_saved((meta or {}).get("metadata"))
    return [str(out)]


@_shown
def write_labels_nifti(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer to NIfTI (affine/header of the source image if known). Returns the paths."""
    return _write(path, data, meta, (".nii", ".nii.gz"))
