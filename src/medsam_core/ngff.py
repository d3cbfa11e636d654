"""OME-Zarr (OME-NGFF multiscales) images and labels, read lazily and written chunk by chunk.

Reading: ``open_ngff(path)`` -> ``NgffImage``: the multiscale levels as lazy ``zarr`` arrays in
the store's own axis order (``axes``, e.g. "cyx" or "tczyx"), the level-0 pixel size per axis,
units, channel names (``omero``) and the NGFF version (0.4 = zarr v2, 0.5 = zarr v3 under the
``ome`` attribute key; both read). ``label_names(path)`` lists the image's ``labels/`` group,
``open_ngff(path, label="cells")`` opens one of them. Nothing is read beyond the metadata.

Writing: ``write_ngff_labels(dest, labels, ...)`` writes (Y, X) instance labels as an NGFF
image-label: level 0 copied from ``labels`` region by region (one chunk row band at a time, so
a zarr/dask/memmap source is never loaded whole), then each coarser level (nearest, 2x) from
the one before, also band by band. ``dest`` is an OME-Zarr image (-> ``dest/labels/<name>``,
same NGFF version as the image) or a new path (-> a store whose root is the label image).
Atomic per label image: everything is written to a hidden sibling folder first and renamed
into place (zarr 3's LocalStore itself writes each chunk file atomically), so a reader sees the
old labels or the new ones, never a half-written array. A provenance sidecar is saved beside it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError

#: Chunk side used for written label levels.
LABEL_CHUNK = 1024
ZARR_SUFFIXES = (".zarr", ".ome.zarr")


@dataclass
class NgffImage:
    """One NGFF multiscale image. levels: lazy arrays, level 0 first, axis order ``axes``
    (lower-case NGFF names, e.g. "cyx"); spacing: level-0 pixel size per axis (1.0 where not
    given); units per axis ("" when not given); channel_names: from ``omero`` (may be empty)."""

    path: Path
    levels: list
    axes: str
    spacing: tuple[float, ...]
    units: tuple[str, ...]
    channel_names: list[str] = field(default_factory=list)
    version: str = "0.4"
    is_label: bool = False
    name: str = ""


def _open_group(path: Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise ImageError(f"{path} is not a readable zarr group ({type(exc).__name__}: {exc})") from None


def _ome_attrs(group) -> tuple[dict, str]:
    """(NGFF attributes, version): v0.5 keeps them under ``ome``, v0.4 at the top level."""
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        ome = attrs["ome"]
        return ome, str(ome.get("version", "0.5"))
    ms = attrs.get("multiscales") or [{}]
    return attrs, str(ms[0].get("version", "0.4")) if ms and isinstance(ms[0], dict) else "0.4"


def is_ngff(path: str | os.PathLike) -> bool:
    """True for a folder holding an NGFF multiscale image or image-label (cheap: metadata only)."""
    p = Path(path)
    if not p.is_dir() or not any((p / f).is_file() for f in (".zattrs", "zarr.json")):
        return False
    try:
        attrs, _ = _ome_attrs(_open_group(p))
    except ImageError:
        return False
    return bool(attrs.get("multiscales"))


def open_ngff(path: str | os.PathLike, label: str | None = None) -> NgffImage:
    """Open an OME-Zarr image (or its label image ``label`` from ``labels/``) lazily -> NgffImage."""
    path = Path(path).expanduser()
    if label is not None:
        if label not in label_names(path):
            raise ImageError(f"{path} has no label image {label!r} (has: {', '.join(label_names(path)) or 'none'})")
        path = path / "labels" / label
    if not path.is_dir():
        raise ImageError(f"OME-Zarr folder {path} does not exist")
    group = _open_group(path)
    attrs, version = _ome_attrs(group)
    multiscales = attrs.get("multiscales")
    if not multiscales or not multiscales[0].get("datasets"):
        raise ImageError(f"{path} is a zarr group without NGFF 'multiscales' metadata: not an OME-Zarr image")
    ms = multiscales[0]
    try:
        levels = [group[d["path"]] for d in ms["datasets"]]
    except KeyError as exc:
        raise ImageError(f"{path}: multiscales names dataset {exc} that is not in the store") from None
    ndim = levels[0].ndim
    axes_md = ms.get("axes") or [{"name": a} for a in "tczyx"[-ndim:]]  # v0.3 had no axes: tczyx
    axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].lower() for a in axes_md)
    if len(axes) != ndim or "y" not in axes or "x" not in axes:
        raise ImageError(f"{path}: axes {axes!r} do not fit arrays of {ndim} dimensions with y and x")
    units = tuple(str(a.get("unit", "") if isinstance(a, dict) else "") for a in axes_md)
    spacing = [1.0] * ndim
    for t in ms["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            spacing = [float(s) for s in t["scale"]]
    channels = (attrs.get("omero") or {}).get("channels") or []
    names = [str(c.get("label", i)) for i, c in enumerate(channels)]
    return NgffImage(path, levels, axes, tuple(spacing), units, names, version,
                     is_label="image-label" in attrs, name=path.name)


def label_names(path: str | os.PathLike) -> list[str]:
    """Names listed in the image's ``labels/`` group ([] when there is none)."""
    lab = Path(path).expanduser() / "labels"
    if not lab.is_dir():
        return []
    try:
        attrs, _ = _ome_attrs(_open_group(lab))
    except ImageError:
        return []
    return [str(n) for n in attrs.get("labels", []) if (lab / str(n)).is_dir()]


