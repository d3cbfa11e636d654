"""From the decoder's low-resolution logits to masks in image pixels (the inverse of
``preprocess.prepare_image``'s geometry): crop to the part that covers the image, bilinear
upsampling as the models' inference code does, threshold at 0. Re-exported by ``preprocess``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._blas import one_blas_thread

if TYPE_CHECKING:
    from .preprocess import PreparedImage
    from .registry import Preprocessing

__all__ = ["logits_to_mask", "lowres_to_masks"]


def _bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) source taps: (i0, i1, weight of i1) per output."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _interp_matrix(i0, i1, lam, in_size: int) -> np.ndarray:
    m = np.zeros((len(i0), in_size), np.float32)
    rows = np.arange(len(i0))
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def logits_to_mask(logits: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Bilinear-upsample one (h, w) logit map to ``out_size`` and threshold at 0 -> bool mask.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False) > 0`` but computed only in
    the window that can be positive: an output pixel is positive only if one of its source taps
    is, so everything outside the taps of the positive low-res pixels is background. For a small
    object in a large image this skips almost all of the work.
    """
    h, w = logits.shape
    H, W = out_size
    pos = logits > 0
    mask = np.zeros((H, W), dtype=bool)
    if not pos.any():
        return mask
    rows = np.flatnonzero(pos.any(axis=1))
    cols = np.flatnonzero(pos.any(axis=0))
    y0, y1, ly = _bilinear_taps(H, h)
    x0, x1, lx = _bilinear_taps(W, w)
    ysel = np.flatnonzero((y1 >= rows[0]) & (y0 <= rows[-1]))
    xsel = np.flatnonzero((x1 >= cols[0]) & (x0 <= cols[-1]))
    ya, yb, xa, xb = ysel[0], ysel[-1] + 1, xsel[0], xsel[-1] + 1
    # Source rows/cols these outputs read from, then a small dense interpolation.
    sr0, sr1 = y0[ya], y1[yb - 1] + 1
    sc0, sc1 = x0[xa], x1[xb - 1] + 1
    my = _interp_matrix(y0[ya:yb] - sr0, y1[ya:yb] - sr0, ly[ya:yb], sr1 - sr0)
    mx = _interp_matrix(x0[xa:xb] - sc0, x1[xa:xb] - sc0, lx[xa:xb], sc1 - sc0)
    with one_blas_thread():  # no BLAS threads left spinning beside the next encoder call
        block = my @ logits[sr0:sr1, sc0:sc1].astype(np.float32) @ mx.T
    mask[ya:yb, xa:xb] = block > 0
    return mask


def lowres_to_masks(low_res: np.ndarray, prepared: PreparedImage, pre: Preprocessing) -> np.ndarray:
    """(N, M, 256, 256) decoder logits -> (N, M, H, W) bool masks in image pixels.

    LiteMedSAM/MedSAM: crop the logits to the part that covers the image, then bilinear to (H, W)
    (their inference code). SAM: upscale to the S x S input first, crop, then resize (its code).
    """
    n, m, lh, lw = low_res.shape
    H, W = prepared.original_size
    nh, nw = prepared.resized_size
    out = np.zeros((n, m, H, W), dtype=bool)
    if pre.normalize == "imagenet":  # SAM's two-step postprocessing
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(low_res.reshape(n * m, 1, lh, lw))
        t = F.interpolate(t, size=(prepared.input_size,) * 2, mode="bilinear", align_corners=False)
        t = F.interpolate(t[..., :nh, :nw], size=(H, W), mode="bilinear", align_corners=False)
        return (t > 0).reshape(n, m, H, W).numpy()
    ch = round(nh * lh / prepared.input_size)
    cw = round(nw * lw / prepared.input_size)
    for i in range(n):
        for j in range(m):
            out[i, j] = logits_to_mask(low_res[i, j, :ch, :cw], (H, W))
    return out
