"""Instance labels <-> GeoJSON polygons with class names, in the form QuPath exports and imports.

Coordinates are pixels of the full-resolution image with QuPath's convention: pixel (row r,
column c) covers x in [c, c+1) and y in [r, r+1), so its centre is (c + 0.5, r + 0.5).
``write_geojson`` traces each object's outline (marching squares at 0.5 on the object's own
mask, holes kept as interior rings, disconnected parts as a MultiPolygon) and writes a
FeatureCollection of ``objectType`` "annotation" features whose ``classification`` carries the
class name (and colour); ``properties.medsam_label`` keeps the label id. ``read_geojson``
rasterises Polygon/MultiPolygon features back (a pixel belongs to a polygon when its centre is
inside), so written labels come back pixel for pixel for ordinary (4-connected) objects.

Large label images (zarr, memmap) are read tile by tile: a first pass finds each object's
bounding box, the second reads only that box. ``rasterise_geojson_to_store`` draws the polygons of a
whole slide into a new on-disk ``labelstore.LabelStore`` tile by tile (each tile written once), so a
100,000 x 100,000 slide's annotations never need its level 0 in memory.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import write_text_atomic
from .errors import ImageError

TILE = 4096


@dataclass
class GeoObjects:
    """What ``read_geojson`` found: labels (H, W) uint32 (or the ``out`` array), class name per
    label id, and how many features were skipped (not polygons) and why."""

    labels: object
    classes: dict[int, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: rasterise_geojson_to_store: {label id: (y0, y1, x0, x1)} window holding every pixel of the object
    extents: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)


def _tiles(shape, regions):
    if regions is None:
        return [(ty, min(ty + TILE, shape[0]), tx, min(tx + TILE, shape[1]))
                for ty in range(0, shape[0], TILE) for tx in range(0, shape[1], TILE)]
    return [tuple(int(v) for v in r) for r in regions]


def add_object_windows(tile: np.ndarray, ty: int, tx: int, windows: dict) -> None:
    """Grow ``windows`` ({label id: (y0, y1, x0, x1)}) by the objects of one (h, w) label ``tile`` whose
    top-left is (ty, tx) in the whole image: each id's window ends up holding all its pixels."""
    from scipy import ndimage

    ids = np.unique(tile)
    ids = ids[ids > 0]
    if not len(ids):
        return
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    for k, sl in enumerate(ndimage.find_objects(lut[tile])):
        if sl is None:
            continue
        b = (sl[0].start + ty, sl[0].stop + ty, sl[1].start + tx, sl[1].stop + tx)
        old = windows.get(int(ids[k]))
        windows[int(ids[k])] = b if old is None else (min(old[0], b[0]), max(old[1], b[1]),
                                                      min(old[2], b[2]), max(old[3], b[3]))


def object_windows(labels, regions=None) -> dict[int, tuple[int, int, int, int]]:
    """{id: (y0, y1, x0, x1)} over a possibly lazy (H, W) label image, tile by tile (or only in
    ``regions``, (y0, y1, x0, x1) windows known to hold every object)."""
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for ty, ty1, tx, tx1 in _tiles(labels.shape, regions):
        tile = np.asarray(labels[ty:ty1, tx:tx1])
        if tile.any():
            add_object_windows(tile, ty, tx, boxes)
    return boxes


def _ring(contour: np.ndarray, oy: int, ox: int) -> list[list[float]]:
    """find_contours (row, col) on a 1-px padded crop at (oy, ox) -> closed [[x, y], ...] ring."""
    ring = [[float(c + ox - 1 + 0.5), float(r + oy - 1 + 0.5)] for r, c in contour]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def mask_polygons(mask: np.ndarray, oy: int = 0, ox: int = 0) -> list[list[list[list[float]]]]:
    """(h, w) bool mask whose top-left pixel is image pixel (oy, ox) -> list of polygons, each
    [exterior ring, hole rings...] in image x, y (QuPath convention). One polygon per 4-connected part."""
    from scipy import ndimage
    from skimage.measure import find_contours

    parts, n = ndimage.label(mask)
    polys = []
    for k in range(1, n + 1):
        part = parts == k
        filled = ndimage.binary_fill_holes(part)
        outer = find_contours(np.pad(filled, 1).astype(np.float32), 0.5)
        if not outer:
            continue
        rings = [_ring(max(outer, key=len), oy, ox)]
        holes, nh = ndimage.label(filled & ~part)
        for j in range(1, nh + 1):
            for c in find_contours(np.pad(holes == j, 1).astype(np.float32), 0.5)[:1]:
                rings.append(_ring(c, oy, ox))
        polys.append(rings)
    return polys


