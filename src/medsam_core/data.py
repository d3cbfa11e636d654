"""Training samples: one object per label id, prompted by the box the user drew (or its bounding box).

``make_training_data(pairs, boxes=None)`` validates (image, labels) pairs and lists the objects.
``prepare_variant`` turns one image (optionally flipped) into what the model trains on: the
(3, S, S) input, every object's box in model pixels and its target mask on the decoder's
256 x 256 low-res grid, built with the same longest-side + pad geometry as the image (so
``preprocess.lowres_to_masks`` maps a perfect prediction back onto the object).

Augmentation and the decoder-only (fast) mode
---------------------------------------------
* Box jitter (``jitter_boxes``) is valid in every mode: it changes only the prompt.
* Flips must flip the *image*, then encode it. Flipping a cached embedding is not the
  embedding of the flipped image: the encoder has padding at the bottom/right, learned
  position-dependent biases and windowed attention, so it is not flip-equivariant. In the
  decoder-only mode a flip therefore costs one extra encoder pass per image and flip (done once;
  the flipped images are ordinary cache entries); in the full/LoRA modes the image is encoded at
  every step anyway, so flips are free.

Boxes are XYXY in pixels, inclusive indices (x_min, y_min, x_max, y_max), as the Predictor takes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._paths import split_suffix
from .errors import ImageError, PromptError, TrainingError
from .preprocess import Intensity, PreparedImage, area_weights, check_boxes, prepare_image
from .registry import Preprocessing

LOWRES = 256  # the mask decoder's output grid
FLIPS = ((False, False), (True, False), (False, True), (True, True))  # (horizontal, vertical)


@dataclass(frozen=True)
class ObjectSample:
    """One labelled object: ``labels[image_index] == label`` prompted by ``box`` (4,) XYXY pixels."""

    image_index: int
    label: int
    box: tuple[float, float, float, float]
    drawn: bool  # True: the box the user drew; False: the object's bounding box


@dataclass
class TrainingData:
    """Validated images, their label images (H, W) int, and the objects to learn."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    objects: list[ObjectSample]

    def __len__(self) -> int:
        return len(self.objects)

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool mask of object ``i``."""
        o = self.objects[i]
        return self.labels[o.image_index] == o.label

    def subset(self, indices: Sequence[int]) -> TrainingData:
        """The same images (shared, not copied) with only the listed objects."""
        return TrainingData(self.images, self.labels, [self.objects[i] for i in indices])

    def by_image(self) -> dict[int, list[int]]:
        """image index -> object indices."""
        groups: dict[int, list[int]] = {}
        for i, o in enumerate(self.objects):
            groups.setdefault(o.image_index, []).append(i)
        return groups


def bounding_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(H, W) bool -> XYXY inclusive bounding box, widened to >= 1 pixel on each axis."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    if x1 == x0:
        x0, x1 = (x0, x0 + 1) if x0 + 1 < w else (x0 - 1, x0)
    if y1 == y0:
        y0, y1 = (y0, y0 + 1) if y0 + 1 < h else (y0 - 1, y0)
    return float(x0), float(y0), float(x1), float(y1)


def _check_labels(labels, image_shape: tuple[int, int], k: int) -> np.ndarray:
    """(H, W) label image or (K, H, W) stack of masks -> (H, W) int64 label image."""
    lab = np.asarray(labels)
    if lab.dtype.kind == "f":
        if not np.isfinite(lab).all():
            raise TrainingError(f"labels {k} contain NaN or inf: labels must be integer object ids")
        if (lab != np.round(lab)).any():
            raise TrainingError(f"labels {k} are fractional: give an integer label image (0 = background)")
    elif lab.dtype.kind not in "biu":
        raise TrainingError(f"labels {k} have dtype {lab.dtype}: give an integer label image")
    if lab.ndim == 3 and lab.shape[:2] == image_shape and lab.shape[1:] != image_shape:
        lab = np.moveaxis(lab, -1, 0)  # a stack of 2-4 masks that a TIFF reader took for colour channels
    if lab.ndim == 3 and lab.shape[1:] == image_shape:  # a stack of binary masks, one per object
        _refuse_label_volume(lab, image_shape, k)
        stack = lab != 0
        empty = [i for i in range(len(stack)) if not stack[i].any()]
        if empty:
            raise TrainingError(
                f"labels {k}: masks {empty[:10]} are empty; remove them or paint the objects"
            )
        out = np.zeros(image_shape, np.int64)
        for i in range(len(stack)):
            out[stack[i]] = i + 1
        return out
    if lab.shape != image_shape:
        raise TrainingError(
            f"labels {k} have shape {lab.shape} but image {k} is {image_shape}: labels must be an (H, W) "
            "label image of the same size as the image (or a (K, H, W) stack of masks)"
        )
    if lab.min() < 0:
        raise TrainingError(f"labels {k} contain negative ids: use 0 for background and 1, 2, ... for objects")
    return lab.astype(np.int64, copy=False)


def _refuse_label_volume(lab: np.ndarray, image_shape: tuple[int, int], k: int) -> None:
    """A (K, H, W) stack is read as K binary masks; a 3D *label volume* (ids, or masks that overlap)
    would be mangled into a few objects, so it is refused with what to give instead."""
    stack = lab != 0
    several_ids = any(len(np.unique(plane[plane != 0])) > 1 for plane in lab)
    if several_ids or (stack.sum(axis=0) > 1).any():
        raise TrainingError(
            f"labels {k} are a 3D label volume {lab.shape} (Z, Y, X) but image {k} is 2D {image_shape}: "
            "give the 3D image they belong to (each labelled slice becomes a training image), or one "
            "2D label image per 2D image"
        )


def _check_image(image, k: int) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise TrainingError(f"image {k} contains NaN or inf pixels: fix or mask them before fine-tuning")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] > 4):
        raise TrainingError(f"image {k} has shape {img.shape}: give a 2D (H, W) or (H, W, C) image")
    return img


def make_training_data(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    boxes: Sequence[Mapping[int, Sequence[float]] | None] | None = None,
    min_objects: int = 2,
) -> TrainingData:
    """Validate (image, labels) pairs and list their objects.

    pairs: [(image (H, W) or (H, W, C), labels (H, W) int, 0 = background), ...].
    boxes: per pair, an optional mapping label id -> the (4,) XYXY box the user drew for it.
    min_objects: fewer labelled objects raise TrainingError (one to train, one held out).
    Raises TrainingError for no pairs, mismatched shapes, NaNs, empty masks, too few objects.
    """
    if not pairs:
        raise TrainingError("no (image, labels) pairs given: pick at least one image with a labels layer")
    if boxes is not None and len(boxes) != len(pairs):
        raise TrainingError(f"{len(boxes)} box mappings for {len(pairs)} image/labels pairs: give one per pair")
    images, label_images, objects = [], [], []
    for k, (image, labels) in enumerate(pairs):
        img = _check_image(image, k)
        lab = _check_labels(labels, img.shape[:2], k)
        drawn = dict((boxes[k] or {}) if boxes is not None else {})
        ids = [int(i) for i in np.unique(lab) if i != 0]
        missing = sorted(set(int(i) for i in drawn) - set(ids))
        if missing:
            raise TrainingError(
                f"image {k}: boxes were drawn for label ids {missing[:10]} whose masks are empty; "
                "paint those objects or delete their boxes"
            )
        for label in ids:
            if label in drawn:
                try:
                    box = tuple(float(v) for v in check_boxes(drawn[label], img.shape[:2])[0])
                except PromptError as exc:
                    raise TrainingError(f"image {k}, label {label}: {exc}") from None
                objects.append(ObjectSample(k, label, box, True))
            else:
                objects.append(ObjectSample(k, label, bounding_box(lab == label), False))
        images.append(img)
        label_images.append(lab)
    drawn_any = boxes is not None and any(boxes)
    hint = "" if drawn_any else binary_mask_hint(label_images)
    if not objects:
        raise TrainingError("the labels hold no objects (all zero): label some objects first")
    if len(objects) < min_objects:
        raise TrainingError(
            f"only {len(objects)} labelled object(s): fine-tuning needs at least {min_objects} "
            "(some to train on, at least one held out to check the result); label more objects" + hint
        )
    return TrainingData(images, label_images, objects)


def binary_mask_hint(label_images) -> str:
    """"; the labels of image(s) [..] look like a binary mask ...": label images with one id in many
    separate pieces (a 0/255 mask of many nuclei, one "object" the size of the image), warned about
    here and appended to a refusal; "" when there is none."""
    from scipy import ndimage

    binary = []
    for k, lab in enumerate(label_images):
        lab = np.asarray(lab)
        ids = np.unique(lab)
        ids = ids[ids != 0]
        if lab.ndim == 2 and len(ids) == 1:
            if ndimage.label(lab == ids[0], structure=np.ones((3, 3), int))[1] >= 3:
                binary.append(k)
    if not binary:
        return ""
    hint = (f"; the labels of image(s) {binary[:10]} look like a binary mask (one id, many separate pieces): "
            "give each object its own id (e.g. skimage.measure.label(mask))")
    warnings.warn(hint[2:], stacklevel=3)
    return hint


def image_key(image) -> bytes:
    """The image's content hash (``embeddings.content_hash``, as embedding keys use), as bytes."""
    from .embeddings import content_hash

    return bytes.fromhex(content_hash(image))


