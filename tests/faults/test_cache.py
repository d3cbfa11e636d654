"""Fault catalogue, embedding disk cache: a stored entry is used only if it is exactly what was written.

Bug (issue 14): the store checked only the key written inside each file, so edited values,
another image's embedding with the key rewritten, or an all-NaN embedding were all used and
gave wrong masks silently. Now each entry carries a sha256 over key, metadata and embedding;
any damage is a miss (with a warning), the image is encoded again and the file replaced.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from medsam_core.embeddings import CacheIntegrityWarning, EmbeddingCache, EmbeddingKey, entry_checksum
from medsam_core.errors import CacheError, CacheMismatchError

from .conftest import age

KEY = EmbeddingKey(image="img-a", encoder_id="enc", preprocessing="pre")
OTHER = EmbeddingKey(image="img-b", encoder_id="enc", preprocessing="pre")
META = {"original_size": [64, 64], "resized_size": [256, 256], "scale_xy": [4.0, 4.0], "input_size": 256}


def _emb(seed=0):
    return np.random.default_rng(seed).standard_normal((8, 4, 4)).astype(np.float32)


def _stored(store, key=KEY, seed=0):
    EmbeddingCache(disk_dir=store).put(key, _emb(seed), META)
    return store / f"{key.digest}.npz"


def _rewrite(path, **fields):
    """Rewrite an entry's fields (np.savez), keeping the others; ``fix_sum`` recomputes the checksum."""
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    fix = fields.pop("fix_sum", False)
    data.update(fields)
    if fix:
        data["sha256"] = entry_checksum(str(data["key"]), str(data["meta"]), np.asarray(data["embedding"]))
    with open(path, "wb") as fh:
        np.savez(fh, **data)


def tamper_values(path):
    with np.load(path) as d:
        emb = d["embedding"].copy()
    emb[0, 0, 0] += 0.5
    _rewrite(path, embedding=emb)


def swap_in_other_image(path):
    """Another image's embedding under this key: the attack/accident the key alone cannot see."""
    other = _stored(path.parent, OTHER, seed=1)
    with np.load(other) as d:
        _rewrite(path, embedding=d["embedding"], meta=d["meta"])


def other_image_file_renamed(path):
    other = _stored(path.parent, OTHER, seed=1)
    other.replace(path)


def all_nan_with_valid_sum(path):  # a bug at write time would store a NaN embedding "correctly"
    _rewrite(path, embedding=np.full((8, 4, 4), np.nan, np.float32), fix_sum=True)


def integer_embedding_with_valid_sum(path):
    _rewrite(path, embedding=np.zeros((8, 4, 4), np.int32), fix_sum=True)


def tamper_meta(path):
    _rewrite(path, meta=json.dumps({**META, "input_size": 1024}))


def meta_not_a_mapping(path):
    _rewrite(path, meta=json.dumps([1, 2]), fix_sum=True)


def truncated(path):
    path.write_bytes(path.read_bytes()[:100])


def zero_bytes(path):
    path.write_bytes(b"")


def no_checksum(path):  # written by an older version: recomputed once, then checksummed
    with np.load(path) as d:
        data = {k: d[k] for k in d.files if k != "sha256"}
    with open(path, "wb") as fh:
        np.savez(fh, **data)


def pickled_object_array(path):
    """An object array in the entry (np.savez pickles it): np.load(allow_pickle=False) refuses it."""
    from .conftest import Evil

    with np.load(path) as d:
        data = {k: d[k] for k in d.files}
    arr = np.empty(1, dtype=object)
    arr[0] = Evil(path.parent / "PWNED")
    data["embedding"] = arr
    with open(path, "wb") as fh:
        np.savez(fh, **data)


