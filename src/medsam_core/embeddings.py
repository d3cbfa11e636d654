"""Embedding cache: the image encoder runs once per image (or slice), model and preprocessing.

Keys are signed: image content hash + encoder weights id + preprocessing + intensity/channel
settings + format version. The memory tier is an LRU bounded in bytes; an optional disk store
(one folder) survives restarts and refuses, with a clear error, entries made by another model,
weights or preprocessing. Each stored entry carries a sha256 over its key, metadata and embedding,
checked on load: a changed, damaged, renamed or NaN entry is never used (a warning, then the
image is encoded again), so the store can only cost time, never give a wrong mask.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import clean_stale_tmp, mkstemp_readable
from .errors import CacheError, CacheMismatchError

CACHE_FORMAT_VERSION = 1


def content_hash(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (blake2b would do; sha256 is everywhere)."""
    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(str(arr.dtype).encode())
    digest.update(str(arr.shape).encode())
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


def _without_window_values(preprocessing: str) -> str:
    """``...value_range=(2703.0, 42678.0)...`` -> ``...value_range=<per image>...``."""
    import re

    # the numbers may be numpy scalars: "(np.float64(0.0), np.float64(500.0))", one level of nesting
    return re.sub(r"value_range=\((?:[^()]|\([^()]*\))*\)", "value_range=<per image>", preprocessing)


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding depends on. ``signature`` is the model-side part shared by a store."""

    image: str  # content hash of the raw image (or slice)
    encoder_id: str  # hash of the image-encoder weights
    preprocessing: str  # repr of the spec's Preprocessing + intensity + channel settings
    precision: str = "f32"  # the encoder's inference precision the session asked for (bf16: opted in)

    @property
    def signature(self) -> dict:
        sig = {
            "format": CACHE_FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "preprocessing": self.preprocessing,
        }
        if self.precision != "f32":  # float32 keys and stores stay as they were before the field
            sig["precision"] = self.precision
        return sig

    @property
    def store_signature(self) -> dict:
        """What one disk store's embeddings share: the signature without the intensity window's
        numbers, which are each image's (or volume's) own percentiles. One store then serves a folder
        of images or volumes; each entry still carries its full key, checked on every read."""
        sig = dict(self.signature)
        sig["preprocessing"] = _without_window_values(sig["preprocessing"])
        return sig

    @property
    def digest(self) -> str:
        raw = json.dumps({"image": self.image, **self.signature}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class CacheEntry:
    embedding: np.ndarray  # (256, 64, 64) float32 or float16
    meta: dict  # geometry of the prepared image (original/resized size, scale)

    @property
    def nbytes(self) -> int:
        return int(self.embedding.nbytes)


class EmbeddingCache:
    """LRU of embeddings bounded by ``max_bytes``; optional ``disk_dir`` store.

    ``dtype="float16"`` halves memory and disk (the decoder still runs in float32).
    Thread-safe: the napari widget encodes in a worker thread while the GUI thread decodes.
    """

    def __init__(self, max_bytes: int = 512 * 2**20, disk_dir: str | os.PathLike | None = None,
                 dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise ValueError("dtype must be 'float32' or 'float16'")
        self.max_bytes = int(max_bytes)
        self.dtype = np.dtype(dtype)
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir else None
        if self.disk_dir is not None and self.disk_dir.exists() and not self.disk_dir.is_dir():
            raise CacheError(
                f"embedding store {self.disk_dir} is a file, not a folder: give a folder (it is created if missing)"
            )
        self._cleaned = False
        self._mem: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    # -- memory tier -------------------------------------------------------------------------
    def get(self, key: EmbeddingKey) -> CacheEntry | None:
        digest = key.digest
        with self._lock:
            entry = self._mem.get(digest)
            if entry is not None:
                self._mem.move_to_end(digest)
                self.hits += 1
                return entry
        entry = self._disk_get(key)
        if entry is not None:
            self.disk_hits += 1
            self._put_mem(digest, entry)
            return entry
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: EmbeddingKey, embedding: np.ndarray, meta: dict) -> CacheEntry:
        entry = CacheEntry(np.ascontiguousarray(embedding, dtype=self.dtype), dict(meta))
        self._put_mem(key.digest, entry)
        self._disk_put(key, entry)
        return entry

    def __contains__(self, key: EmbeddingKey) -> bool:
        with self._lock:
            if key.digest in self._mem:
                return True
        return self._disk_path(key) is not None and self._disk_path(key).exists()

    def _put_mem(self, digest: str, entry: CacheEntry) -> None:
        with self._lock:
            if digest in self._mem:
                self._bytes -= self._mem.pop(digest).nbytes
            self._mem[digest] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and len(self._mem) > 1:
                _, old = self._mem.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._mem)

    # -- disk tier ---------------------------------------------------------------------------
    def check_store(self, key: EmbeddingKey) -> None:
        """Raise CacheMismatchError now if the disk store was made for another model/preprocessing.

        Long jobs (``embed_volume``) call this before any encoder work, so a mismatch is refused
        at once rather than after the first batch.
        """
        if self.disk_dir is not None:
            self._check_store_signature(key)

    def _disk_path(self, key: EmbeddingKey) -> Path | None:
        if self.disk_dir is None:
            return None
        return self.disk_dir / f"{key.digest}.npz"

    def _check_store_signature(self, key: EmbeddingKey) -> None:
        """The store folder records the model signature it was made with; refuse another."""
        sig_file = self.disk_dir / "signature.json"
        want = key.store_signature
        if sig_file.exists():
            try:
                have = json.loads(sig_file.read_text())
            except (OSError, ValueError) as exc:
                raise CacheMismatchError(
                    f"embedding store {self.disk_dir} has an unreadable signature.json ({exc}); "
                    "delete the folder or choose another one"
                ) from None
            if isinstance(have, dict) and isinstance(have.get("preprocessing"), str):
                have = {**have, "preprocessing": _without_window_values(have["preprocessing"])}  # older stores
            if have != want:
                diff = [k for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
                raise CacheMismatchError(
                    f"embedding store {self.disk_dir} was made with a different {', '.join(diff)} "
                    "(another model, weights, preprocessing or encoder precision); its embeddings would give "
                    "wrong masks. Choose another folder, or delete this one to rebuild it."
                )
        else:
            try:
                self.disk_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the embedding store {self.disk_dir}: {exc.strerror or exc}; "
                                 "choose a folder you can write") from None
            _atomic_write_bytes(sig_file, json.dumps(want, indent=1, sort_keys=True).encode())

    def _disk_get(self, key: EmbeddingKey) -> CacheEntry | None:
        """The stored entry, or None when there is none or it fails its integrity check (warned).

        An entry is used only if its sha256 (over key, meta and embedding bytes, written by
        ``_disk_put``) matches and the embedding is a finite float array: an edited,
        truncated, NaN or renamed file is a miss and is recomputed and rewritten by the caller.
        """
        path = self._disk_path(key)
        if path is None:
            return None
        self._check_store_signature(key)
        if not path.exists():
            return None
        problem = None
        try:
            with np.load(path, allow_pickle=False) as data:
                key_text, meta_text = str(data["key"]), str(data["meta"])
                emb = np.asarray(data["embedding"])
                stored_sum = str(data["sha256"]) if "sha256" in data.files else None
            stored_key, meta = json.loads(key_text), json.loads(meta_text)
        except Exception as exc:  # a truncated or foreign file: recompute rather than trust it
            problem = f"unreadable ({type(exc).__name__})"
        else:
            problem = _entry_problem(stored_key, key, meta, emb, stored_sum, key_text, meta_text)
        if problem is not None:
            warnings.warn(f"embedding file {path.name} in {self.disk_dir} is not used: {problem}; "
                          "the image is encoded again and the file replaced", CacheIntegrityWarning, stacklevel=3)
            return None
        return CacheEntry(emb.astype(self.dtype, copy=False), meta)

    def _disk_put(self, key: EmbeddingKey, entry: CacheEntry) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        self._check_store_signature(key)
        if not self._cleaned:  # once per cache: temp files a killed process left behind
            self._cleaned = True
            clean_stale_tmp(self.disk_dir)
        key_text = json.dumps({"image": key.image, **key.signature}, sort_keys=True)
        meta_text = json.dumps(entry.meta)
        fd, tmp = mkstemp_readable(prefix=".emb.", suffix=".npz", dir=self.disk_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, embedding=entry.embedding, key=key_text, meta=meta_text,
                         sha256=entry_checksum(key_text, meta_text, entry.embedding))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class CacheIntegrityWarning(UserWarning):
    """A disk-cache entry failed its check and was ignored (it is recomputed)."""


def entry_checksum(key_text: str, meta_text: str, embedding: np.ndarray) -> str:
    """sha256 over an entry's key, meta and embedding (dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for part in (key_text, meta_text):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part.encode())
    digest.update(content_hash(embedding).encode())
    return digest.hexdigest()


def _entry_problem(stored_key, key: EmbeddingKey, meta, emb: np.ndarray, stored_sum: str | None,
                   key_text: str, meta_text: str) -> str | None:
    """Why a stored entry must not be used, or None when it is sound."""
    if stored_sum is None:
        return "it has no checksum (written by an older version)"
    if stored_sum != entry_checksum(key_text, meta_text, emb):
        return "its checksum does not match its contents (the file was changed or damaged)"
    if stored_key != {"image": key.image, **key.signature}:
        return "it belongs to another image, model or preprocessing (renamed or copied file)"
    if not isinstance(meta, dict):
        return "its metadata is not a mapping"
    if emb.dtype.kind != "f" or emb.size == 0:  # the shape is the Predictor's to check (it knows the model)
        return f"its embedding has shape {emb.shape} and dtype {emb.dtype}, not a float array"
    if not np.isfinite(emb).all():
        return "its embedding holds NaN or inf"
    return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = mkstemp_readable(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
