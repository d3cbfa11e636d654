"""Whole-slide and other pyramidal images, opened lazily: ``open_pyramid(path)`` -> ``Pyramid``.

A ``Pyramid`` is a list of lazy level arrays (level 0 = full resolution), each 2D (Y, X) or
channels-last (Y, X, C), with the pixel size, unit, channel names and whether it is RGB. It is
accepted as is by ``roi.predict_boxes`` / ``roi.segment_large`` (a sequence of arrays), which
read only the crops they need from level 0 and take the intensity window from the coarsest
level (``roi.global_intensity``).

Sources (maintained libraries only, no hand-written pyramid decoding):
- pyramidal TIFF (OME-TIFF, SVS, NDPI, generic tiled BigTIFF): tifffile's zarr store
  (``series.aszarr()``) opened with ``zarr`` -- one zarr array per pyramid level; the TiffFile
  stays open while the Pyramid lives (``close()`` or a ``with`` block releases it).
- OME-Zarr (NGFF multiscales, ``ngff.open_ngff``); channels (NGFF keeps them as axis "c")
  are moved last by ``ChannelsLast``, a view that reads only the region asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError

#: A single-plane TIFF larger than this (pixels) is opened lazily too (e.g. a 40,000^2 stitched scan).
LAZY_PIXELS = 8192 * 8192
PYRAMID_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn", ".bif")


class ChannelsLast:
    """A lazy view of an array with its non-(y, x) axes fixed or moved: (…, C, …, Y, X) -> (Y, X[, C]).

    array: the source (zarr) array; axes: its axis names (e.g. "tczyx"); fixed: positions of the
    axes that are neither y, x nor c (e.g. {"t": 0, "z": 3}). Indexing reads only the region.
    """

    def __init__(self, array, axes: str, fixed: dict[str, int] | None = None):
        self.array, self.src_axes, self.fixed = array, axes, dict(fixed or {})
        self.axes = "yx" + ("c" if "c" in axes and "c" not in self.fixed else "")
        shape = dict(zip(axes, (int(s) for s in array.shape), strict=True))
        self.shape = tuple(shape[a] for a in self.axes)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        by_axis = dict(zip(self.axes, key, strict=True))
        src_key = tuple(self.fixed.get(a, by_axis.get(a, slice(None))) for a in self.src_axes)
        block = np.asarray(self.array[src_key])
        kept = [a for a in self.src_axes if a not in self.fixed and not isinstance(by_axis.get(a), int | np.integer)]
        want = [a for a in self.axes if a in kept]
        return np.transpose(block, [kept.index(a) for a in want]) if kept != want else block

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


@dataclass
class Pyramid:
    """A lazily read multiscale image. levels: list of (Y, X) or (Y, X, C) array-likes, level 0
    first; spacing: (y, x) level-0 pixel size (1.0 where unknown); unit: "um", ... or "";
    rgb: True for 8-bit RGB(A) (H&E), shown and segmented as colour; channel_names may be empty."""

    levels: list
    spacing: tuple[float, float] = (1.0, 1.0)
    unit: str = ""
    rgb: bool = False
    channel_names: list[str] = field(default_factory=list)
    source: str = ""
    kind: str = ""  # "tiff" or "ome-zarr"
    _handle: object = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.levels[0].shape)

    @property
    def axes(self) -> str:
        return "YXC" if len(self.shape) == 3 else "YX"

    def level_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(s) for s in lv.shape) for lv in self.levels]

    def read_region(self, window: tuple[int, int, int, int], level: int = 0) -> np.ndarray:
        """Pixels of ``window`` (y0, y1, x0, x1, half-open, in that level's pixels) -> numpy."""
        y0, y1, x0, x1 = (int(v) for v in window)
        h, w = self.levels[level].shape[:2]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ImageError(f"region {window} is outside level {level} of shape ({h}, {w})")
        return np.asarray(self.levels[level][y0:y1, x0:x1])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_rgb(shape: Sequence[int], dtype) -> bool:
    return len(shape) == 3 and shape[-1] in (3, 4) and np.dtype(dtype) == np.uint8


def is_pyramid_path(path: str | os.PathLike) -> bool:
    """True for an OME-Zarr folder, a TIFF with pyramid levels, or a single-plane TIFF larger than
    ``LAZY_PIXELS``: what ``open_pyramid`` is for. Metadata only; never raises."""
    from .ngff import is_ngff

    p = Path(path)
    try:
        if p.is_dir():
            return is_ngff(p)
        if p.suffix.lower() not in PYRAMID_TIFF_SUFFIXES or not p.is_file():
            return False
        import tifffile

        with tifffile.TiffFile(p) as tif:
            s = tif.series[0]
            if len(s.levels) > 1:
                return True
            dims = dict(zip(s.axes.upper(), s.shape, strict=True))
            plane = all(n == 1 for a, n in dims.items() if a not in "YXS")
            return plane and dims.get("Y", 0) * dims.get("X", 0) > LAZY_PIXELS  # one huge plane, tiled or not
    except Exception:  # noqa: BLE001 - a probe answers False for what it cannot read
        return False


def open_pyramid(path: str | os.PathLike, label: str | None = None) -> Pyramid:
    """Open a pyramidal TIFF or an OME-Zarr image (or its label image ``label``) lazily.

    Raises ImageError for what cannot be read, or images that are not one 2D plane (Y, X[, C]):
    extra axes of length 1 are dropped; a longer T/Z axis is refused (open a plane with io instead).
    """
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            return _open_zarr(path, label)
        if not path.is_file():
            raise ImageError(f"image {path} does not exist (check the path)")
        return _open_tiff(path)
    except ImageError:
        raise
    except Exception as exc:  # tifffile / zarr raise many types for corrupt files
        raise ImageError(f"cannot open {path} as a pyramid: {type(exc).__name__}: {exc}") from None


def _open_tiff(path: Path) -> Pyramid:
    import tifffile
    import zarr

    from .io import _tiff_spacing

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes = series.axes.upper().replace("S", "C")
        spacing, unit = _tiff_spacing(tif)
        group = zarr.open(series.aszarr(), mode="r")
        arrays = [group[str(k)] for k in range(len(series.levels))] if len(series.levels) > 1 else [group]
        if hasattr(arrays[0], "keys"):  # a single level given as a group by some tifffile versions
            arrays = [arrays[0]["0"]]
        levels = [_plane_view(a, axes, path) for a in arrays]
        names = _tiff_channel_names(tif)
    except BaseException:
        tif.close()
        raise
    if getattr(tif, "is_svs", False) or getattr(tif, "is_ndpi", False):
        spacing, unit = _vendor_spacing(tif, spacing, unit)
    return Pyramid(levels, (float(spacing[1]), float(spacing[2])), unit, _is_rgb(levels[0].shape, levels[0].dtype),
                   names, str(path), "tiff", tif)


def _plane_view(array, axes: str, path) -> ChannelsLast:
    axes = axes.lower()
    fixed = {}
    for a, n in zip(axes, array.shape, strict=True):
        if a in "yxc":
            continue
        if n > 1:
            raise ImageError(f"{Path(path).name} has a {a.upper()} axis of length {n}: a slide pyramid is one "
                             "(Y, X[, C]) plane; open stacks with medsam_core.io.read_image")
        fixed[a] = 0
    if "y" not in axes or "x" not in axes or sum(a not in "yx" and a not in fixed for a in axes) > 1:
        raise ImageError(f"{Path(path).name}: cannot find one (Y, X[, C]) plane in axes {axes.upper()}")
    return ChannelsLast(array, axes, fixed)


def _tiff_channel_names(tif) -> list[str]:
    if not (tif.is_ome and tif.ome_metadata):
        return []
    import xml.etree.ElementTree as ET

    root = ET.fromstring(tif.ome_metadata)
    return [el.attrib.get("Name", "") for el in root.iter() if el.tag.endswith("}Channel") and el.attrib.get("Name")]


def _vendor_spacing(tif, spacing, unit):
    """SVS keeps microns per pixel in its description (MPP); NDPI in resolution tags (tifffile reads)."""
    if tif.is_svs:
        md = tif.pages[0].description or ""
        for part in md.split("|"):
            k, _, v = part.partition("=")
            if k.strip() == "MPP":
                mpp = float(v)
                return (1.0, mpp, mpp), "um"
    return spacing, unit


def _open_zarr(path: Path, label: str | None) -> Pyramid:
    from .ngff import open_ngff

    img = open_ngff(path, label)
    levels = [_plane_view(a, img.axes, path) for a in img.levels]
    yx = (img.axes.index("y"), img.axes.index("x"))
    unit = {"micrometer": "um", "millimeter": "mm", "nanometer": "nm"}.get(img.units[yx[1]], img.units[yx[1]])
    rgb = _is_rgb(levels[0].shape, levels[0].dtype)
    return Pyramid(levels, (img.spacing[yx[0]], img.spacing[yx[1]]), unit, rgb, img.channel_names, str(img.path),
                   "ome-zarr")


def channel_view(level: ChannelsLast, index: int) -> ChannelsLast:
    """One channel of a (Y, X, C) level as a lazy (Y, X) view (napari shows channels as layers)."""
    return ChannelsLast(level.array, level.src_axes, {**level.fixed, "c": int(index)})


def pyramid_meta(pyramid: Pyramid):
    """An ``io.ImageMeta`` for a Pyramid (spacing (y, x), unit, axes, source, level-0 shape)."""
    from .io import ImageMeta

    return ImageMeta(spacing=tuple(pyramid.spacing), axes=pyramid.axes, unit=pyramid.unit, source=pyramid.source,
                     shape=pyramid.shape[:2], extra={"pyramid": pyramid.kind, "levels": len(pyramid.levels),
                                                     "channel_names": list(pyramid.channel_names)})


def intensity_window(pyramid, intensity=None, channel=None):
    """The fixed ``Intensity`` window for every crop of a pyramid, from its coarsest level only
    (``roi.global_intensity``; level 0 is never read whole)."""
    from .roi import global_intensity

    levels = pyramid.levels if isinstance(pyramid, Pyramid) else pyramid
    return global_intensity(levels, intensity, channel)