DAMAGE = [tamper_values, swap_in_other_image, other_image_file_renamed, all_nan_with_valid_sum,
          integer_embedding_with_valid_sum, tamper_meta, meta_not_a_mapping, truncated, zero_bytes, no_checksum,
          pickled_object_array]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damaged_entry_is_never_used(damage, tmp_path):
    path = _stored(tmp_path)
    damage(path)
    cache = EmbeddingCache(disk_dir=tmp_path)
    with pytest.warns(CacheIntegrityWarning, match="is not used"):
        assert cache.get(KEY) is None
    assert not (tmp_path / "PWNED").exists()
    # the caller encodes again and puts: the file is replaced by a sound one, used from then on
    cache.put(KEY, _emb(0), META)
    fresh = EmbeddingCache(disk_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = fresh.get(KEY)
    np.testing.assert_array_equal(entry.embedding, _emb(0))


def test_sound_entry_is_used(tmp_path):
    _stored(tmp_path)
    cache = EmbeddingCache(disk_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = cache.get(KEY)
    assert cache.disk_hits == 1 and entry.meta == META
    np.testing.assert_array_equal(entry.embedding, _emb(0))


def test_disk_dir_that_is_a_file(tmp_path):
    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(CacheError, match="is a file, not a folder"):  # bug: NotADirectoryError later
        EmbeddingCache(disk_dir=tmp_path / "store")


def test_disk_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    cache = EmbeddingCache(disk_dir=tmp_path / "f" / "store")
    with pytest.raises(CacheError, match="cannot create the embedding store"):
        cache.put(KEY, _emb(), META)


def test_store_of_another_model_is_refused(tmp_path):
    _stored(tmp_path)
    other_model = EmbeddingKey(image="img-a", encoder_id="other-weights", preprocessing="pre")
    with pytest.raises(CacheMismatchError, match="encoder_id"):
        EmbeddingCache(disk_dir=tmp_path).get(other_model)


def test_unreadable_signature_is_refused(tmp_path):
    _stored(tmp_path)
    (tmp_path / "signature.json").write_text("{not json")
    with pytest.raises(CacheMismatchError, match="unreadable signature"):
        EmbeddingCache(disk_dir=tmp_path).get(KEY)


def test_stale_temp_files_in_the_store_are_cleaned(tmp_path):
    _stored(tmp_path)
    left = tmp_path / ".emb.medsam-tmp-q1w2e3r4.npz"
    young = tmp_path / ".emb.medsam-tmp-a1s2d3f4.npz"
    foreign = tmp_path / ".emb.tmp.npz"
    for p in (left, young, foreign):
        p.write_bytes(b"half")
    age(left)
    age(foreign)
    EmbeddingCache(disk_dir=tmp_path).put(OTHER, _emb(1), META)
    assert not left.exists() and young.exists() and foreign.exists()


def test_checksum_cost_is_small_next_to_an_encode():
    """The cost of the check, reported (not asserted as a time): a LiteMedSAM embedding is
    (256, 64, 64) float32 = 4 MiB; see docs/cli-and-io.md for the measured ratio."""
    emb = np.zeros((256, 64, 64), np.float32)
    a = entry_checksum("k", "m", emb)
    emb[255, 63, 63] = 1e-7
    assert entry_checksum("k", "m", emb) != a  # one changed value anywhere changes the sum


@pytest.mark.slow
@pytest.mark.parametrize("forged", ["embedding_shape", "meta_without_geometry", "meta_of_another_size"])
def test_predictor_never_decodes_a_forged_entry(forged, tmp_path, lite_model):
    """Bug: an entry of the wrong shape or with tampered metadata gave a torch traceback. Even one
    forged with a valid checksum (written by a program, not damage) is encoded again, warned."""
    from medsam_core import Predictor

    from .conftest import tiny_image

    image = tiny_image()
    pred = Predictor(lite_model, cache=EmbeddingCache(disk_dir=tmp_path))
    pred.set_image(image)
    key = pred.image_key
    path = tmp_path / f"{key.digest}.npz"
    with np.load(path) as d:
        meta = json.loads(str(d["meta"]))
    if forged == "embedding_shape":
        _rewrite(path, embedding=np.zeros((256, 32, 32), np.float32), fix_sum=True)
    elif forged == "meta_without_geometry":
        _rewrite(path, meta=json.dumps({"note": "no geometry"}), fix_sum=True)
    else:
        _rewrite(path, meta=json.dumps({**meta, "original_size": [640, 640]}), fix_sum=True)
    fresh = Predictor(lite_model, cache=EmbeddingCache(disk_dir=tmp_path))
    with pytest.warns(UserWarning, match="not used"):
        assert fresh.set_image(image) is False
    assert fresh.encoder_calls == 1
    masks, _ = fresh.predict(boxes=np.array([[16, 16, 47, 47]]))
    assert masks.shape == (1, 64, 64) and masks[0, 32, 32]