def object_key(image_hash: bytes, mask: np.ndarray) -> bytes:
    """One object's identity across rounds: its image's digest and its own pixel positions. The
    same object later (more labels, relabelled ids, images in another order) has the same key; an
    edited mask or image is a new object."""
    import hashlib

    return hashlib.blake2b(image_hash + np.flatnonzero(mask).astype(np.int64).tobytes(), digest_size=16).digest()


def object_keys(data: TrainingData) -> list[bytes]:
    """``object_key`` of every object of ``data``."""
    digests: dict[int, bytes] = {}
    for o in data.objects:
        if o.image_index not in digests:
            digests[o.image_index] = image_key(data.images[o.image_index])
    return [object_key(digests[o.image_index], data.mask(i)) for i, o in enumerate(data.objects)]


def _permutation_draw(rng, m: int, k: int):
    return rng.permutation(m)[:k]


def draw_held(n: int, n_held: int, seed: int, keys: Sequence[bytes] | None = None,
              sides: dict[bytes, bool] | None = None, draw=_permutation_draw) -> list[int]:
    """Indices of the ``n_held`` of ``n`` objects to hold out, at least one on each side when n >= 2.

    sides (with keys): the split of earlier rounds (key -> held out), updated in place. Objects seen
    before stay on their side, so a later round never measures the active model on objects it was
    trained on; only new objects are drawn, as many as keep the held-out count at ``n_held``.
    Without it (or on its first use) the draw is the plain random one: ``draw(rng, m, k)`` picks k of
    m indices.
    """
    known = {i: sides[k] for i, k in enumerate(keys) if k in sides} if sides is not None else {}
    new = [i for i in range(n) if i not in known]
    need = min(len(new), max(0, n_held - sum(known.values())))
    picked = draw(np.random.default_rng(seed), len(new), need) if need else []
    held = sorted([i for i, h in known.items() if h] + [new[j] for j in picked])
    if not held or len(held) == n:  # earlier sides cannot give both parts (objects removed): draw afresh
        held = sorted(int(j) for j in draw(np.random.default_rng(seed), n, n_held))
    if sides is not None:
        held_set = set(held)
        sides.update({k: i in held_set for i, k in enumerate(keys)})
    return held


