"""ROI zoom for the widget's boxes: which embeddings a set of boxes needs, and decoding them.

The widget segments its boxes through ``medsam_core.roi.predict_boxes``, the entry point that
``medsam segment``, ``medsam batch`` and scripts use, so a box drawn in napari gives the labels
the scripting API gives. Per box ("ROI zoom" auto, or on/off for every box) it decodes on the
whole-image embedding (encoded once, in the background, as soon as the image is picked) or on an
encoded crop around the box (small objects on large images). Both are ordinary entries of the
session's EmbeddingCache: ``Needs`` lists what is missing so the session can encode it in a
worker, and the decode on the GUI thread then costs a decode only.

The intensity window is fixed per image plane (``roi.global_intensity``): the whole image and
every crop are normalised alike; it is computed once per plane and setting, then remembered. A
plane of an in-memory 3D volume takes the volume's window instead (``volume_intensity``, as
"Segment in 3D", "Precompute all slices" and MedSAM's training pipeline for 3D data do): a 2D box
on any slice then gives the mask the 3D walk gives there and reuses the walk's embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsam_core import roi
from medsam_core.preprocess import Intensity

from ._slide_plane import SlidePlane

#: widget setting -> predict_boxes mode
ZOOM_MODES = {"auto": "auto", "on": "roi", "off": "whole"}


def roi_mode(setting: str) -> str:
    from medsam_core import MedSAMError

    if setting not in ZOOM_MODES:
        raise MedSAMError(f"unknown ROI zoom setting {setting!r}: use auto, on or off")
    return ZOOM_MODES[setting]


@dataclass
class Needs:
    """Embeddings missing for a set of boxes on one plane image."""

    whole: bool = False  # the whole-image embedding
    crops: list[tuple[int, int, int, int]] = field(default_factory=list)  # (y0, y1, x0, x1) windows

    def __bool__(self) -> bool:
        return self.whole or bool(self.crops)


class WindowMemo:
    """Remembers ``roi.global_intensity`` per (plane image, intensity, channel): a percentile pass
    over a 2048 px image costs more than a decode, and it never changes for the same pixels."""

    def __init__(self, size: int = 8):
        self.size = size
        self._memo: dict = {}

    def window(self, image2d: np.ndarray, intensity: Intensity, channel, volume=None) -> Intensity:
        """The window for ``image2d``; with ``volume`` (the 3D array it is a slice of), the volume's."""
        import hashlib

        if volume is not None:
            # hashing a whole volume at every box costs more than the window: the array itself (not a
            # reused id of a freed one) and a sample of its pixels say whether it is still the same
            key = ("volume", id(volume), volume.shape, volume.dtype.str, repr(intensity))
            check = _identity(volume), _sample_digest(volume)
            hit = self._memo.get(key)
            if hit is None or not _same(hit[0], check):
                from medsam_core.volume import volume_intensity

                hit = (check, volume_intensity(volume, intensity))
                self._put(key, hit)
            return hit[1]

        if isinstance(image2d, SlidePlane):  # from the coarsest level only; keyed by the level-0 array
            key = ("slide", id(image2d.levels[0]), image2d.shape, repr(intensity), repr(channel))
            check = _identity(image2d.levels[0]), None
            hit = self._memo.get(key)
            if hit is None or not _same(hit[0], check):
                hit = (check, roi.global_intensity(image2d.levels, intensity, channel))
                self._put(key, hit)
            return hit[1]
        arr = np.ascontiguousarray(image2d)
        key = (hashlib.blake2b(arr.data, digest_size=16).hexdigest(), arr.shape, arr.dtype.str,
               repr(intensity), repr(channel))
        win = self._memo.get(key)
        if win is None:
            win = roi.global_intensity(arr, intensity, channel)
            self._put(key, win)
        return win

    def _put(self, key, value) -> None:
        self._memo.pop(key, None)
        while len(self._memo) >= self.size:
            self._memo.pop(next(iter(self._memo)))
        self._memo[key] = value


def _identity(array):
    """A weak reference to ``array`` (None where the type takes none)."""
    import weakref

    try:
        return weakref.ref(array)
    except TypeError:
        return None


def _sample_digest(volume: np.ndarray, n: int = 65536) -> str:
    """A digest of ``n`` evenly spaced voxels: an in-place rescale or a replaced volume changes it."""
    import hashlib

    step = max(1, volume.size // n)
    return hashlib.blake2b(np.ascontiguousarray(volume.flat[::step]).data, digest_size=16).hexdigest()


def _same(seen, now) -> bool:
    """Whether a memo entry made for ``seen`` (weak reference, digest) still holds for ``now``."""
    (ref_seen, digest_seen), (ref_now, digest_now) = seen, now
    alive = ref_seen is None or (ref_seen() is not None and ref_now is not None and ref_seen() is ref_now())
    return alive and digest_seen == digest_now


def missing(predictor, image2d, boxes: np.ndarray, mode: str, window: Intensity, channel) -> Needs:
    """Which embeddings ``predict_boxes(..., mode)`` would have to encode for (N, 4) XYXY ``boxes``."""
    shape = image2d.shape[:2]
    use_roi = roi.choose_roi(boxes, shape, mode, predictor.spec.preprocessing.input_size)
    needs = Needs()
    if (~use_roi).any():
        needs.whole = predictor.key_for(image2d, window, channel) not in predictor.cache
    if use_roi.any():
        for group in roi.plan_rois(boxes[use_roi], shape):
            crop = roi.read_crop(image2d, group.window)
            if predictor.key_for(crop, window, channel) not in predictor.cache:
                needs.crops.append(group.window)
    return needs


def encode(predictor, image2d, needs: Needs, window: Intensity, channel) -> int:
    """Encode what ``needs`` lists into the predictor's cache (a worker calls this). Returns how many."""
    n = 0
    if needs.whole:
        predictor.set_image(image2d, intensity=window, channel=channel)
        n += 1
    for w in needs.crops:
        predictor.set_image(roi.read_crop(image2d, w), intensity=window, channel=channel)
        n += 1
    return n


def decode(predictor, image2d, boxes: np.ndarray, mode: str, window: Intensity, channel) -> list[np.ndarray]:
    """(H, W) bool mask per box through ``roi.predict_boxes`` (cache hits when ``missing`` is empty);
    on a ``SlidePlane`` the ``roi.BoxMask`` per box (its window and the mask inside it)."""
    shape = image2d.shape[:2]
    results = roi.predict_boxes(predictor, image2d, boxes, mode=mode, intensity=window, channel=channel)
    if isinstance(image2d, SlidePlane):
        return results
    return [r.full(shape) for r in results]
