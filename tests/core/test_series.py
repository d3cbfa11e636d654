"""ImageSeries: listing, output paths, resume bookkeeping, atomic save, background prefetch."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
import tifffile

from medsam_core.embeddings import EmbeddingCache
from medsam_core.errors import ImageError
from medsam_core.io import read_image
from medsam_core.series import ImageSeries, list_images, output_path, split_name


def StubPredictor():
    """A real Predictor over the fake model (tests/core/volume_fakes.py) whose encoder blocks
    until ``release`` is set and signals ``entered``: prefetch goes through ``Predictor.embed``."""
    from medsam_core.backends import EncoderBackend
    from medsam_core.predictor import Predictor

    from .volume_fakes import fake_model

    release, entered = threading.Event(), threading.Event()
    release.set()

    class Blocking(EncoderBackend):
        name = "blocking"

        def encode(self, batch):
            entered.set()
            release.wait(10)
            return np.zeros((len(batch), 256, 64, 64), np.float32)

    pred = Predictor(fake_model("stub"), cache=EmbeddingCache(), encoder_backend=Blocking())
    pred.release, pred.entered = release, entered
    return pred


def make_folder(tmp_path, n=3):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        tifffile.imwrite(folder / f"img{k}.tif", rng.integers(0, 500, (40, 50)).astype(np.uint16))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.tif").write_bytes(b"x")
    return folder


def test_listing_and_output_names(tmp_path):
    folder = make_folder(tmp_path)
    assert [p.name for p in list_images(folder)] == ["img0.tif", "img1.tif", "img2.tif"]
    assert [p.name for p in list_images(folder, ["*1.tif"])] == ["img1.tif"]
    assert split_name("a.b.nii.gz") == ("a.b", ".nii.gz")
    assert output_path("x/scan.nii.gz", tmp_path).name == "scan.nii.gz"
    assert output_path("x/cell.png", tmp_path).name == "cell.tif"
    with pytest.raises(ImageError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_resume_navigation_and_atomic_save(tmp_path):
    folder = make_folder(tmp_path)
    out = tmp_path / "labels"
    s = ImageSeries(folder, out)
    assert out.is_dir() and len(s) == 3 and s.status() == [False] * 3 and s.first_not_done() == 0
    image, meta = s.load()
    lab = np.zeros(image.shape, np.uint16)
    lab[5:10, 5:10] = 1
    path = s.save(lab, meta)
    assert path == out / "img0.tif" and s.is_done(0) and s.first_not_done() == 1
    np.testing.assert_array_equal(read_image(path)[0], lab)
    assert sorted(p.name for p in out.iterdir()) == ["img0.tif"]  # no temporary files left
    s.save(lab, meta, i=2)
    assert s.next(skip_done=True) == 1 and s.next(skip_done=True) is None and s.index == 1
    assert s.next() == 2 and s.next() is None and s.previous() == 1
    s.go(0)
    assert s.previous() is None
    # a new series over the same folders resumes at the first image without labels
    assert ImageSeries(folder, out).first_not_done() == 1
    with pytest.raises(ImageError, match="do not match"):
        s.save(np.zeros((3, 3), np.uint8), meta, i=1)
    assert not s.is_done(1)


def test_output_folder_must_differ_from_the_images(tmp_path):
    folder = make_folder(tmp_path)
    with pytest.raises(ImageError, match="also an input folder"):
        ImageSeries(folder, folder)
    (folder / "img0.png").write_bytes(b"")
    with pytest.raises(ImageError, match="both write"):
        ImageSeries(folder, tmp_path / "o")


def test_nifti_outputs_keep_the_affine(tmp_path):
    folder = tmp_path / "nii"
    folder.mkdir()
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, -4, 3]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 30, 4)).astype(np.float32), affine),
             folder / "ct.nii.gz")
    s = ImageSeries(folder, tmp_path / "o")
    image, meta = s.load()
    path = s.save(np.ones(image.shape, np.uint8), meta)
    assert path.name == "ct.nii.gz"
    np.testing.assert_allclose(nib.load(path).affine, affine)


def test_prefetch_fills_the_cache_in_the_background_and_can_be_cancelled(tmp_path):
    folder = make_folder(tmp_path)
    s = ImageSeries(folder, tmp_path / "o")
    pred = StubPredictor()
    future = s.prefetch(pred)
    image, meta = future.result(timeout=30)
    assert pred.encoder_calls == 1 and pred.key_for(image, pred.intensity, "auto") in pred.cache
    loaded, _ = s.load(1)
    assert loaded is image  # the prefetched read is reused
    assert s.prefetch(pred, i=5) is None
    # a prefetch replaced while queued never runs; one already encoding finishes (its result is cached)
    pred = StubPredictor()
    pred.release.clear()
    first = s.prefetch(pred, i=0)
    assert pred.entered.wait(30)  # first is inside encode
    second = s.prefetch(pred, i=2)  # cancels first (too late to stop it) and queues behind it
    s.cancel_prefetch()
    assert second.cancelled()
    pred.release.set()
    first.result(timeout=30)
    s.close()
    assert pred.encoder_calls == 1


@pytest.mark.slow
def test_prefetch_makes_set_image_a_cache_hit(tmp_path, lite_model):
    from medsam_core import Predictor

    folder = make_folder(tmp_path, n=2)
    s = ImageSeries(folder, tmp_path / "o")
    pred = Predictor(lite_model)
    image0, _ = s.load()
    pred.set_image(image0)
    s.prefetch(pred).result(timeout=120)
    assert pred.encoder_calls == 2
    np.testing.assert_array_equal(pred.original_size, image0.shape)  # current image unchanged
    image1, _ = s.load(1)
    assert pred.set_image(image1) is True and pred.encoder_calls == 2
    s.close()