def split_holdout(data: TrainingData, fraction: float, seed: int = 0,
                  sides: dict[bytes, bool] | None = None) -> tuple[TrainingData, TrainingData]:
    """Random split into (train, held out); at least one object on each side.

    sides: the split of earlier rounds, kept across rounds (``draw_held``; ``guard.FineTuneSession``
    passes its own).
    """
    n = len(data)
    if not 0 < fraction < 1:
        raise TrainingError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    if n < 2:
        raise TrainingError(f"{n} object(s) cannot be split into training and held-out sets: label more")
    n_held = min(n - 1, max(1, int(round(fraction * n))))
    held = set(draw_held(n, n_held, seed, object_keys(data) if sides is not None else None, sides))
    return data.subset([i for i in range(n) if i not in held]), data.subset(sorted(held))


def flip_image_and_boxes(image: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                         horizontal: bool, vertical: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip an (H, W[, C]) image, its (H, W) labels and (K, 4) XYXY boxes together."""
    h, w = labels.shape
    boxes = np.array(boxes, np.float64, copy=True).reshape(-1, 4)
    if horizontal:
        image, labels = image[:, ::-1], labels[:, ::-1]
        boxes[:, [0, 2]] = (w - 1) - boxes[:, [2, 0]]
    if vertical:
        image, labels = image[::-1], labels[::-1]
        boxes[:, [1, 3]] = (h - 1) - boxes[:, [3, 1]]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels), boxes


@dataclass
class Variant:
    """One (possibly flipped) image of the training set, ready for the model.

    image: the flipped image (H, W[, C]), for the embedding cache key; prepared.tensor (3, S, S);
    objects: object indices into TrainingData; boxes: (K, 4) XYXY image pixels of the flipped
    image; targets: (K, 256, 256) uint8 on the decoder's low-res grid.
    """

    image_index: int
    flip: tuple[bool, bool]
    image: np.ndarray
    prepared: PreparedImage
    objects: list[int]
    boxes: np.ndarray
    targets: np.ndarray = field(repr=False)


def lowres_targets(labels: np.ndarray, ids: Sequence[int], prepared: PreparedImage) -> np.ndarray:
    """(H, W) labels, K ids -> (K, 256, 256) uint8 targets in model space.

    The object's mask is area-resized to the part of the low-res grid that covers the image
    (the same crop ``lowres_to_masks`` takes), thresholded at 0.5, and padded with background.
    """
    h, w = labels.shape
    nh, nw = prepared.resized_size
    ch, cw = round(nh * LOWRES / prepared.input_size), round(nw * LOWRES / prepared.input_size)
    wy = area_weights(h, ch, h >= ch and w >= cw).astype(np.float32)
    wx = area_weights(w, cw, h >= ch and w >= cw).astype(np.float32)
    out = np.zeros((len(ids), LOWRES, LOWRES), np.uint8)
    for k, label in enumerate(ids):
        m = (labels == label).astype(np.float32)
        out[k, :ch, :cw] = (wy @ m @ wx.T) >= 0.5
    return out


def prepare_variant(data: TrainingData, image_index: int, objects: Sequence[int], pre: Preprocessing,
                    flip: tuple[bool, bool] = (False, False), intensity: Intensity | None = None,
                    channel: int | str | None = "auto") -> Variant:
    """Prepare image ``image_index`` (flipped as asked) with the targets of ``objects``."""
    image, labels = data.images[image_index], data.labels[image_index]
    boxes = np.array([data.objects[i].box for i in objects], np.float64).reshape(-1, 4)
    image, labels, boxes = flip_image_and_boxes(image, labels, boxes, *flip)
    try:
        prepared = prepare_image(image, pre, intensity, channel)
    except ImageError as exc:
        raise TrainingError(f"image {image_index}: {exc}") from None
    targets = lowres_targets(labels, [data.objects[i].label for i in objects], prepared)
    return Variant(image_index, tuple(flip), image, prepared, list(objects), boxes, targets)


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, max_shift: float,
                 image_size: tuple[int, int], inward: bool = False) -> np.ndarray:
    """Move each side of (K, 4) XYXY boxes independently by up to ``max_shift`` pixels.

    Outward only by default (as MedSAM's training does: users draw loose boxes, rarely cut the
    object); ``inward=True`` allows shrinking too. Clipped to the (H, W) image; every box keeps
    at least one pixel of width and height.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if max_shift <= 0:
        return boxes.copy()
    h, w = image_size
    lo = -max_shift if inward else 0.0
    d = rng.uniform(lo, max_shift, size=boxes.shape)
    out = boxes + d * np.array([-1.0, -1.0, 1.0, 1.0])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h - 1)
    bad = (out[:, 2] - out[:, 0] < 1) | (out[:, 3] - out[:, 1] < 1)
    out[bad] = boxes[bad]
    return out


