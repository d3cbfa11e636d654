"""Read images and volumes with their spacing; write instance labels that overlay them exactly.

Axis conventions: arrays come back spatial axes first in (Z, Y, X) / (Y, X) order, channels (if
any) last, other axes (e.g. T) in front; ``ImageMeta.axes`` names them, e.g. "YX", "ZYX", "YXC".
``ImageMeta.spacing`` has one value per spatial axis in the same order ((z, y, x) or (y, x)).

NIfTI: nibabel arrays are (x, y, z); ``read_image`` returns their transpose (z, y, x) and keeps
the original 4x4 affine and header, and ``write_labels`` transposes back before writing with
that affine, so the labels overlay the image voxel for voxel in ITK-SNAP, 3D Slicer or nibabel.

tifffile, nibabel and scikit-image are imported inside functions (cheap package import).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import mkstemp_readable
from ._paths import split_suffix
from .errors import ImageError, OutputError

TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
READ_SUFFIXES = TIFF_SUFFIXES + NIFTI_SUFFIXES + (".npz",) + RASTER_SUFFIXES
# ImageJ writes micrometres as "micron" or an escaped "\u00B5m"; OME as the micro sign or Greek mu.
_UNIT_ALIASES = {"micron": "um", "microns": "um", "\u00b5m": "um", "\u03bcm": "um", "\\u00b5m": "um",
                 "pixel": "", "pixels": ""}


@dataclass
class ImageMeta:
    """What a reader learned about an image, and what a writer needs to write labels back.

    spacing: size of a pixel per spatial axis, (z, y, x) or (y, x); 1.0 where unknown.
    unit: spacing unit ("um", "mm", ...) or "" when unknown.
    axes: one letter per array axis, spatial axes in Z, Y, X order, "C" for channels (last).
    affine: NIfTI voxel (i, j, k) -> world 4x4 matrix, where i/j/k are the file's x/y/z axes;
        None for other formats.
    nifti_header: the raw NIfTI header bytes (348 for NIfTI-1, 540 for NIfTI-2), to write back.
    source: the path read. shape: the spatial shape of the array returned.
    """

    spacing: tuple[float, ...]
    axes: str
    unit: str = ""
    affine: np.ndarray | None = None
    nifti_header: bytes | None = None
    source: str | None = None
    shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-Python form (lists, bytes), e.g. for a napari layer's metadata."""
        return {
            "spacing": list(self.spacing), "axes": self.axes, "unit": self.unit,
            "affine": None if self.affine is None else np.asarray(self.affine, float).tolist(),
            "nifti_header": self.nifti_header, "source": self.source,
            "shape": None if self.shape is None else list(self.shape), "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict | ImageMeta) -> ImageMeta:
        if isinstance(d, ImageMeta):
            return d
        aff = d.get("affine")
        shape = d.get("shape")
        return cls(
            spacing=tuple(float(s) for s in d.get("spacing") or ()), axes=str(d.get("axes", "")),
            unit=str(d.get("unit") or ""), affine=None if aff is None else np.asarray(aff, float),
            nifti_header=d.get("nifti_header"), source=d.get("source"),
            shape=None if shape is None else tuple(int(s) for s in shape), extra=dict(d.get("extra") or {}),
        )


def _suffix(path: Path) -> str:
    return split_suffix(path, (".nii.gz",))[1]


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read a TIFF, NIfTI (.nii/.nii.gz), .npz (key 'image') or PNG/JPEG file -> (array, ImageMeta).

    Raises ImageError for a missing, unreadable, corrupt or unsupported file.
    """
    path = Path(path).expanduser()
    suffix = _suffix(path)
    if path.is_dir():  # before the suffix: a folder named "data" is a folder, not an unknown file type
        raise ImageError(f"{path} is a directory, not an image file: give a file inside it")
    if suffix not in READ_SUFFIXES:
        raise ImageError(f"cannot read {path.name}: unsupported file type; use one of {', '.join(READ_SUFFIXES)}")
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist (check the path)")
    readers = {".npz": _read_npz, ".nii": _read_nifti, ".nii.gz": _read_nifti}
    reader = readers.get(suffix, _read_tiff if suffix in TIFF_SUFFIXES else _read_raster)
    try:
        data, meta = reader(path)
    except ImageError:
        raise
    except Exception as exc:  # the libraries raise many types for corrupt files
        if "imagecodecs" in str(exc):  # a complete file in a compression this install cannot decode
            raise ImageError(f"cannot read {path}: {exc}. The file is fine; install the codecs with "
                             "`pip install imagecodecs` (a dependency of napari-medsam: reinstall it)") from None
        raise ImageError(
            f"cannot read {path}: {type(exc).__name__}: {exc}. Is the file complete and really a {suffix} file?"
        ) from exc
    if data.size == 0:
        raise ImageError(f"{path} holds an empty image (shape {data.shape})")
    meta.source = str(path)
    meta.shape = tuple(int(data.shape[i]) for i, a in enumerate(meta.axes) if a in "ZYX")
    return data, meta


def probe_spatial_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The spatial shape ``read_image(path)`` would report, from the header where that is cheap (NIfTI)."""
    path = Path(path).expanduser()
    if _suffix(path) in NIFTI_SUFFIXES:
        try:
            import nibabel as nib

            shape = tuple(int(s) for s in nib.load(str(path)).shape)
        except Exception as exc:
            raise ImageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        if len(shape) == 3 and shape[2] == 1:
            shape = shape[:2]
        return tuple(reversed(shape[: min(len(shape), 3)]))
    return tuple(read_image(path)[1].shape or ())


# -- TIFF --------------------------------------------------------------------------------------
def _read_tiff(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_imagej_planes(tif, series, path)
        _warn_other_series(tif, path)
        data = series.asarray()
        axes = series.axes.upper()
        spacing, unit = _tiff_spacing(tif)
    data, axes = _normalise_axes(data, axes)
    n_spatial = sum(a in "ZYX" for a in axes)
    # spacing is read as (z, y, x); keep the trailing values for the spatial axes present.
    spacing = tuple(spacing[3 - n_spatial:])
    return data, ImageMeta(spacing=spacing, axes=axes, unit=unit)


def _warn_other_series(tif, path: Path) -> None:
    """Several image series of one size (stage positions, a plate's wells) in one file: only the
    first is read. Said, not silent (a later box on another position was refused as "outside")."""
    import warnings

    series = tif.series
    if len(series) < 2:
        return
    first = series[0]
    yx = {a: n for a, n in zip(first.axes.upper(), first.shape, strict=True) if a in "YX"}
    alike = [s for s in series[1:] if {a: n for a, n in zip(s.axes.upper(), s.shape, strict=True) if a in "YX"}
             and all(dict(zip(s.axes.upper(), s.shape, strict=True)).get(a, 0) >= n for a, n in yx.items())]
    if alike:  # (thumbnails, labels and macro images of a slide are smaller: not counted)
        warnings.warn(f"{path.name} holds {len(alike) + 1} image series; only the first is read "
                      f"({'x'.join(map(str, first.shape))}). Save each series as its own file to segment it",
                      UserWarning, stacklevel=4)


def _check_imagej_planes(tif, series, path: Path) -> None:
    """A stack cut short (an interrupted copy) read without an error: an ImageJ stack as its first
    plane alone, with only a log line from tifffile (compare the planes found with the count its
    metadata states); contiguous data as zeros where the file ends."""
    meta = tif.imagej_metadata if tif.is_imagej else None
    try:
        stated = int((meta or {}).get("images", 1))
    except (TypeError, ValueError):
        return
    found = int(np.prod([n for a, n in zip(series.axes.upper(), series.shape, strict=True) if a not in "YXS"]))
    if stated > 1 and found < stated:
        raise ImageError(f"cannot read {path.name}: an ImageJ stack of {stated} images, but only {found} could be "
                         "read: the file is truncated or damaged; copy it again from its source")
    size = path.stat().st_size
    offset = getattr(series, "dataoffset", None)  # contiguous data (tifffile's and ImageJ's stacks)
    if offset is not None and not getattr(series, "is_multifile", False) and offset + series.nbytes > size:
        raise ImageError(f"cannot read {path.name}: the file ends {offset + series.nbytes - size} bytes before its "
                         "image data does (truncated); copy it again from its source")


def _normalise_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Squeeze singleton non-spatial axes, call a lone unnamed stack axis Z, move channels last."""
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    axes = axes.replace("S", "C")
    if _unnamed_channels_last(data, axes):
        axes = "YXC"
    if "Z" not in axes:
        for stack in "IQ":
            if axes.count(stack) == 1:
                axes = axes.replace(stack, "Z")
                break
    if "C" in axes and axes.count("C") == 1 and not axes.endswith("C"):
        data = np.moveaxis(data, axes.index("C"), -1)
        axes = axes.replace("C", "") + "C"
    return data, axes


def _unnamed_channels_last(data: np.ndarray, axes: str) -> bool:
    """An (H, W, C) array written without metadata (e.g. ``tifffile.imwrite(f, rgb2)`` with C = 2
    or C > 4) comes back as C-pixel-wide "pages" (axes QYX): that is H x W with C channels, not
    a stack of H images of W x C pixels."""
    if data.ndim != 3 or axes not in ("QYX", "IYX"):
        return False
    h, w, c = data.shape
    return c <= 16 and h > c and w > c


def _tiff_spacing(tif) -> tuple[tuple[float, float, float], str]:
    """(z, y, x) spacing and unit from OME, ImageJ, tifffile-shaped metadata or resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        found = _ome_spacing(tif.ome_metadata)
        if found is not None:
            return found
    page = tif.pages[0]
    sz = 1.0
    unit = ""
    ij = tif.imagej_metadata or {}
    shaped = (tif.shaped_metadata or [{}])[0] if tif.is_shaped else {}
    if "spacing" in shaped and len(np.atleast_1d(shaped["spacing"])) >= 2:
        sp = [float(s) for s in np.atleast_1d(shaped["spacing"])]
        return (tuple([1.0] * (3 - len(sp)) + sp)[-3:]), _unit(shaped.get("unit", ""))
    if ij:
        sz = float(ij.get("spacing", 1.0) or 1.0)
        unit = _unit(ij.get("unit", ""))
    sy, sx = _tag_spacing(page, "YResolution"), _tag_spacing(page, "XResolution")
    res_unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
    if not ij:
        # Only physical units are trusted; the common 72 dpi default says nothing about pixel size.
        factor = {3: 1e4, 4: 1e3, 5: 1.0}.get(res_unit)  # centimetre, millimetre, micrometre -> um
        if factor is None:
            return (1.0, 1.0, 1.0), ""
        sy, sx, unit = sy * factor, sx * factor, "um"
    return (sz, sy, sx), unit


def _tag_spacing(page, name: str) -> float:
    if name not in page.tags:
        return 1.0
    value = page.tags[name].value
    num, den = value if isinstance(value, tuple) else (value, 1)
    return float(den) / float(num) if num else 1.0


def _ome_spacing(xml: str) -> tuple[tuple[float, float, float], str] | None:
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    get = pixels.attrib.get
    spacing = tuple(float(get(f"PhysicalSize{a}", 1.0)) for a in "ZYX")
    return spacing, _unit(get("PhysicalSizeXUnit", "um"))


def _unit(unit: Any) -> str:
    text = str(unit or "").strip()
    return _UNIT_ALIASES.get(text.lower(), _UNIT_ALIASES.get(text, text))


# -- NIfTI, npz, PNG/JPEG ------------------------------------------------------------------------
def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(f"{path} is not a NIfTI-1/2 image")
    data = np.asanyarray(img.dataobj)
    zooms = [float(z) for z in img.header.get_zooms()]
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1): one time point, as converters write it
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:  # a 2D image stored as (x, y, 1)
        data = data[..., 0]
    n_spatial = min(data.ndim, 3)
    # (x, y, z[, t, ...]) -> ([..., t,] z, y, x): the full transpose reverses every axis.
    data = np.ascontiguousarray(data.T)
    axes = "TUVW"[: data.ndim - n_spatial][::-1] + "ZYX"[3 - n_spatial:]
    spacing = tuple(reversed(zooms[:n_spatial]))
    xyz_unit, _ = img.header.get_xyzt_units()
    unit = {"mm": "mm", "micron": "um", "meter": "m"}.get(xyz_unit or "", "")
    meta = ImageMeta(spacing=spacing, axes=axes, unit=unit, affine=np.asarray(img.affine, float),
                     nifti_header=bytes(img.header.binaryblock))
    return data, meta


def _read_npz(path: Path) -> tuple[np.ndarray, ImageMeta]:
    with np.load(path, allow_pickle=False) as d:
        if "image" not in d.files:
            raise ImageError(f"{path} has no array named 'image' (found: {', '.join(d.files) or 'none'})")
        data = np.asarray(d["image"])
        spacing = tuple(float(s) for s in d["spacing"]) if "spacing" in d.files else None
    axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(data.ndim)
    if axes is None:
        raise ImageError(f"{path}: 'image' has shape {data.shape}; expected 2D (Y, X) or 3D (Z, Y, X)")
    if data.ndim == 3 and data.shape[2] in (3, 4) and min(data.shape[:2]) >= 16 and (spacing is None or len(spacing) == 2):
        axes = "YXC"  # (H, W, 3|4): a colour picture, not a stack three pixels wide
    n_spatial = 2 if axes == "YXC" else min(data.ndim, 3)
    if spacing is None or len(spacing) != n_spatial:
        spacing = (1.0,) * n_spatial
    return data, ImageMeta(spacing=spacing, axes=axes)


def _read_raster(path: Path) -> tuple[np.ndarray, ImageMeta]:
    from skimage import io as skio

    data = np.asarray(skio.imread(str(path)))
    if data.ndim == 3 and data.shape[-1] == 4 and data.dtype == np.uint8 and (data[..., 3] == 255).all():
        data = data[..., :3]  # an opaque alpha channel carries nothing
    if data.ndim not in (2, 3):
        raise ImageError(f"{path}: unexpected image shape {data.shape}")
    return data, ImageMeta(spacing=(1.0, 1.0), axes="YX" if data.ndim == 2 else "YXC")


# -- writing labels ------------------------------------------------------------------------------
def label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest unsigned integer type (uint8/16/32) that holds every label value."""
    top = int(labels.max()) if labels.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ImageError(f"label value {top} does not fit in uint32; renumber the labels (skimage relabel_sequential)")


def check_labels(labels) -> np.ndarray:
    """Validate an integer/bool label image (2D or 3D, values >= 0) -> the smallest unsigned copy."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ImageError("labels must hold whole numbers; got non-integer floats")
    elif arr.dtype.kind not in "ui":
        raise ImageError(f"labels of dtype {arr.dtype} cannot be written; pass an integer array")
    if arr.ndim not in (2, 3):
        raise ImageError(f"labels must be 2D (Y, X) or 3D (Z, Y, X); got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ImageError("labels must be >= 0 (0 = background); got negative values")
    return arr.astype(label_dtype(arr), copy=False)


def write_labels(path: str | os.PathLike, labels, meta: ImageMeta | dict | None = None) -> Path:
    """Write (Y, X) or (Z, Y, X) instance labels to .tif/.tiff or .nii/.nii.gz, atomically.

    meta: from ``read_image`` (or its ``to_dict()``): spacing is kept; for NIfTI the affine and
    header are reused so the labels overlay the image. Labels are stored as uint8/16/32, the
    smallest type that fits. Bad input raises ImageError before anything is written; a failed
    write leaves an existing file at ``path`` untouched.
    """
    path = Path(path).expanduser()
    suffix = _suffix(path)
    if suffix in (".zarr", ".geojson"):  # OME-Zarr labels / QuPath polygons (chunk- or object-wise)
        return _write_slide_labels(path, labels, meta)
    if suffix not in TIFF_SUFFIXES + NIFTI_SUFFIXES:
        raise ImageError(f"cannot write labels to {path.name}: use a .tif, .tiff, .nii, .nii.gz, .zarr or "
                         ".geojson name")
    arr = check_labels(labels)
    meta = ImageMeta.from_dict(meta) if meta is not None else None
    spacing = _labels_spacing(arr, meta)
    if path.is_dir():
        raise ImageError(f"cannot write labels to {path}: it is a folder; give a file name")
    if not path.parent.is_dir():
        raise ImageError(f"folder {path.parent} does not exist; create it first")
    try:
        fd, tmp = mkstemp_readable(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write labels to {path}: {exc.strerror or exc}; nothing was written") from None
    os.close(fd)
    try:
        if suffix in TIFF_SUFFIXES:
            _write_tiff(tmp, arr, spacing, meta.unit if meta else "")
        else:
            _write_nifti(tmp, arr, spacing, meta)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a folder made read-only meanwhile
        Path(tmp).unlink(missing_ok=True)
        kept = " (the existing file is unchanged)" if path.exists() else ""
        raise OutputError(f"cannot write labels to {path}: {exc.strerror or exc}{kept}; free some space or "
                          "choose another folder") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_slide_labels(path: Path, labels, meta) -> Path:
    """2D labels (numpy or zarr, never loaded whole) -> an NGFF image-label or a GeoJSON file."""
    meta = ImageMeta.from_dict(meta) if meta is not None else None
    if path.suffix.lower() == ".geojson":
        from .geojson import write_geojson

        return write_geojson(path, labels)
    from .ngff import write_ngff_labels

    spacing = tuple(meta.spacing[-2:]) if meta and len(meta.spacing) >= 2 else (1.0, 1.0)
    unit = {"um": "micrometer", "mm": "millimeter"}.get(meta.unit, meta.unit) if meta else ""
    return write_ngff_labels(path, labels, spacing=spacing, unit=unit, overwrite=True)


def _labels_spacing(arr: np.ndarray, meta: ImageMeta | None) -> tuple[float, ...]:
    if meta is None or not meta.spacing:
        return (1.0,) * arr.ndim
    if meta.shape is not None and tuple(meta.shape) != arr.shape:
        raise ImageError(
            f"labels of shape {arr.shape} do not match the image they belong to ({tuple(meta.shape)}); "
            "write labels with the image's spatial shape"
        )
    sp = tuple(meta.spacing)
    return sp[-arr.ndim:] if len(sp) >= arr.ndim else (1.0,) * (arr.ndim - len(sp)) + sp


def _write_tiff(tmp: str, arr: np.ndarray, spacing: tuple[float, ...], unit: str) -> None:
    import tifffile

    sy, sx = spacing[-2:]
    axes = "ZYX" if arr.ndim == 3 else "YX"
    if arr.dtype != np.uint32:  # ImageJ hyperstacks hold 8/16-bit (and float) only
        md = {"axes": axes, "unit": unit or "pixel"}
        if arr.ndim == 3:
            md["spacing"] = float(spacing[0])
        tifffile.imwrite(tmp, arr, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=md,
                         compression="zlib")
    else:
        md = {"axes": axes, "spacing": [float(s) for s in spacing], "unit": unit}
        tifffile.imwrite(tmp, arr, resolution=(1.0 / sx, 1.0 / sy), metadata=md, compression="zlib")


def _write_nifti(tmp: str, arr: np.ndarray, spacing: tuple[float, ...], meta: ImageMeta | None) -> None:
    import nibabel as nib

    header = None
    if meta is not None and meta.nifti_header:
        cls = nib.Nifti2Header if len(meta.nifti_header) == 540 else nib.Nifti1Header
        header = cls(binaryblock=meta.nifti_header)
    if meta is not None and meta.affine is not None:
        affine = np.asarray(meta.affine, float)
    else:  # no orientation known: axis-aligned voxels of the given spacing
        zyx = (1.0,) * (3 - len(spacing)) + tuple(spacing)  # a 2D (y, x) spacing is one slice of 1
        affine = np.diag([*reversed(zyx), 1.0])
    data = arr.T if arr.ndim == 3 else arr.T[..., None]  # (z, y, x) -> (x, y, z)
    image_cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_cls(np.asarray(data), affine, header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label")
    if header is None:
        # NIfTI's units: mm, micron, meter; a TIFF's um spacing otherwise read back unit-less (as mm elsewhere)
        unit = {"mm": "mm", "um": "micron", "m": "meter"}.get(meta.unit if meta else "", "unknown")
        img.header.set_xyzt_units(unit)
    nib.save(img, tmp)
