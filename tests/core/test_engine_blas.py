"""The small NumPy products around the encoder run on one BLAS thread, with the same bytes.

NumPy's OpenBLAS threads busy-wait after a product; in ``set_image`` that took CPU from the
encoder that runs right after ``prepare_image`` (docs/engines.md, "Where set_image's time goes").
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest

from medsam_core import _blas, preprocess
from medsam_core.preprocess import area_weights, prepare_image, resize_area
from medsam_core.registry import get_spec

needs_local_blas = pytest.mark.skipif(
    _blas._local_setter() is None, reason="NumPy's BLAS has no per-thread thread count"
)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_resize_gives_the_same_bytes_as_the_default_threaded_product():
    rng = np.random.default_rng(0)
    img = (rng.random((512, 384)) * 4000).astype(np.float32)
    wy = area_weights(512, 256, True).astype(np.float32)
    wx = area_weights(384, 192, True).astype(np.float32)
    threaded = wy @ img @ wx.T  # NumPy's default: all cores
    np.testing.assert_array_equal(resize_area(img, 256, 192), threaded)
    rgb = np.stack([img, img * 0.5, img * 0.25], axis=-1)
    np.testing.assert_array_equal(
        resize_area(rgb, 256, 192)[..., 1], np.einsum("ih,hw,jw->ij", wy, rgb[..., 1], wx, optimize=True)
    )


def test_cached_area_weights_cannot_be_changed_by_a_caller():
    w = preprocess._area_weights_f32(300, 256, True)
    assert w.dtype == np.float32 and not w.flags.writeable
    assert preprocess._area_weights_f32(300, 256, True) is w  # one per size, not recomputed
    np.testing.assert_array_equal(w, area_weights(300, 256, True).astype(np.float32))


@needs_local_blas
def test_one_blas_thread_sets_this_thread_only_and_restores():
    setter = _blas._local_setter()
    before = setter(0)
    setter(before)
    with _blas.one_blas_thread():
        inside = setter(1)
        setter(inside)
    after = setter(before)
    assert inside == 1 and after == before


@needs_local_blas
def test_no_blas_thread_spins_after_prepare_image():
    """After prepare_image no CPU is burnt while the caller sleeps (the encoder would run then);
    a plain threaded product of the same size does burn it (the check can see the spin)."""
    pre = get_spec("lite_medsam").preprocessing
    img = (np.random.default_rng(1).random((512, 512)) * 4000).astype(np.uint16)
    prepare_image(img, pre)

    def burnt(fn) -> float:
        best = np.inf
        for _ in range(3):
            time.sleep(0.3)  # whatever ran before settles
            fn()
            c0 = _cpu_s()
            time.sleep(0.15)
            best = min(best, _cpu_s() - c0)
        return best

    a = np.ones((512, 512), np.float32)
    spin = burnt(lambda: a @ a)
    if spin < 0.003:
        pytest.skip("NumPy's BLAS does not spin here (one core, or OPENBLAS_NUM_THREADS=1)")
    assert burnt(lambda: prepare_image(img, pre)) < 0.002