# -- folders of files (medsam train, train/finetune.py) -----------------------------------------
_SUFFIXES = (".nii.gz", ".tiff", ".tif", ".nii", ".npz", ".png")
_LABEL_TAGS = ("_labels", "_label", "_masks", "_mask", "_seg")


def _stem(path) -> str | None:
    stem, suffix = split_suffix(path, (".nii.gz",))
    return stem if suffix in _SUFFIXES else None


def _read_labels_file(path) -> np.ndarray:
    if path.name.lower().endswith(".npz"):
        try:
            return _read_labels_npz(path)
        except TrainingError:
            raise
        except Exception as exc:  # numpy raises many types for a damaged or foreign file
            raise TrainingError(f"cannot read labels {path}: {type(exc).__name__}: {exc}") from None
    from .io import read_image

    return read_image(path)[0]


def _read_labels_npz(path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as d:
        for key in ("labels", "masks", "label", "image"):
            if key in d.files:
                return np.asarray(d[key])
        if len(d.files) == 1:
            return np.asarray(d[d.files[0]])
        raise TrainingError(f"{path} has no array named 'labels' (found: {', '.join(d.files)})")


def _listed(folder) -> list:
    """Readable files of ``folder`` (hidden ones and other suffixes skipped), sorted by name."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
            and _stem(p) is not None]


def _refuse_shared_stem(seen: dict, stem: str, path, what: str) -> None:
    """Two files of one stem (a.tif and a.npz) would both be used: the same object twice, one copy
    possibly in the held-out set, which inflates the held-out Dice. Refuse instead of guessing."""
    if stem in seen:
        raise TrainingError(
            f"{seen[stem].name} and {path.name} in {path.parent} share the {what} name {stem!r}: pairs are "
            "made by name, so keep one of them (move the other out of the folder)"
        )


def read_folder_pairs(images_dir, labels_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) pairs from two folders, matched by file stem (TIFF, NIfTI, npz, PNG).

    A labels file may carry a tag after the image's stem (``cell01_labels.tif`` pairs with
    ``cell01.tif``). A 3D volume (Z, Y, X) gives one pair per labelled slice. Raises
    TrainingError for missing folders, unpaired images, or no pairs at all.
    """
    from pathlib import Path

    from .errors import MedSAMError
    from .io import read_image

    images_dir, labels_dir = Path(images_dir).expanduser(), Path(labels_dir).expanduser()
    for d, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not d.is_dir():
            raise TrainingError(f"{what} folder {d} does not exist")
    labels: dict[str, Path] = {}
    for p in _listed(labels_dir):
        stem = _stem(p)
        for tag in _LABEL_TAGS:
            if stem.lower().endswith(tag):
                stem = stem[: -len(tag)]
                break
        _refuse_shared_stem(labels, stem, p, "label")
        labels[stem] = p
    pairs, unpaired, seen = [], [], {}
    for p in _listed(images_dir):
        stem = _stem(p)
        _refuse_shared_stem(seen, stem, p, "image")
        seen[stem] = p
        if stem not in labels:
            unpaired.append(p.name)
            continue
        try:
            image, lab = read_image(p)[0], _read_labels_file(labels[stem])
        except MedSAMError as exc:
            raise TrainingError(f"cannot read the pair {p.name} / {labels[stem].name}: {exc}") from None
        if image.ndim == 3 and lab.ndim == 3 and image.shape == lab.shape and image.shape[-1] > 4:
            pairs.extend((image[z], lab[z]) for z in range(len(lab)) if lab[z].any())
        elif image.ndim == 3 and lab.ndim == 3 and image.shape == lab.shape:
            # a stack of 2-4 slices reads as (Y, X, C) colour; labels are never colour: it is (Y, X, Z)
            pairs.extend((image[..., z], lab[..., z]) for z in range(lab.shape[-1]) if lab[..., z].any())
        else:
            if lab.ndim == 2 and tuple(image.shape[:2]) != tuple(lab.shape):  # (3D labels: refused later)
                raise TrainingError(f"the labels {labels[stem].name} {tuple(lab.shape)} do not fit the image {p.name} "
                                    f"{tuple(image.shape)}: they must have the image's height and width")
            pairs.append((image, lab))
    if unpaired:
        raise TrainingError(
            f"no labels file for {', '.join(unpaired[:5])}{' ...' if len(unpaired) > 5 else ''} in {labels_dir}: "
            "labels pair with images by file name (same stem, e.g. img01.tif and img01.tif or img01_labels.tif)"
        )
    if not pairs:
        raise TrainingError(f"no image files (TIFF, NIfTI, npz, PNG) in {images_dir}")
    return pairs
