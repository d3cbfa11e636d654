"""Predictor: encode an image once, decode many box/point/mask prompts cheaply.

Lifecycle as in segment-anything: ``set_image(image)`` -> ``predict(...)`` many times ->
``reset_image()``. Embeddings come from an EmbeddingCache, so setting an image that was seen
before (same content, model, preprocessing) does not run the encoder again. ``embed(images)``
(and its generator form ``embed_steps``) is the one way an image gets into that cache: set_image,
volumes (``embed_volume``), series prefetch and fine-tuning all call it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import backends
from .backends import EncoderBackend, make_encoder_backend
from .cancel import Cancel, check_cancel
from .embeddings import CacheEntry, EmbeddingCache, EmbeddingKey, content_hash
from .errors import MedSAMError, PredictorStateError, PromptError
from .preprocess import (
    Intensity,
    PreparedImage,
    boxes_to_model,
    check_boxes,
    check_image,
    lowres_to_masks,
    points_to_model,
    prepare_image,
)

#: Images per encoder call in ``Predictor.embed`` (volumes, folders, training variants).
ENCODE_BATCH = 4


@dataclass(frozen=True)
class Embedded:
    """One image's result of ``Predictor.embed``: its cache ``key``, the cache ``entry``
    (``.embedding`` (256, 64, 64), ``.meta`` geometry) and whether it was ``cached`` already."""

    key: EmbeddingKey
    entry: CacheEntry
    cached: bool


class Prediction(tuple):
    """Unpacks as ``(masks, scores)``; ``low_res_logits`` rides along.

    masks: (N, H, W) bool (or (N, M, H, W) with multimask_output: M = 3, or 4 with "all"); scores:
    (N,) predicted IoU (or (N, M)); low_res_logits: (N, M, 256, 256) float32, usable as
    ``mask_input`` later (one channel of it).
    """

    def __new__(cls, masks, scores, low_res_logits):
        obj = super().__new__(cls, (masks, scores))
        obj.masks, obj.scores, obj.low_res_logits = masks, scores, low_res_logits
        return obj


def _autocast_name(dtype) -> str:
    """torch.bfloat16 -> "cuda-bfloat16"; None (no autocast) -> "f32"."""
    return "f32" if dtype is None else "cuda-" + str(dtype).removeprefix("torch.")


class Predictor:
    """Box/point-prompted segmentation of one image at a time.

    model: a ``LoadedModel`` from ``medsam_core.load_model`` (anything with ``spec``,
    ``encoder_id``, ``decode`` and ``parameters()`` works, e.g. a test double). cache: shared EmbeddingCache (one is made if None).
    intensity / channel: defaults for ``set_image`` (see preprocess.Intensity, to_grey_or_rgb).
    encoder_backend: "auto" (the verified OpenVINO engine on the CPU; at the first image it is
    built in a separate process while PyTorch eager serves), "openvino", "torch" or an
    ``backends.EncoderBackend``; None reads $MEDSAM_ENCODER_BACKEND (default "auto").
    """

    def __init__(self, model, cache: EmbeddingCache | None = None, intensity: Intensity | None = None,
                 channel: int | str | None = "auto", batch_size: int = 64,
                 encoder_backend: str | EncoderBackend | None = None):
        self.model = model
        # "auto" / "openvino" / "torch" / an EncoderBackend; None reads $MEDSAM_ENCODER_BACKEND.
        # Built at the first encode (an engine export can take a while), see backends.py.
        self._backend_choice = encoder_backend
        self._backend: EncoderBackend | None = None
        self._precision: str | None = None  # encoder_precision, worked out at the first key
        self._backend_lock = threading.Lock()
        self.cache = cache if cache is not None else EmbeddingCache()
        self.intensity = intensity or Intensity()
        self.channel = channel
        self.batch_size = batch_size
        self.encoder_calls = 0
        self._embedding = None  # torch (1, 256, 64, 64) on the model's device
        self._prepared: PreparedImage | None = None
        self.image_key: EmbeddingKey | None = None

    # -- image ---------------------------------------------------------------------------------
    @property
    def spec(self):
        return self.model.spec

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def original_size(self) -> tuple[int, int]:
        self._require_image()
        return self._prepared.original_size

    def key_for(self, image, intensity: Intensity | None = None, channel=None) -> EmbeddingKey:
        intensity = intensity or self.intensity
        channel = self.channel if channel is None else channel
        settings = f"{self.spec.preprocessing!r}|{intensity!r}|channel={channel!r}"
        image = np.asarray(image)
        if image.dtype == bool:  # keyed as check_image hands it to the encoder (uint8 0/1), so a bool
            image = image.view(np.uint8)  # image's key is the one its embedding is stored under
        return EmbeddingKey(content_hash(image), self.model.encoder_id, settings,
                            self.encoder_precision)

    @property
    def encoder_precision(self) -> str:
        """The precision this predictor's encoder is meant to run at, part of every embedding key:
        "f32", or a low precision the user opted into ($MEDSAM_ENCODER_PRECISION, or a backend
        instance such as an int8 engine). A float32 session never reads a bf16 session's embeddings
        from a shared store (their masks differ). Images the eager encoder serves while the engine
        is built are float32 under the low precision's key: more exact than asked, never less.
        On a GPU the eager encoder runs under autocast: "cuda-bfloat16" or "cuda-float16", so a store
        shared with a CPU machine is not mixed either."""
        if self._precision is None:
            choice = self._backend_choice
            if isinstance(choice, backends.TorchEncoder):
                self._precision = _autocast_name(choice.autocast_dtype())
            elif isinstance(choice, EncoderBackend):
                self._precision = str(choice.info.get("precision", "f32"))
            elif self.device.type != "cpu":  # eager on the model's device, whatever was asked for
                self._precision = _autocast_name(backends.TorchEncoder(self.model).autocast_dtype())
            elif (choice or os.environ.get("MEDSAM_ENCODER_BACKEND") or "auto").lower() == "torch":
                self._precision = "f32"
            else:
                self._precision = backends.requested_precision()
        return self._precision

    def set_image(self, image, intensity: Intensity | None = None, channel=None) -> bool:
        """Make ``image`` ((H, W) grey or (H, W, C) channels-last) the current image.

        Runs the encoder unless the cache holds this image's embedding. Returns True when the
        embedding came from the cache. On error the previous image stays set.
        """
        (done,) = self.embed([image], intensity, channel)
        import torch

        self._embedding = torch.from_numpy(np.asarray(done.entry.embedding, np.float32))[None].to(self.device)
        self._prepared = _geometry_from_meta(done.entry.meta)
        self.image_key = done.key
        return done.cached

    # -- encoding into the cache: the one way ----------------------------------------------------
    def embed(self, images, intensity: Intensity | None = None, channel=None, *,
              batch_size: int = ENCODE_BATCH, cancel: Cancel = None, skip_blank: bool = False) -> list:
        """Put the embeddings of ``images`` in ``self.cache`` -> one ``Embedded`` (key, cache
        entry, whether it was cached already) per image.

        images: a sequence of 2D images, each (H, W) or (H, W, C) channels-last (a list, or a
        (Z, Y, X) array whose slices are the images); one image is ``[image]``.
        Cached images (memory or disk) cost nothing; identical images are encoded once; the rest
        are encoded ``batch_size`` per encoder call. A cached entry whose geometry cannot belong
        to its image is warned about and encoded again. ``cancel`` is checked before each batch
        (CancelledError; batches already encoded stay cached: entries are keyed by content).
        skip_blank: constant images get None instead of an ImageError.
        The current image (``set_image``) is not changed; safe to call from a prefetch thread.
        """
        entries: list = [None] * len(images)
        for _ in self._embed(images, intensity, channel, batch_size, cancel, skip_blank, entries):
            pass
        return entries

    def embed_steps(self, images, intensity: Intensity | None = None, channel=None, *,
                    batch_size: int = ENCODE_BATCH, cancel: Cancel = None,
                    skip_blank: bool = False) -> Iterator[tuple[int, int]]:
        """``embed`` as a generator that only fills the cache: yields ``(done, total)`` images,
        first after checking the cache, then after each encoder batch. Checks only that cached
        files exist (reads none); raises MedSAMError before any encoding when a memory-only cache
        cannot hold the images to encode (they would evict each other), and CacheMismatchError
        when its disk store belongs to another model or preprocessing."""
        return self._embed(images, intensity, channel, batch_size, cancel, skip_blank, None)

    def _embed(self, images, intensity, channel, batch_size, cancel, skip_blank, entries):
        if batch_size < 1:
            raise MedSAMError(f"batch_size must be >= 1, got {batch_size}")
        intensity = intensity or self.intensity
        channel = self.channel if channel is None else channel
        todo: dict[str, tuple[list[int], EmbeddingKey, np.ndarray]] = {}
        checked = False
        for i in range(len(images)):
            image = images[i]
            check_whole_image_size(np.shape(image))  # before anything is read or allocated
            if skip_blank and np.ndim(image) >= 2 and np.min(image) == np.max(image):
                continue
            image = check_image(image)
            key = self.key_for(image, intensity, channel)
            if not checked:
                self.cache.check_store(key)
                checked = True
            if key.digest in todo:
                todo[key.digest][0].append(i)
                continue
            if entries is None:
                if key in self.cache:
                    continue
            else:
                entry = self.cache.get(key)
                if entry is not None and self._usable(entry, image.shape[:2]) is not None:
                    entries[i] = Embedded(key, entry, True)
                    continue
            todo[key.digest] = ([i], key, image)
        if len(todo) > 1:
            _check_room(self.cache, len(todo))
        total = len(images)
        done = total - len(todo)  # blank, cached and duplicate images cost nothing
        yield done, total
        pending = list(todo.values())
        for start in range(0, len(pending), batch_size):
            check_cancel(cancel)
            chunk = pending[start:start + batch_size]
            prepared = [prepare_image(image, self.spec.preprocessing, intensity, channel) for _, _, image in chunk]
            embeddings = self.encode(np.stack([p.tensor for p in prepared]))
            for (where, key, _), prep, emb in zip(chunk, prepared, embeddings, strict=True):
                entry = self.cache.put(key, emb, _geometry_meta(prep))
                if entries is not None:
                    for i in where:
                        entries[i] = Embedded(key, entry, False)
            done += len(chunk)
            yield done, total

    def _usable(self, entry, size: tuple[int, int]) -> PreparedImage | None:
        """The geometry of a cached entry, or None (warned) when it cannot belong to this image and
        model: another embedding shape or image size, or metadata without the geometry."""
        pe = getattr(self.model, "prompt_encoder", None)
        want = (getattr(pe, "embed_dim", None), *getattr(pe, "image_embedding_size", (None, None)))
        try:
            prepared = _geometry_from_meta(entry.meta)
            problem = None
            if None not in want and tuple(entry.embedding.shape) != want:
                problem = f"embedding shape {tuple(entry.embedding.shape)}, the model makes {want}"
            elif tuple(prepared.original_size) != tuple(size):
                problem = f"it was made for a {tuple(prepared.original_size)} image, this one is {tuple(size)}"
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"its metadata lacks the image geometry ({type(exc).__name__}: {exc})"
        if problem is None:
            return prepared
        import warnings

        warnings.warn(f"a cached embedding is not used: {problem}; encoding the image again", stacklevel=5)
        return None

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 model input -> (B, 256, 64, 64) float32 embeddings (no cache)."""
        out = self.encoder_backend.encode(batch)
        self.encoder_calls += len(batch)
        return out

    @property
    def encoder_backend(self) -> EncoderBackend:
        """The backend that runs the image encoder (made on first use; ``.name`` says which)."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = make_encoder_backend(self.model, self._backend_choice)
            return self._backend

    def encoder_state(self) -> str | None:
        """What runs the image encoder, for status lines, without making a backend: None before the
        first encode, "pending" while the fast engine is built in the background (PyTorch serves
        meanwhile), else the backend's name ("openvino", "torch", ...), followed by its precision
        where that is not float32 ("openvino bf16": masks differ slightly from float32's)."""
        backend = self._backend
        if backend is None:
            return None
        if backend.info.get("pending"):
            return "pending"
        precision = backend.info.get("precision", "f32")
        return backend.name if backend.name == "torch" or precision == "f32" else f"{backend.name} {precision}"

    def reset_image(self) -> None:
        self._embedding = None
        self._prepared = None
        self.image_key = None

    def _require_image(self):
        if self._embedding is None:
            raise PredictorStateError("no image is set: call set_image(image) before predict(...)")

    # -- prompts ---------------------------------------------------------------------------------
    def predict(self, boxes=None, points=None, point_labels=None, mask_input=None,
                multimask_output: bool | str = False) -> Prediction:
        """Segment N objects on the current image.

        boxes: (N, 4) XYXY pixel coordinates (x_min, y_min, x_max, y_max), or None.
        points: (N, P, 2) XY pixel coordinates with point_labels (N, P): 1 foreground, 0 background.
        mask_input: (N, 1, 256, 256) low-res logits from an earlier Prediction, to refine.
        Returns Prediction(masks (N, H, W) bool, scores (N,)) with ``low_res_logits``; with
        ``multimask_output`` masks are (N, 3, H, W) and scores (N, 3); ``multimask_output="all"``
        gives (N, 4, H, W) and (N, 4) from one decoder pass: the one-mask output first, then the
        three multimask outputs (one call instead of two where both are wanted).
        """
        self._require_image()
        from .modeling.sam import MASK_OUTPUTS  # torch is imported here anyway (just below)

        if multimask_output not in MASK_OUTPUTS:
            raise PromptError(f"multimask_output must be False, True or 'all', got {multimask_output!r}")
        import torch

        prep = self._prepared
        n, boxes_m, pts_m, labels = self._check_prompts(boxes, points, point_labels)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, np.float32)
            if mask_input.shape != (n, 1, 256, 256):
                raise PromptError(f"mask_input must have shape ({n}, 1, 256, 256), got {mask_input.shape}")
        m = len(MASK_OUTPUTS[multimask_output])
        h, w = prep.original_size
        if n == 0:
            shape = (0, m, h, w) if multimask_output else (0, h, w)
            return Prediction(np.zeros(shape, bool), np.zeros((0, m) if multimask_output else (0,), np.float32),
                              np.zeros((0, m, 256, 256), np.float32))
        logits_all, iou_all = [], []
        dev = self.device
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                e = min(n, s + self.batch_size)
                b = torch.as_tensor(boxes_m[s:e], dtype=torch.float32, device=dev) if boxes_m is not None else None
                p = None
                if pts_m is not None:
                    p = (torch.as_tensor(pts_m[s:e], dtype=torch.float32, device=dev),
                         torch.as_tensor(labels[s:e], dtype=torch.int64, device=dev))
                mi = torch.as_tensor(mask_input[s:e], device=dev) if mask_input is not None else None
                logits, iou = self.model.decode(self._embedding, boxes=b, points=p, mask_input=mi,
                                                multimask_output=multimask_output)
                logits_all.append(logits.float().cpu().numpy())
                iou_all.append(iou.float().cpu().numpy())
        low_res = np.concatenate(logits_all)
        scores = np.concatenate(iou_all)
        masks = lowres_to_masks(low_res, prep, self.spec.preprocessing)
        if not multimask_output:
            masks, scores = masks[:, 0], scores[:, 0]
        return Prediction(masks, scores, low_res)

    def _check_prompts(self, boxes, points, point_labels):
        prep = self._prepared
        if boxes is None and points is None:
            raise PromptError("give at least one prompt: boxes=(N, 4) and/or points=(N, P, 2)")
        n = None
        boxes_m = None
        if boxes is not None:
            arr = np.asarray(boxes, dtype=object)
            if arr.size == 0:
                n = 0
            else:
                arr = check_boxes(arr, prep.original_size)
                boxes_m = boxes_to_model(arr, prep)
                n = len(arr)
        pts_m = labels = None
        if points is not None:
            try:
                pts = np.asarray(points, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise PromptError(f"points must be numbers (x, y in pixels): {exc}") from exc
            if pts.ndim == 2 and pts.shape[-1] == 2:
                pts = pts[None]
            if point_labels is None:
                raise PromptError("points need point_labels: 1 for foreground, 0 for background")
            labels = np.asarray(point_labels)
            labels = labels[None] if labels.ndim == 1 else labels
            if pts.ndim != 3 or pts.shape[-1] != 2 or labels.shape != pts.shape[:2]:
                raise PromptError(
                    f"points must be (N, P, 2) XY with point_labels (N, P); got {pts.shape} and {labels.shape}"
                )
            if not np.isin(labels, (0, 1)).all():
                raise PromptError("point_labels must be 1 (foreground) or 0 (background)")
            h, w = prep.original_size
            if not np.isfinite(pts).all() or (pts < 0).any() or (pts[..., 0] >= w).any() or (pts[..., 1] >= h).any():
                raise PromptError(f"points must lie inside the {w}x{h} image")
            if n is not None and n != len(pts):
                raise PromptError(f"{n} boxes but {len(pts)} point sets: give one point set per box")
            n = len(pts)
            pts_m = points_to_model(pts, prep)
        return n, boxes_m, pts_m, labels


#: Largest (H * W) encoded as one image: preparing it costs about 16 bytes a pixel (float copies),
#: 4 GiB here. Larger images (whole-slide, 40000^2) are segmented by crops (roi.segment_large).
MAX_WHOLE_PIXELS = 2**28


def check_whole_image_size(shape: tuple[int, ...]) -> None:
    """Refuse, before any allocation, an image too large to prepare whole; say what to do instead."""
    if len(shape) >= 2 and int(shape[0]) * int(shape[1]) > MAX_WHOLE_PIXELS:
        from .errors import ImageError

        raise ImageError(
            f"the image is {shape[0]} x {shape[1]} pixels, too large to encode whole (limit "
            f"{MAX_WHOLE_PIXELS:,} pixels; it would need ~{int(shape[0]) * int(shape[1]) * 16 / 2**30:.0f} GiB): "
            "segment it in ROI mode (medsam batch/segment --roi roi, or medsam_core.roi.segment_large), "
            "which encodes only crops around the boxes, or open a lower-resolution pyramid level"
        )


def _check_room(cache, n_new: int) -> None:
    """Refuse, before encoding, more new embeddings than a memory-only cache holds."""
    if cache.disk_dir is not None or n_new == 0:
        return
    need = n_new * 256 * 64 * 64 * cache.dtype.itemsize
    if need > cache.max_bytes:
        raise MedSAMError(
            f"precomputing {n_new} slices needs {need / 2**20:.0f} MiB of embeddings but the cache "
            f"holds {cache.max_bytes / 2**20:.0f} MiB: later slices would evict earlier ones. Give "
            "EmbeddingCache a larger max_bytes, dtype='float16', or a disk_dir; or skip precomputing "
            "(segment_volume encodes the slices it needs)"
        )


def _geometry_meta(prep: PreparedImage) -> dict:
    return {
        "original_size": list(prep.original_size),
        "resized_size": list(prep.resized_size),
        "scale_xy": list(prep.scale_xy),
        "input_size": prep.input_size,
    }


def _geometry_from_meta(meta: dict) -> PreparedImage:
    return PreparedImage(
        np.empty(0, np.float32), tuple(meta["original_size"]), tuple(meta["resized_size"]),
        tuple(meta["scale_xy"]), int(meta["input_size"]),
    )
