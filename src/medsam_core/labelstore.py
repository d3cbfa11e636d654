"""Labels of a whole slide kept on disk: an NGFF image-label written region by region.

``LabelStore.create(dest, shape)`` makes an empty NGFF image-label (in an OME-Zarr image's
``labels/`` group or as a new store, see ``ngff.write_ngff_labels``; created aside and renamed
into place); ``LabelStore(path)`` opens an existing one for writing. Masks are pasted into
level 0 window by window (``paste``: the smallest id wins where objects overlap, as
``roi.segment_large``), so a 100,000 x 100,000 slide with thousands of objects never has more
than one crop of labels in memory. Each chunk file is replaced atomically by zarr's LocalStore;
``update_levels`` rebuilds the coarser levels for the windows written since the last call
(nearest, 2x per level) so viewers of the pyramid see the new objects.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ImageError


class LabelStore:
    """An NGFF image-label opened for region writes. levels: zarr arrays, level 0 first."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        from .ngff import _ome_attrs

        self.path = Path(path).expanduser()
        try:
            group = zarr.open_group(str(self.path), mode="r+")
        except Exception as exc:  # zarr raises several types for "not a group"
            raise ImageError(f"{self.path} is not a writable zarr group: {exc}") from None
        attrs, _ = _ome_attrs(group)
        if "image-label" not in attrs or not attrs.get("multiscales"):
            raise ImageError(f"{self.path} is not an NGFF image-label (no 'image-label' metadata)")
        self.levels = [group[d["path"]] for d in attrs["multiscales"][0]["datasets"]]
        self.dirty: list[tuple[int, int, int, int]] = []

    @classmethod
    def create(cls, dest, shape: tuple[int, int], name: str = "medsam", dtype=np.uint32, spacing=(1.0, 1.0),
               unit: str = "", chunk: int = 1024, overwrite: bool = False) -> LabelStore:
        """A new, empty image-label of level-0 ``shape`` (Y, X) at ``dest`` (see write_ngff_labels)."""
        from .ngff import write_ngff_labels

        return cls(write_ngff_labels(dest, None, name=name, spacing=spacing, unit=unit, overwrite=overwrite,
                                     chunk=chunk, empty=(tuple(shape), dtype)))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.levels[0].shape)

    @property
    def level0(self):
        return self.levels[0]

    def read_region(self, window: tuple[int, int, int, int]) -> np.ndarray:
        y0, y1, x0, x1 = window
        return np.asarray(self.levels[0][y0:y1, x0:x1])

    def write_region(self, window: tuple[int, int, int, int], region: np.ndarray) -> None:
        """levels[0][y0:y1, x0:x1] = region (only the chunks it covers are rewritten)."""
        y0, y1, x0, x1 = (int(v) for v in window)
        if not (0 <= y0 < y1 <= self.shape[0] and 0 <= x0 < x1 <= self.shape[1]):
            raise ImageError(f"window {window} is outside the labels of shape {self.shape}")
        self.levels[0][y0:y1, x0:x1] = np.asarray(region, self.levels[0].dtype)
        self.dirty.append((y0, y1, x0, x1))

    def paste(self, window: tuple[int, int, int, int], masks: np.ndarray, ids: np.ndarray) -> None:
        """Paste (n, h, w) bool masks at ``window`` with ids ``ids`` (smallest id wins on overlap)."""
        from .roi import paste_min_id

        y0, y1, x0, x1 = window
        region = self.read_region(window)
        paste_min_id(region, (0, y1 - y0, 0, x1 - x0), np.asarray(masks, bool), np.asarray(ids))
        self.write_region(window, region)

    def update_levels(self) -> int:
        """Rebuild the coarser levels over the windows written since the last call -> windows done.

        At each level the windows are halved and, within each chunk of that level, merged into their
        bounding box (a superset: nearest sampling of a larger window gives the same pixels), so a
        coarse chunk that many small windows fall into is rewritten once, not once per window."""
        n, windows = len(self.dirty), list(self.dirty)
        for k in range(1, len(self.levels)):
            src, dst = self.levels[k - 1], self.levels[k]
            ch, cw = (int(c) for c in dst.chunks[:2])
            merged: dict[tuple[int, int], list[int]] = {}
            for y0, y1, x0, x1 in windows:
                y0, x0 = y0 // 2, x0 // 2
                y1, x1 = min(-(-y1 // 2), dst.shape[0]), min(-(-x1 // 2), dst.shape[1])
                for cy in range(y0 // ch, (y1 - 1) // ch + 1):
                    for cx in range(x0 // cw, (x1 - 1) // cw + 1):
                        w = [max(y0, cy * ch), min(y1, (cy + 1) * ch), max(x0, cx * cw), min(x1, (cx + 1) * cw)]
                        old = merged.setdefault((cy, cx), w)
                        old[:] = [min(old[0], w[0]), max(old[1], w[1]), min(old[2], w[2]), max(old[3], w[3])]
            windows = [tuple(w) for w in merged.values() if w[1] > w[0] and w[3] > w[2]]
            for y0, y1, x0, x1 in windows:
                dst[y0:y1, x0:x1] = np.asarray(src[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2])
        self.dirty = []
        return n

def copy_to_store(src, dest, chunk: int = 1024, tile: int = 2048,
                  name: str = "imported") -> tuple[LabelStore, dict[int, tuple[int, int, int, int]]]:
    """Copy (H, W) integer labels ``src`` (numpy or lazy: zarr, dask; read one ``tile`` at a time) into a
    new LabelStore at ``dest`` -> (store, {label id: (y0, y1, x0, x1) window holding all its pixels}).
    Empty tiles are not written, so a sparse slide's labels cost what its objects cover; the coarser
    levels are rebuilt from the copy. Used to correct labels another tool wrote (an OME-Zarr's
    ``labels/`` group) without ever writing into that file."""
    from .geojson import add_object_windows

    shape = tuple(int(s) for s in src.shape)
    if len(shape) != 2 or np.dtype(src.dtype).kind not in "iub":
        raise ImageError(f"labels to copy must be a 2D integer image; got shape {shape}, dtype {src.dtype}")
    store = LabelStore.create(dest, shape, name=name, chunk=chunk)
    extents: dict[int, tuple[int, int, int, int]] = {}
    for ty in range(0, shape[0], tile):
        for tx in range(0, shape[1], tile):
            window = (ty, min(ty + tile, shape[0]), tx, min(tx + tile, shape[1]))
            region = np.asarray(src[window[0] : window[1], window[2] : window[3]])
            if not region.any():
                continue
            if (region < 0).any():
                raise ImageError(f"labels to copy hold negative ids (in window {window}); ids must be >= 0")
            store.write_region(window, region)
            add_object_windows(region, ty, tx, extents)
    store.update_levels()
    return store, extents
