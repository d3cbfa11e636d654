"""A folder of images annotated one after the other: listing, output paths, resume, prefetch.

Qt-free state for the napari widget's image-series mode and for ``batch.segment_folder``:

    series = ImageSeries("images/", "labels/")
    i = series.first_not_done()            # resume where the user stopped (None: all done)
    image, meta = series.load(i)
    series.prefetch(predictor)             # the next image's embedding, in a background thread
    ...                                     # the user annotates image i
    series.save(labels, meta)              # atomic; labels/<stem>.tif (.nii.gz for NIfTI inputs)
    series.next()

Outputs are named after the input's stem (``a.nii.gz`` -> ``a.nii.gz`` in the output folder,
anything else -> ``<stem>.tif``); the output folder may not be the image folder, so an input is
never overwritten. An image is *done* when its output file exists: outputs are written
atomically (io.write_labels), so an existing output is always complete.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._paths import split_suffix
from .errors import CancelledError, ImageError
from .io import NIFTI_SUFFIXES, READ_SUFFIXES, ImageMeta, read_image, write_labels

#: Prefetch embeds a 2D image only up to this many pixels (larger ones are segmented by ROI crops).
PREFETCH_MAX_PIXELS = 8192 * 8192


def split_name(path: str | os.PathLike) -> tuple[str, str]:
    """File name -> (stem, suffix), treating ``.nii.gz`` and ``.ome.zarr`` as one suffix:
    'a.nii.gz' -> ('a', '.nii.gz'), 'b.ome.zarr' -> ('b', '.ome.zarr')."""
    return split_suffix(path, (".nii.gz", ".ome.zarr"))


def list_images(folder: str | os.PathLike, patterns: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Readable image files directly in ``folder``, sorted by name; hidden files skipped.

    patterns: glob patterns on the file name (e.g. ["*.tif"]); default: every suffix io reads.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist (check the path)")
    from .wsi import PYRAMID_TIFF_SUFFIXES, is_pyramid_path

    found = []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            continue
        if p.is_dir():  # an OME-Zarr slide is a folder
            if is_pyramid_path(p) and (not patterns or any(fnmatch.fnmatch(p.name.lower(), pat.lower())
                                                           for pat in patterns)):
                found.append(p)
            continue
        if not p.is_file():
            continue
        if not patterns and split_name(p)[1] in PYRAMID_TIFF_SUFFIXES and split_name(p)[1] not in READ_SUFFIXES:
            found.append(p)  # .svs, .ndpi, ...: slides only
            continue
        if patterns:
            if any(fnmatch.fnmatch(p.name.lower(), pat.lower()) for pat in patterns):
                found.append(p)
        elif split_name(p)[1] in READ_SUFFIXES:
            found.append(p)
    return found


def output_path(image: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Where the labels of ``image`` go: out_dir/<stem>.nii.gz for NIfTI inputs, out_dir/<stem>.ome.zarr
    for whole slides (OME-Zarr, pyramidal TIFF/SVS/NDPI: written chunk by chunk), else out_dir/<stem>.tif."""
    from .wsi import is_pyramid_path

    stem, suffix = split_name(image)
    if is_pyramid_path(image):
        return Path(out_dir).expanduser() / (stem.removesuffix(".ome") + ".ome.zarr")
    return Path(out_dir).expanduser() / (stem + (".nii.gz" if suffix in NIFTI_SUFFIXES else ".tif"))


def check_outputs(images: list[Path], out_dir: str | os.PathLike, protected: tuple = ()) -> dict[Path, Path]:
    """image -> output path; refuses an output folder that is an input folder and clashing stems.

    protected: more folders that must not be written into (e.g. the labels a batch reads boxes from).
    """
    out = Path(out_dir).expanduser().resolve()
    for folder in {p.parent.resolve() for p in images} | {Path(f).expanduser().resolve() for f in protected}:
        if folder == out:
            raise ImageError(
                f"the output folder {out} is also an input folder: choose another --out so no input is overwritten"
            )
    outputs: dict[Path, Path] = {}
    seen: dict[Path, Path] = {}
    for p in images:
        o = output_path(p, out)
        if o in seen:
            raise ImageError(
                f"{p.name} and {seen[o].name} would both write {o.name}: rename one (outputs are named by stem)"
            )
        seen[o] = p
        outputs[p] = o
    return outputs