# -- writing ---------------------------------------------------------------------------------------
def _level_shapes(shape: tuple[int, int], chunk: int, n_levels: int | None) -> list[tuple[int, int]]:
    shapes = [tuple(shape)]
    while (n_levels is None and max(shapes[-1]) > chunk) or (n_levels is not None and len(shapes) < n_levels):
        h, w = shapes[-1]
        if h == 1 and w == 1:
            break
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def _copy_bands(src, dst, chunk: int, step: int = 1) -> None:
    """dst[y:y+chunk] = src[y*step:(y+chunk)*step:step] band by band (bounded memory; each
    destination chunk written once, whole)."""
    h, w = dst.shape
    for y in range(0, h, chunk):
        y1 = min(h, y + chunk)
        for x in range(0, w, chunk * 4):
            x1 = min(w, x + chunk * 4)
            block = np.asarray(src[y * step : y1 * step, x * step : x1 * step])
            dst[y:y1, x:x1] = block[::step, ::step] if step > 1 else block


def _write_label_group(tmp: Path, labels, shape: tuple[int, int], dtype, spacing, unit: str, version: str, chunk: int,
                       n_levels: int | None, name: str, colors: dict[int, tuple] | None, source: str | None):
    import zarr

    zarr_format = 3 if version == "0.5" else 2
    root = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
    shapes = _level_shapes(shape, chunk, n_levels)
    datasets, prev = [], labels
    for k, shp in enumerate(shapes):
        arr = root.create_array(str(k), shape=shp, chunks=(min(chunk, shp[0]), min(chunk, shp[1])),
                                dtype=dtype, fill_value=0)
        if labels is not None:  # None: an empty label image (labelstore.LabelStore fills it region-wise)
            _copy_bands(prev, arr, chunk, 1 if k == 0 else 2)
        prev = arr
        f = 2.0**k
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(spacing[0]) * f, float(spacing[1]) * f]}]})
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
    ms = {"version": version, "name": name, "axes": axes, "datasets": datasets, "type": "nearest"}
    label_md: dict = {"version": version}
    if colors:
        label_md["colors"] = [{"label-value": int(k), "rgba": [int(c) for c in v]} for k, v in colors.items()]
    if source:
        label_md["source"] = {"image": source}
    if zarr_format == 2:
        ms_md = {"multiscales": [ms], "image-label": label_md}
    else:
        ms.pop("version")
        label_md.pop("version")
        ms_md = {"ome": {"version": version, "multiscales": [ms], "image-label": label_md}}
    root.attrs.update(ms_md)


