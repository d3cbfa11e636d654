"""Volumes for 2D models: slicing axis, one intensity window per volume, precomputed embeddings.

A MedSAM-family model sees one 2D slice at a time. Three rules make a volume work well:

* **One intensity window for the whole volume.** Percentile clipping per slice (the 2D default)
  would stretch a dim end slice as much as a bright middle one, so the same object would look
  different on each slice. ``volume_intensity`` turns "auto"/"percentile"/"minmax" into a fixed
  ``Intensity(mode="range", value_range=(lo, hi))`` computed once from the whole volume (0.5 and
  99.5 percentiles of its non-zero voxels, as MedSAM's data pipeline does per image), and every
  slice is normalised with it. That is the training pipeline's rule (MedSAM / LiteMedSAM clip
  every grey image or volume to those percentiles and rescale, whatever the dtype), so uint8
  volumes are clipped too (on the Colin27 T1, uint8 0..254, the window is 10..188). "ct",
  "range" and "as_is" (8-bit data already windowed, used unchanged) pass unchanged.
* **Each slice is encoded once**, whatever the number of objects: slices go through
  ``Predictor.embed`` (``set_image`` uses it too), whose EmbeddingCache is keyed by the slice's content hash, the model
  and the (volume-wide) intensity window. ``embed_volume`` fills that cache ahead of time in
  batches; with ``EmbeddingCache(disk_dir=...)`` reopening the volume costs no encoder run.
* **Any axis can be the slicing axis**: ``as_slices`` moves it to the front (a view, no copy).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .cancel import Cancel, check_cancel
from .errors import ImageError
from .predictor import ENCODE_BATCH
from .preprocess import Intensity

# Cancel and check_cancel live in cancel.py; walk.py, propagate.py and the GUI import them from here.
__all__ = ["Cancel", "as_slices", "check_cancel", "embed_volume", "volume_intensity"]

#: Voxels sampled (evenly strided) to estimate the volume's percentiles: exact enough, and a
#: 512 x 512 x 600 CT does not need a full sort.
_PERCENTILE_SAMPLE = 1 << 22

def as_slices(volume, axis: int = 0) -> np.ndarray:
    """(Z, Y, X) volume -> view with the slicing ``axis`` first; checks it is a 3D numeric array."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ImageError(
            f"volume must be 3D (Z, Y, X), got shape {vol.shape}; for a single image use Predictor, "
            "for multichannel data pick one channel first"
        )
    if vol.dtype == bool:
        vol = vol.astype(np.uint8)
    if vol.dtype.kind not in "uif":
        raise ImageError(f"volume dtype {vol.dtype} is not numeric; pass an integer or float array")
    if not -3 <= axis < 3:
        raise ImageError(f"axis must be 0, 1 or 2 (the slicing axis of a 3D volume), got {axis}")
    if min(vol.shape) < 2:
        raise ImageError(f"volume of shape {vol.shape} is too small: every axis needs >= 2 voxels")
    return np.moveaxis(vol, axis, 0)


def volume_intensity(volume, intensity: Intensity | None = None) -> Intensity:
    """One fixed intensity window for every slice of ``volume`` (see module docstring)."""
    intensity = intensity or Intensity()
    vol = np.asarray(volume)
    mode = intensity.mode
    if mode in ("ct", "range", "as_is"):
        return intensity
    flat = vol.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLE]
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise ImageError("volume has NaN/inf voxels; replace them first (np.nan_to_num) before segmenting")
    if mode == "minmax":
        lo, hi = float(vol.min()), float(vol.max())
    else:
        values = flat[flat > 0] if intensity.nonzero and (flat > 0).any() else flat
        lo, hi = (float(v) for v in np.percentile(values, [intensity.low, intensity.high]))
        if hi <= lo:  # sparse bright spots: fall back to the full range, as the 2D rule does
            lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        raise ImageError(f"volume is constant (every voxel = {lo:g}): there is nothing to segment")
    return Intensity(mode="range", value_range=(lo, hi))


def is_blank(image: np.ndarray) -> bool:
    """True for a constant slice (nothing to encode or segment, e.g. zero padding)."""
    return bool(image.min() == image.max())


def embed_volume(predictor, volume, axis: int = 0, intensity: Intensity | None = None,
                 batch_size: int = ENCODE_BATCH, cancel: Cancel = None) -> Iterator[tuple[int, int]]:
    """Encode every slice of ``volume`` (Z, Y, X) along ``axis`` into ``predictor.cache``.

    A generator: yields ``(done, total)`` slices, first after checking the cache, then after
    each encoder batch; iterate it to the end (e.g. in a worker thread) to fill the cache.
    Slices already cached (memory or disk) and constant slices cost nothing; identical slices
    are encoded once. ``intensity`` is made volume-wide with ``volume_intensity`` exactly as
    ``segment_volume`` does, so both share cache entries. ``cancel`` is checked between
    batches and raises CancelledError; batches already encoded stay cached (that is harmless:
    entries are keyed by content).

    The work is ``Predictor.embed_steps``. Raises MedSAMError before any work when a memory-only cache cannot hold the slices to
    encode (they would evict each other), and CacheMismatchError when the disk store belongs
    to another model or preprocessing.
    """
    slices = as_slices(volume, axis)
    intensity = volume_intensity(slices, intensity)
    yield from predictor.embed_steps(slices, intensity, batch_size=batch_size, cancel=cancel, skip_blank=True)
