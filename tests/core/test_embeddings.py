"""Embedding cache for volumes: one encoder run per slice for all objects, batched precompute,
disk store reuse across cache instances, signature mismatch refused, memory bound, float16.

The real Predictor and EmbeddingCache run with a fake model whose "embedding" is the packed
input image (see volume_fakes.fake_model), so encoder calls are counted exactly and cheaply."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medsam_core import EmbeddingCache, Intensity, Predictor, embed_volume, propagate, segment_volume
from medsam_core.errors import CacheMismatchError, CancelledError, MedSAMError

from .volume_fakes import bbox, ellipsoid, fake_model, render


@pytest.fixture(scope="module")
def volume():
    truth = ellipsoid(shape=(16, 256, 256), center=(8, 100, 128), radii=(5.5, 30, 40))
    truth |= ellipsoid(shape=(16, 256, 256), center=(9, 190, 128), radii=(4.5, 25, 25))
    return render(truth), truth


PLANES = 2  # the images the extent prior encodes per object (walk_extent.py)


def _objects(truth):
    from scipy import ndimage as ndi

    lab, n = ndi.label(truth)
    return [lab == i for i in range(1, n + 1)]


def test_segment_volume_through_real_predictor_is_exact(volume):
    vol, truth = volume
    pred = Predictor(fake_model())
    for obj in _objects(truth):
        # vote=None: the slice vote (test_propagate.py) trims the widest slice of the second object,
        # which is not the start slice, to its neighbours' size (Dice 0.996); here the masks are exact
        out = segment_volume(pred, vol, bbox(obj[8], 3), 8, min_area_ratio=0.0, vote=None)
        np.testing.assert_array_equal(out, obj)


def test_second_object_reuses_every_slice(volume):
    vol, truth = volume
    pred = Predictor(fake_model())
    a, b = _objects(truth)
    first = [r.z for r in propagate(pred, vol, bbox(a[8], 3), 8, min_area_ratio=0.0) if r.stage == "slice"]
    calls = pred.encoder_calls
    # the blank slices past the ends cost nothing; + the extent prior's 2 orthogonal planes
    assert calls == len(first) + PLANES
    second = [r.z for r in propagate(pred, vol, bbox(b[9], 3), 9, min_area_ratio=0.0)]
    assert set(second) <= set(first)
    assert pred.encoder_calls <= calls + PLANES  # no slice encoded again: at most its own planes


def test_embed_volume_batches_then_nothing_to_encode(volume):
    vol, truth = volume
    pred = Predictor(fake_model())
    steps = list(embed_volume(pred, vol, batch_size=4))
    n_objects_slices = int(truth.any(axis=(1, 2)).sum())  # other slices are blank: nothing to encode
    assert pred.encoder_calls == n_objects_slices
    assert steps[0] == (16 - n_objects_slices, 16) and steps[-1] == (16, 16)
    assert len(steps) == 1 + -(-n_objects_slices // 4)
    assert list(embed_volume(pred, vol)) == [(16, 16)]
    hits = pred.cache.hits
    objects = _objects(truth)
    for obj in objects:
        segment_volume(pred, vol, bbox(obj[8], 3), 8)
    # no slice encoded again; only the extent prior's planes (at most 2 per object) are new images
    assert n_objects_slices < pred.encoder_calls <= n_objects_slices + PLANES * len(objects)
    assert pred.cache.hits > hits
    assert pred.set_image(vol[8], intensity=Intensity(mode="range", value_range=(20.0, 200.0))) is True


def test_embed_volume_along_another_axis_shares_nothing_but_works(volume):
    vol, _ = volume
    pred = Predictor(fake_model())
    steps = list(embed_volume(pred, vol[:, :, 100:132], axis=2, batch_size=16))
    assert steps[-1] == (32, 32) and pred.encoder_calls <= 32


def test_disk_store_reopened_by_a_new_cache_costs_no_encoder_run(volume, tmp_path):
    vol, truth = volume
    obj = _objects(truth)[0]
    first = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=tmp_path / "store"))
    list(embed_volume(first, vol))
    want = segment_volume(first, vol, bbox(obj[8], 3), 8)
    again = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=tmp_path / "store"))  # "another process"
    assert list(embed_volume(again, vol)) == [(16, 16)]
    got = segment_volume(again, vol, bbox(obj[8], 3), 8)
    assert again.encoder_calls == 0 and again.cache.disk_hits > 0
    np.testing.assert_array_equal(got, want)


def test_store_of_another_model_or_preprocessing_is_refused(volume, tmp_path):
    vol, truth = volume
    store = tmp_path / "store"
    list(embed_volume(Predictor(fake_model("model-a"), cache=EmbeddingCache(disk_dir=store)), vol))
    files = sorted(p.name for p in store.iterdir())
    other = Predictor(fake_model("model-b"), cache=EmbeddingCache(disk_dir=store))
    with pytest.raises(CacheMismatchError, match="encoder_id"):
        list(embed_volume(other, vol))
    with pytest.raises(CacheMismatchError):
        segment_volume(other, vol, bbox(truth[8], 3), 8)
    same_model = Predictor(fake_model("model-a"), cache=EmbeddingCache(disk_dir=store))
    with pytest.raises(CacheMismatchError, match="preprocessing"):
        list(embed_volume(same_model, vol, intensity=Intensity.ct("bone")))  # another normalisation
    assert other.encoder_calls == 0 and same_model.encoder_calls == 0
    assert sorted(p.name for p in store.iterdir()) == files  # the store was not touched


def test_one_store_serves_images_and_volumes_with_their_own_windows(volume, tmp_path):
    """The store's signature held each image's intensity window: a folder batch with a disk-backed
    predictor failed every image after the first ("a different preprocessing"), and each volume
    needed its own folder. The window's numbers stay in every entry's key, not in the store's."""
    from medsam_core.batch import segment_folder

    vol, truth = volume
    store = tmp_path / "store"
    list(embed_volume(Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store)), vol))
    brighter = (vol.astype(np.float64) * 3 + 40).astype(vol.dtype)  # another volume: another window
    again = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store))
    list(embed_volume(again, brighter))
    n = sum(1 for z in vol if z.min() != z.max())  # the slices that are not blank
    assert again.encoder_calls == n  # its own embeddings, none served from the first volume's
    reopened = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store))
    list(embed_volume(reopened, vol))
    list(embed_volume(reopened, brighter))
    assert reopened.encoder_calls == 0  # a new process: both volumes come from the one store
    import tifffile

    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", vol[8])
    tifffile.imwrite(images / "b.tif", brighter[8][::-1])
    pred = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=tmp_path / "store2d"))
    box = {"a.tif": [bbox(truth[8], 3)], "b.tif": [bbox(truth[8][::-1], 3)]}
    report = segment_folder(images, tmp_path / "out", boxes=box, predictor=pred)
    assert [r.status for r in report.results] == ["done", "done"], [r.message for r in report.results]
    numpy_window = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store))  # a script's np.percentile
    lo, hi = np.percentile(brighter, [1, 99])
    list(embed_volume(numpy_window, brighter, intensity=Intensity(mode="range", value_range=(lo, hi))))