class ImageSeries:
    """An ordered folder of images, each with its own labels file in ``out_dir``.

    folder: the images; out_dir: where labels go (created if missing; never ``folder``);
    patterns: optional file-name globs. ``index`` is the current image.
    """

    def __init__(self, folder: str | os.PathLike, out_dir: str | os.PathLike,
                 patterns: list[str] | tuple[str, ...] | None = None):
        self.folder = Path(folder).expanduser()
        self.images = list_images(self.folder, patterns)
        if not self.images:
            raise ImageError(f"no images found in {self.folder}; supported: {', '.join(READ_SUFFIXES)}")
        self.out_dir = Path(out_dir).expanduser()
        self._outputs = check_outputs(self.images, self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self._executor: ThreadPoolExecutor | None = None
        self._prefetch: tuple[int, Future, threading.Event] | None = None

    # -- listing and status ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def current(self) -> Path:
        return self.images[self.index]

    def output_path(self, i: int | None = None) -> Path:
        return self._outputs[self.images[self.index if i is None else i]]

    def is_done(self, i: int | None = None) -> bool:
        """True when image i (default: current) has its labels file."""
        return self.output_path(i).is_file()

    def status(self) -> list[bool]:
        """Done flag per image, in order."""
        return [self.is_done(i) for i in range(len(self))]

    def first_not_done(self) -> int | None:
        """Index of the first image without labels (where to resume), or None when all are done."""
        return next((i for i in range(len(self)) if not self.is_done(i)), None)

    # -- navigation -----------------------------------------------------------------------------
    def go(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} is outside 0..{len(self) - 1}")
        self.index = i
        return i

    def next(self, skip_done: bool = False) -> int | None:
        """Move to the next image (the next not-done one with skip_done); None (and no move) at the end."""
        for i in range(self.index + 1, len(self)):
            if not skip_done or not self.is_done(i):
                return self.go(i)
        return None

    def previous(self) -> int | None:
        """Move to the previous image; None (and no move) at the start."""
        return self.go(self.index - 1) if self.index > 0 else None

    # -- reading and saving ---------------------------------------------------------------------
    def load(self, i: int | None = None) -> tuple[np.ndarray, ImageMeta]:
        """Read image i (default current) -> (array, ImageMeta); a finished prefetch's read is reused."""
        i = self.index if i is None else i
        pending = self._prefetch
        if pending is not None and pending[0] == i and pending[1].done() and not pending[1].cancelled():
            if pending[1].exception() is None:
                return pending[1].result()
        return read_image(self.images[i])

    def save(self, labels, meta: ImageMeta | dict | None = None, i: int | None = None) -> Path:
        """Write labels of image i (default current) atomically to its output path -> that path."""
        path = self.output_path(i)
        if path.resolve() == self.images[self.index if i is None else i].resolve():
            raise ImageError(f"refusing to overwrite the input image {path}")
        return write_labels(path, labels, meta)

    # -- background prefetch ----------------------------------------------------------------------
    def prefetch(self, predictor, i: int | None = None, intensity=None, channel=None) -> Future | None:
        """Read image i (default: the one after the current) and put its embedding in the
        predictor's cache in a background thread, so ``load`` and ``predictor.set_image`` are
        instant later. Cancels an earlier prefetch. The predictor's current image is not changed.
        Returns the Future (result: (array, ImageMeta)), or None when there is no such image.
        3D and very large images are read but not embedded. ``intensity`` may be a function of
        the image returning an Intensity (e.g. ``roi.global_intensity``, as the widget decodes).
        """
        i = self.index + 1 if i is None else i
        if not 0 <= i < len(self):
            return None
        self.cancel_prefetch()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsam-prefetch")
        stop = threading.Event()
        future = self._executor.submit(_read_and_embed, self.images[i], predictor, intensity, channel, stop)
        self._prefetch = (i, future, stop)
        return future

    def cancel_prefetch(self) -> None:
        """Stop a pending prefetch (a running encode finishes, its result is still cached)."""
        if self._prefetch is not None:
            _, future, stop = self._prefetch
            stop.set()
            future.cancel()
            self._prefetch = None

    def close(self) -> None:
        """Cancel prefetching and stop the background thread."""
        self.cancel_prefetch()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _read_and_embed(path: Path, predictor, intensity, channel, stop: threading.Event):
    image, meta = read_image(path)
    if stop.is_set():
        raise CancelledError("prefetch cancelled")
    spatial = meta.shape or image.shape[:2]
    if predictor is not None and len(spatial) == 2 and spatial[0] * spatial[1] <= PREFETCH_MAX_PIXELS:
        if callable(intensity):  # an intensity that depends on the pixels (e.g. roi.global_intensity)
            intensity = intensity(image)
        embed_into_cache(predictor, image, intensity, channel)
    return image, meta


def embed_into_cache(predictor, image, intensity=None, channel=None) -> bool:
    """Put the embedding of a 2D ``image`` in ``predictor.cache`` without making it the current
    image (``Predictor.embed``). Returns True when it was cached already. Thread-safe against the
    GUI using the predictor."""
    return predictor.embed([image], intensity, channel)[0].cached