def labels_to_features(labels, classes: dict[int, str] | None = None,
                       colors: dict[str, tuple[int, int, int]] | None = None, regions=None) -> list[dict]:
    """GeoJSON Feature dicts for every object of (H, W) ``labels`` (numpy or lazy), in id order;
    regions: (y0, y1, x0, x1) windows holding every object (a slide is then not scanned whole)."""
    classes, colors = classes or {}, colors or {}
    feats = []
    for lid, (y0, y1, x0, x1) in sorted(object_windows(labels, regions).items()):
        mask = np.asarray(labels[y0:y1, x0:x1]) == lid
        polys = mask_polygons(mask, y0, x0)
        if not polys:
            continue
        geom = ({"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                else {"type": "MultiPolygon", "coordinates": polys})
        props: dict = {"objectType": "annotation", "name": f"label {lid}", "medsam_label": int(lid)}
        name = classes.get(lid)
        if name:
            props["classification"] = {"name": name, "color": list(colors.get(name, _colour(name)))}
        feats.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": geom, "properties": props})
    return feats


def _colour(name: str) -> tuple[int, int, int]:
    import hashlib

    d = hashlib.md5(name.encode()).digest()
    return int(d[0]), int(d[1]), int(d[2])


def write_geojson(path: str | os.PathLike, labels, classes: dict[int, str] | None = None,
                  colors: dict[str, tuple[int, int, int]] | None = None, regions=None) -> Path:
    """Write (H, W) instance ``labels`` as a GeoJSON FeatureCollection (QuPath-style), atomically.

    classes: {label id: class name} (objects without one are unclassified); colors: {class
    name: (r, g, b)}. Returns the path written.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".geojson", ".json"):
        raise ImageError(f"cannot write GeoJSON to {path.name}: use a .geojson (or .json) file name")
    if len(getattr(labels, "shape", ())) != 2:
        raise ImageError(f"GeoJSON export takes a 2D (Y, X) label image; got shape {getattr(labels, 'shape', None)}")
    if np.dtype(labels.dtype).kind not in "uib":
        raise ImageError(f"labels of dtype {labels.dtype} cannot be exported; pass an integer array")
    if not path.parent.is_dir():
        raise ImageError(f"folder {path.parent} does not exist; create it first")
    text = json.dumps({"type": "FeatureCollection", "features": labels_to_features(labels, classes, colors, regions)})
    return write_text_atomic(path, text)


def _features(doc) -> list[dict]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    raise ImageError("not GeoJSON: expected a FeatureCollection, a Feature or a list of Features")


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return props.get("class") or props.get("classification_name")


def _draw(region: np.ndarray, origin: tuple[int, int], rings: list, lid: int) -> None:
    """Draw one polygon (exterior + holes; pixel centres inside) as ``lid`` into ``region``, whose top-left
    pixel is ``origin`` (y, x) of the image, in place; pixels an earlier object holds are kept."""
    from skimage.draw import polygon

    inside = np.zeros(region.shape, bool)
    for k, r in enumerate(rings):
        rr, cc = polygon(r[:, 1] - 0.5 - origin[0], r[:, 0] - 0.5 - origin[1], region.shape)
        inside[rr, cc] = k == 0
    region[inside & (region == 0)] = lid


def _polygon_features(feats: list[dict], ids: list[int], path: Path, shape: tuple[int, int], result):
    """Yield (label id, [(rings, window), ...]) for each Polygon/MultiPolygon feature with a part on the
    image, in file order; other geometries and features outside the image go to ``result.skipped``,
    classes to ``result.classes``; malformed coordinates raise ImageError."""
    for k, feat in enumerate(feats):
        geom = feat.get("geometry") or {}
        kind = geom.get("type")
        if kind not in ("Polygon", "MultiPolygon"):
            result.skipped.append(f"feature {k}: geometry {kind!r} is not a polygon")
            continue
        polys = geom.get("coordinates") or []
        try:
            parts = [_parts(rings, shape) for rings in ([polys] if kind == "Polygon" else polys) if rings]
        except (TypeError, ValueError, IndexError) as exc:
            raise ImageError(f"{path.name}: feature {k} has malformed coordinates ({exc})") from None
        parts = [p for p in parts if p is not None]
        if not parts:
            result.skipped.append(f"feature {k}: lies outside the {shape[1]} x {shape[0]} image")
            continue
        cls = _class_name(feat.get("properties") or {})
        if cls:
            result.classes[ids[k]] = str(cls)
        yield ids[k], parts


def _load(path: Path) -> list[dict]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"cannot read GeoJSON {path}: {exc}") from None
    return _features(doc)


def _feature_ids(feats: list[dict]) -> list[int]:
    """``properties.medsam_label`` when every feature has a distinct positive one, else 1, 2, ... in order."""
    given = [(f.get("properties") or {}).get("medsam_label") for f in feats]
    keep = all(isinstance(g, int) and g > 0 for g in given) and len(set(given)) == len(given)
    return [int(g) for g in given] if keep else list(range(1, len(feats) + 1))


def read_geojson(path: str | os.PathLike, shape: tuple[int, int], out=None) -> GeoObjects:
    """Rasterise the Polygon/MultiPolygon features of a GeoJSON file (QuPath, ours, ...) into
    (H, W) labels -> GeoObjects. Label ids: ``properties.medsam_label`` when every feature has a
    distinct one, else 1, 2, ... in file order. out: a writable (H, W) integer array (e.g. zarr)
    filled region by region; default a new uint32 array. Other geometry types are skipped and
    listed in ``skipped``; a malformed feature raises ImageError (into a given ``out``, the
    features before it are drawn already)."""
    path = Path(path).expanduser()
    feats = _load(path)
    shape = (int(shape[0]), int(shape[1]))
    ids = _feature_ids(feats)
    labels = np.zeros(shape, np.uint32) if out is None else out
    result = GeoObjects(labels)
    for lid, parts in _polygon_features(feats, ids, path, shape, result):
        for rings, (y0, y1, x0, x1) in parts:  # region by region: ``out`` may be a chunked store
            region = np.asarray(labels[y0:y1, x0:x1]).copy()
            _draw(region, (y0, x0), rings, lid)
            labels[y0:y1, x0:x1] = region
    return result


def _parts(rings: list, shape: tuple[int, int]):
    """One polygon (exterior + holes) -> ([(n, 2) x, y rings], (y0, y1, x0, x1) pixel window clipped to
    ``shape``), or None when no pixel centre of the image can be inside it."""
    rings = [np.asarray(r, np.float64) for r in rings]
    ext = rings[0]
    if ext.ndim != 2 or ext.shape[0] < 3 or ext.shape[1] < 2 or not all(np.isfinite(r).all() for r in rings):
        raise ImageError("a polygon ring needs at least 3 finite [x, y] points")
    if any(r.ndim != 2 or r.shape[1] < 2 for r in rings):
        raise ImageError("a polygon ring is not a list of [x, y] points")
    x0, y0 = (max(0, int(np.floor(v - 0.5))) for v in ext[:, :2].min(axis=0))
    top = ext[:, :2].max(axis=0)
    x1, y1 = min(int(np.ceil(top[0] - 0.5)) + 1, shape[1]), min(int(np.ceil(top[1] - 0.5)) + 1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return [r[:, :2] for r in rings], (y0, y1, x0, x1)


def rasterise_geojson_to_store(path: str | os.PathLike, dest, shape: tuple[int, int], tile: int = 2048,
                               chunk: int = 1024, name: str = "imported") -> GeoObjects:
    """Rasterise the polygons of a GeoJSON file (QuPath, ours) into a new NGFF image-label at ``dest``
    (``labelstore.LabelStore.create``) of level-0 ``shape`` (H, W), tile by tile: each ``tile`` x ``tile``
    window holding polygons is drawn in memory once and written once (only the part its polygons reach),
    so memory stays at one tile
    (plus the polygons) whatever the slide's size. Pixels, ids, overlaps (the earlier feature keeps a
    pixel) and classes are those of ``read_geojson``. Returns GeoObjects whose ``labels`` is the
    LabelStore (coarser levels built) and ``extents`` each object's window. A malformed feature
    raises ImageError before the store is created."""
    from .labelstore import LabelStore

    path = Path(path).expanduser()
    shape = (int(shape[0]), int(shape[1]))
    feats = _load(path)
    ids = _feature_ids(feats)
    result = GeoObjects(None)
    tiles: dict[tuple[int, int], list] = {}
    for lid, parts in _polygon_features(feats, ids, path, shape, result):
        for rings, (y0, y1, x0, x1) in parts:
            for ty in range(y0 // tile, (y1 - 1) // tile + 1):
                for tx in range(x0 // tile, (x1 - 1) // tile + 1):
                    tiles.setdefault((ty, tx), []).append((lid, rings, (y0, y1, x0, x1)))
        wins = [w for _, w in parts]
        result.extents[lid] = (min(w[0] for w in wins), max(w[1] for w in wins),
                               min(w[2] for w in wins), max(w[3] for w in wins))
    store = LabelStore.create(dest, shape, name=name, chunk=chunk)
    for (ty, tx), items in sorted(tiles.items()):
        # only the part of the tile its polygons reach is read and written (a sparse slide: a few chunks)
        t0, t1 = max(ty * tile, min(w[0] for _, _, w in items)), min((ty + 1) * tile, max(w[1] for _, _, w in items))
        s0, s1 = max(tx * tile, min(w[2] for _, _, w in items)), min((tx + 1) * tile, max(w[3] for _, _, w in items))
        region = store.read_region((t0, t1, s0, s1))
        for lid, rings, (y0, y1, x0, x1) in items:  # file order: the earlier feature keeps a pixel
            a0, a1, b0, b1 = max(y0, t0), min(y1, t1), max(x0, s0), min(x1, s1)
            _draw(region[a0 - t0 : a1 - t0, b0 - s0 : b1 - s0], (a0, b0), rings, lid)
        store.write_region((t0, t1, s0, s1), region)
    store.update_levels()
    result.labels = store
    return result