def test_a_store_is_not_shared_between_float32_and_an_opted_in_low_precision(volume, tmp_path, monkeypatch):
    """A bf16 session's embeddings differ from float32's (masks move): a store made by one is refused
    to the other, both ways, and a float32 key is the same as before the precision field existed."""
    from medsam_core import backends
    from medsam_core.embeddings import EmbeddingKey

    f32_key = EmbeddingKey("img", "enc", "pre")
    assert "precision" not in f32_key.signature  # float32 stores made before stay readable
    assert EmbeddingKey("img", "enc", "pre", "bf16").digest != f32_key.digest
    vol, _ = volume
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv("MEDSAM_ENCODER_PRECISION", raising=False)
    for first, second in (("f32", "bf16"), ("bf16", "f32")):
        store = tmp_path / f"made-{first}"
        monkeypatch.setenv("MEDSAM_ENCODER_PRECISION", first)
        maker = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store))
        assert maker.encoder_precision == first
        list(embed_volume(maker, vol[6:10]))
        monkeypatch.setenv("MEDSAM_ENCODER_PRECISION", second)
        reader = Predictor(fake_model(), cache=EmbeddingCache(disk_dir=store))
        assert reader.encoder_precision == second
        with pytest.raises(CacheMismatchError, match="precision"):
            list(embed_volume(reader, vol[6:10]))
        assert reader.encoder_calls == 0
    monkeypatch.setenv("MEDSAM_ENCODER_PRECISION", "bf16")
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)  # asked for, not native: f32 runs
    assert Predictor(fake_model()).encoder_precision == "f32"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert Predictor(fake_model(), encoder_backend="torch").encoder_precision == "f32"


def test_a_gpu_session_under_autocast_has_its_own_embedding_keys(monkeypatch):
    """On CUDA the eager encoder runs under autocast (bf16 or f16): its embeddings are not float32's,
    so its keys say so (the CUDA device and autocast are stood in for: no GPU here)."""
    import torch

    from medsam_core import backends

    image = np.zeros((32, 32), np.float32)
    cpu = Predictor(fake_model())
    assert cpu.encoder_precision == "f32"
    monkeypatch.setattr(Predictor, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(backends.TorchEncoder, "autocast_dtype", lambda self: torch.bfloat16)
    gpu = Predictor(fake_model())
    assert gpu.encoder_precision == "cuda-bfloat16"
    assert gpu.key_for(image).digest != cpu.key_for(image).digest
    monkeypatch.setattr(backends.TorchEncoder, "autocast_dtype", lambda self: None)  # autocast="off"
    assert Predictor(fake_model()).encoder_precision == "f32"
    assert Predictor(fake_model(), encoder_backend=backends.TorchEncoder(fake_model())).encoder_precision == "f32"


def test_memory_bound_is_checked_before_work(volume):
    vol, _ = volume
    small = Predictor(fake_model(), cache=EmbeddingCache(max_bytes=3 * 256 * 64 * 64 * 4))
    with pytest.raises(MedSAMError, match="max_bytes"):
        list(embed_volume(small, vol))
    assert small.encoder_calls == 0
    half = Predictor(fake_model(), cache=EmbeddingCache(max_bytes=12 * 256 * 64 * 64 * 2, dtype="float16"))
    list(embed_volume(half, vol))
    assert half.cache.nbytes <= half.cache.max_bytes and len(half.cache) == half.encoder_calls


def test_float16_store_gives_the_same_masks(volume):
    vol, truth = volume
    obj = _objects(truth)[0]
    f32 = segment_volume(Predictor(fake_model()), vol, bbox(obj[8], 3), 8)
    pred16 = Predictor(fake_model(), cache=EmbeddingCache(dtype="float16"))
    np.testing.assert_array_equal(segment_volume(pred16, vol, bbox(obj[8], 3), 8), f32)
    entry = next(iter(pred16.cache._mem.values()))
    assert entry.embedding.dtype == np.float16


def test_embed_volume_cancel(volume):
    vol, _ = volume
    pred = Predictor(fake_model())
    event = threading.Event()
    gen = embed_volume(pred, vol, batch_size=2, cancel=event)
    next(gen)
    next(gen)
    event.set()
    with pytest.raises(CancelledError):
        next(gen)
    assert pred.encoder_calls == 2
    with pytest.raises(MedSAMError):
        list(embed_volume(pred, vol, batch_size=0))
