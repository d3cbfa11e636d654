"""npe2 reader: TIFF (ImageJ/OME pixel size) and NIfTI (spacing, affine kept) to napari layers.

``napari_get_reader(path)`` returns a reader function for a file it can open, else None; it
never raises. Arrays come from ``medsam_core.io.read_image``: spatial axes (Z, Y, X) / (Y, X),
channels last; NIfTI volumes are transposed from nibabel's (x, y, z) to (z, y, x). The layer's
``scale`` is the spacing, and ``metadata["medsam_io_meta"]`` holds ``ImageMeta.to_dict()`` (the
NIfTI affine and header included) so the labels writer can write labels that overlay the file.

Whole-slide images open lazily as napari multiscale layers (only what is on screen is read):
pyramidal TIFF (OME-TIFF, SVS, NDPI, tiled BigTIFF; tifffile's zarr store) and OME-Zarr folders
(NGFF multiscales; ``medsam_core.wsi``). 8-bit RGB stays one RGB layer; other channels become
one layer each, named after the channel. The label images of an OME-Zarr's ``labels/`` group
(and a store that is itself an NGFF image-label) open as multiscale Labels layers, with their
provenance sidecar when there is one; a whole slide's (a plane larger than the widget keeps in
memory) are copied tile by tile into a store of the widget's, marked imported, so the widget can
correct them without writing into the file (``_import_reader.copied_slide_labels``). ``metadata["medsam_pyramid"]`` holds the ``Pyramid``.

Label images of other tools (``*_cp_masks.tif``, ``*_labels.tif``, ...) and QuPath GeoJSON open as
Labels layers marked imported, for correction in the widget (``_import_reader``).

A file with a provenance sidecar beside it (``labels.provenance.json``, see
``medsam_core.provenance``) is a labels file: it opens as a Labels layer whose
``metadata["medsam_provenance"]`` holds the loaded ``Provenance``. A corrupt sidecar is skipped
with a warning (the labels still open, without provenance).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from medsam_core.errors import MedSAMError
from medsam_core.io import NIFTI_SUFFIXES, TIFF_SUFFIXES, ImageMeta, read_image

log = logging.getLogger(__name__)

META_KEY = "medsam_io_meta"
PROV_KEY = "medsam_provenance"  # a Labels layer's medsam_core.provenance.Provenance
EVENTS_KEY = "medsam_effort_events"  # a Labels layer's list of medsam_core.effort.Event (saved in the sidecar)
PYRAMID_KEY = "medsam_pyramid"  # an image layer's medsam_core.wsi.Pyramid (lazy levels)
SUFFIXES = TIFF_SUFFIXES + NIFTI_SUFFIXES
SLIDE_SUFFIXES = (".svs", ".ndpi", ".btf", ".tf8", ".scn", ".bif")


def _suffix(path: str) -> str:
    from medsam_core import split_suffix

    return split_suffix(path, (".nii.gz",))[1]


def _stem(path: str) -> str:
    name = Path(path).name
    return name[: -len(_suffix(path))] if _suffix(path) else name


def _openable(path: str) -> bool:
    """Cheap check (headers only) that ``path`` is a TIFF or NIfTI file we can open."""
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return len(tif.series) > 0
        import nibabel as nib

        img = nib.load(path)
        return isinstance(img, nib.Nifti1Image | nib.Nifti2Image)
    except Exception:  # noqa: BLE001 - a reader must not raise for what it cannot read
        return False


def napari_get_reader(path):
    """A reader function for one .tif/.tiff/.nii/.nii.gz path (or a list of them), else None."""
    paths = [path] if isinstance(path, str | Path) else list(path or [])
    if not paths:
        return None
    paths = [str(p) for p in paths]
    if len(paths) == 1 and paths[0].lower().endswith(".geojson"):
        from ._import_reader import geojson_reader

        return geojson_reader(paths[0])
    if all(_is_slide(p) for p in paths):
        return _make_slide_reader(paths)
    if not all(_suffix(p) in SUFFIXES and Path(p).is_file() and _openable(p) for p in paths):
        return None
    return _make_reader(paths)


def _is_slide(path: str) -> bool:
    """An OME-Zarr folder or a pyramidal/huge tiled TIFF (metadata only; never raises)."""
    from medsam_core.wsi import is_pyramid_path

    return is_pyramid_path(path)


def _make_slide_reader(paths: list[str]):
    def reader(_path=None):
        layers = []
        for p in paths:
            try:
                layers += slide_layers(p)
            except MedSAMError as exc:
                log.warning("napari-medsam could not read %s: %s", p, exc)
                return None
        return layers

    return reader


def slide_layers(path: str) -> list[tuple]:
    """Layer data tuples for a pyramidal TIFF or an OME-Zarr (image + its labels), all lazy."""
    from medsam_core.ngff import label_names, open_ngff
    from medsam_core.wsi import channel_view, open_pyramid, pyramid_meta

    p = Path(path)
    name = p.name.split(".")[0] or p.name
    if p.is_dir() and open_ngff(p).is_label:
        return [_slide_labels(p, None, name)]
    pyr = open_pyramid(p)
    meta = pyramid_meta(pyr)
    base = {"multiscale": True, "scale": list(pyr.spacing), "metadata": {META_KEY: meta.to_dict(), PYRAMID_KEY: pyr}}
    if pyr.rgb or len(pyr.shape) == 2:
        layers = [(pyr.levels, {**base, "name": name, "rgb": pyr.rgb}, "image")]
    else:
        names = pyr.channel_names if len(pyr.channel_names) == pyr.shape[2] else [str(c) for c in range(pyr.shape[2])]
        layers = [([channel_view(lv, c) for lv in pyr.levels], {**base, "name": f"{name} [{names[c]}]",
                                                                "blending": "additive"}, "image")
                  for c in range(pyr.shape[2])]
    if p.is_dir():
        layers += [_slide_labels(p, lab, f"{name} {lab}") for lab in label_names(p)]
    return layers


def _slide_labels(path: Path, label: str | None, name: str) -> tuple:
    from medsam_core.wsi import open_pyramid

    from . import _layers

    pyr = open_pyramid(path, label)
    label_dir = path if label is None else path / "labels" / label
    if len(pyr.shape) == 2 and pyr.shape[0] * pyr.shape[1] > _layers.MAX_PLANE_PIXELS:  # copied to be corrected
        from ._import_reader import copied_slide_labels

        return copied_slide_labels(pyr.levels[0], label_dir.name, name, pyr.spacing)
    kwargs = {"name": name, "multiscale": True, "scale": list(pyr.spacing), "metadata": {PYRAMID_KEY: pyr}}
    small = pyr.shape[0] * pyr.shape[1] <= 4096 * 4096  # provenance checks ids against the pixels
    kwargs["metadata"].update(read_provenance(label_dir, np.asarray(pyr.levels[0]) if small else None))
    return (pyr.levels, kwargs, "labels")


LABELS_FILE_KEY = "medsam_labels_file"  # metadata of a Labels layer read from a labels file: that file


class ReadRefused(MedSAMError):
    """Why a file the plugin claimed could not be opened (truncated, damaged, a missing codec)."""


def _make_reader(paths: list[str]):
    def reader(_path=None):
        layers = []
        for p in paths:
            try:
                data, meta = read_image(p)
            except MedSAMError as exc:  # e.g. corrupt pixel data behind a valid header
                log.warning("napari-medsam could not read %s: %s", p, exc)
                # raised, not None: napari then shows the reason, where None only said the plugin
                # "returned no data" (the reason went to the terminal's log)
                raise ReadRefused(str(exc)) from None
            labels = _labels_with_provenance(p, data, meta) or _imported_labels(p, data, meta)
            if labels is not None:  # a labels file: saving corrections back over it is a plain save
                labels[1]["metadata"][LABELS_FILE_KEY] = str(Path(p).resolve())
            layers.append(labels or layer_data(data, meta, _stem(p)))
        return layers

    return reader


def layer_data(data, meta: ImageMeta, name: str) -> tuple:
    """(data, kwargs, "image") for napari: scale from spacing, channels split if not RGB."""
    kwargs: dict = {"name": name, "metadata": {META_KEY: meta.to_dict()}}
    spatial = [a for a in meta.axes if a != "C"]
    scale = [1.0] * (len(spatial) - len(meta.spacing)) + [float(s) for s in meta.spacing]
    if meta.axes.endswith("C"):
        rgb = data.shape[-1] in (3, 4) and data.dtype.kind == "u" and data.dtype.itemsize == 1
        if rgb:
            kwargs["rgb"] = True
        else:
            kwargs["channel_axis"] = data.ndim - 1
            kwargs["name"] = [f"{name} [{c}]" for c in range(data.shape[-1])]
    kwargs["scale"] = scale
    return (data, kwargs, "image")


def _labels_with_provenance(path: str, data, meta: ImageMeta) -> tuple | None:
    """(data, kwargs, "labels") for an integer 2D/3D file with a provenance sidecar, else None."""
    from medsam_core.provenance import sidecar_path

    side = sidecar_path(path)
    if not side.is_file() or data.dtype.kind not in "biu" or data.ndim not in (2, 3) or "C" in meta.axes:
        return None
    _, kwargs, _ = layer_data(data, meta, _stem(path))
    kwargs["metadata"].update(read_provenance(path, data))
    return (data, kwargs, "labels")


def _imported_labels(path: str, data, meta: ImageMeta) -> tuple | None:
    """A label image of another tool (Cellpose ``*_cp_masks.tif``, ``*_labels.tif``...) as Labels."""
    from ._import_reader import label_file_layer

    _, kwargs, _ = layer_data(data, meta, _stem(path))
    return label_file_layer(path, data, kwargs)


def read_provenance(labels_path, labels) -> dict:
    """Labels-layer metadata entries from the sidecar beside ``labels_path``: {PROV_KEY: Provenance,
    EVENTS_KEY: [Event]}, or {} when there is none or it cannot be read (warned: the labels matter
    more than their history). Used by this reader and the image series."""
    from medsam_core.effort import saved_events
    from medsam_core.provenance import Provenance, sidecar_path

    if not sidecar_path(labels_path).is_file():
        return {}
    try:
        prov = Provenance.load(labels_path, labels)
    except (MedSAMError, OSError, ValueError) as exc:
        msg = f"napari-medsam: opened {Path(labels_path).name} without its provenance: {exc}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
        return {}
    return {PROV_KEY: prov, EVENTS_KEY: saved_events(prov)}