def _swap_in(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``final``; an old one is moved aside first and
    removed only after the rename succeeded."""
    old = None
    if final.exists():
        if not overwrite:
            raise ImageError(f"{final} exists; pass --overwrite (overwrite=True) to replace it")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_ngff_labels(dest: str | os.PathLike, labels, name: str = "medsam", spacing=(1.0, 1.0), unit: str = "",
                      overwrite: bool = False, chunk: int = LABEL_CHUNK, n_levels: int | None = None,
                      colors: dict[int, tuple] | None = None, provenance=None,
                      empty: tuple[tuple[int, int], object] | None = None) -> Path:
    """Write (Y, X) integer ``labels`` (numpy, zarr, dask, memmap: read band by band) as an NGFF
    image-label -> the path of the label image written.

    dest: an OME-Zarr image folder (-> ``dest/labels/<name>``, listed in ``labels/`` attributes,
    NGFF version and pixel size taken from the image) or a new ``.zarr`` path (-> a store whose
    root is the label image, NGFF 0.4). spacing: (y, x) level-0 pixel size (ignored when the
    image gives one). Levels: halved (nearest) until the longest side fits one ``chunk``, or
    ``n_levels``. provenance: a ``Provenance`` saved beside the label image (``<name>.provenance.json``).
    empty: ((H, W), dtype) with ``labels=None``: an all-zero label image, no chunk written
    (``labelstore.LabelStore.create`` then fills it region by region).
    """
    from .io import check_labels

    dest = Path(dest).expanduser()
    if labels is None and empty is not None:
        shape, kind = tuple(int(s) for s in empty[0]), np.dtype(empty[1])
    else:
        shape, kind = tuple(int(s) for s in getattr(labels, "shape", ())), None
    if len(shape) != 2:
        raise ImageError(f"OME-Zarr labels are written from a 2D (Y, X) label image; got shape {shape}")
    kind = kind or np.dtype(getattr(labels, "dtype", np.int64))
    if kind.kind not in "uib":
        raise ImageError(f"labels of dtype {kind} cannot be written; pass an integer array")
    dtype = np.dtype(np.uint32) if kind.itemsize > 4 or kind.kind in "ib" else kind
    if isinstance(labels, np.ndarray):
        check_labels(labels)  # negative values, etc.: refused before anything is written
    if not name or "/" in name or name.startswith("."):
        raise ImageError(f"label name {name!r} must be a plain folder name")
    version = "0.4"
    image = open_ngff(dest) if is_ngff(dest) else None
    if image is not None and image.is_label and not overwrite:
        raise ImageError(f"{dest} is a label image already; pass --overwrite (overwrite=True) to replace it")
    if image is not None and not image.is_label:
        yx = (image.axes.index("y"), image.axes.index("x"))
        want = tuple(int(image.levels[0].shape[a]) for a in yx)
        if want != shape:
            raise ImageError(f"labels of shape {shape} do not match the image {dest.name} ({want})")
        spacing, unit, version = tuple(image.spacing[a] for a in yx), image.units[yx[1]], image.version
        parent, final, source = dest / "labels", dest / "labels" / name, "../../"
    else:
        if dest.exists() and not (overwrite and image is not None and image.is_label):
            raise ImageError(f"{dest} exists and is not an OME-Zarr image or label image: give a new path "
                             "(overwrite replaces label images only, never other folders or files)")
        if not dest.parent.is_dir():
            raise ImageError(f"folder {dest.parent} does not exist; create it first")
        parent, final, source = dest.parent, dest, None
    parent.mkdir(exist_ok=True)
    tmp = parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_label_group(tmp, labels, shape, dtype, spacing, unit, version, chunk, n_levels, name, colors, source)
        _swap_in(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if source is not None:
        _list_label(parent, name, version)
    if provenance is not None:
        provenance.save(final)
    return final


def _list_label(labels_dir: Path, name: str, version: str) -> None:
    import zarr

    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=3 if version == "0.5" else 2)
    attrs, _ = _ome_attrs(group)
    names = [n for n in attrs.get("labels", []) if n != name] + [name]
    if version == "0.5":
        group.attrs.update({"ome": {"version": version, "labels": names}})
    else:
        group.attrs.update({"labels": names})


def write_ngff_image(path: str | os.PathLike, levels: list, axes: str = "yxc", spacing=None, unit: str = "micrometer",
                     chunk: int = 512, channel_names: list[str] | None = None, version: str = "0.4") -> Path:
    """Write an image pyramid (level 0 first, each an array-like in ``axes`` order, channels as
    "c"; spacing: pixel size of the spatial axes, e.g. (y, x)) as a new OME-Zarr image; levels are stored in NGFF order (c before y, x). For tests,
    benchmarks and exports; levels are copied band by band."""
    import zarr

    path = Path(path).expanduser()
    if path.exists():
        raise ImageError(f"{path} exists; give a new path")
    out_axes = "".join(a for a in "tczyx" if a in axes)
    perm = [axes.index(a) for a in out_axes]
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    spatial = [a for a in out_axes if a in "zyx"]
    given = list(spacing or [1.0] * len(spatial))[-len(spatial):]
    spacing = [given[spatial.index(a)] if a in spatial else 1.0 for a in out_axes]
    datasets = []
    for k, level in enumerate(levels):
        shp = tuple(int(level.shape[p]) for p in perm)
        chunks = tuple(min(chunk, s) if a in "yx" else 1 for a, s in zip(out_axes, shp, strict=True))
        arr = root.create_array(str(k), shape=shp, chunks=chunks, dtype=level.dtype, fill_value=0)
        yaxis = axes.index("y")
        for y in range(0, int(level.shape[yaxis]), chunk):
            key = [slice(None)] * len(axes)
            key[yaxis] = slice(y, y + chunk)
            block = np.transpose(np.asarray(level[tuple(key)]), perm)
            okey = [slice(None)] * len(out_axes)
            okey[out_axes.index("y")] = slice(y, y + block.shape[out_axes.index("y")])
            arr[tuple(okey)] = block
        f = [2.0**k if a in "yx" else 1.0 for a in out_axes]
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(s) * g for s, g in zip(spacing, f, strict=True)]}]})
    ax_md = [{"name": a, "type": "channel" if a == "c" else "time" if a == "t" else "space",
              **({"unit": unit} if a in "zyx" and unit else {})} for a in out_axes]
    ms = {"version": version, "name": path.stem, "axes": ax_md, "datasets": datasets}
    md: dict = {"multiscales": [ms]}
    if "c" in out_axes:
        n = int(levels[0].shape[axes.index("c")])
        names = channel_names or [f"channel {i}" for i in range(n)]
        colours = ["FF0000", "00FF00", "0000FF"] if n == 3 else ["FFFFFF"] * n
        md["omero"] = {"channels": [{"label": nm, "color": c, "active": True} for nm, c in zip(names, colours,
                                                                                                 strict=False)]}
    if version == "0.5":
        ms.pop("version")
        md = {"ome": {"version": version, **md}}
    root.attrs.update(md)
    return path
