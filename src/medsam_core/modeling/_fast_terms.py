"""Prompt-independent terms of the fast decoder: per weights and per image embedding.

Notation as in ``fast_decoder.py``. ``X`` is the (L, C) image embedding plus the no-mask
embedding, ``P`` the dense positional encoding. Layer 0's image->token attention adds
``Z0 Wo^T + bo`` (Z0: (L, H*d) attention output before ``out_proj``); its LayerNorm (gain g1,
bias b1) gives keys1 = r1 * (Xbc + Z0 Woc^T) * g1 + b1 with Xbc the channel-centred X + bo and
Woc the channel-centred out_proj weight. Layer 1 adds Z1 Wo1^T + bo1; its LayerNorm (g2, b2')
sees the channel-centred Y2c = r1 * (X2 + Z0 N0) + b2 + Z1 N1. Every matrix below is a product
of module weights (recomputed whenever a weight changes) or a projection of X (once per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class WeightTerms:
    heads: int
    scale: float
    channels: int
    grid: tuple[int, int]
    eps1: float
    eps2: float
    pe: Tensor  # (L, C) dense positional encoding
    no_mask: Tensor  # (C,)
    bo: Tensor  # (C,) layer-0 image->token out_proj bias
    woc: Tensor  # (C, H*d) centred out_proj weight
    g1: Tensor
    gw: Tensor  # (H*d, H*d) Woc^T Woc
    m2: Tensor  # Z0 -> layer-1 token->image key features
    m3: Tensor  # Z0 -> layer-1 token->image values
    m4: Tensor  # Z0 -> layer-1 image->token query features
    f2: Tensor  # (H, d, L) (b1 + P) Wk^T + bk
    f4: Tensor  # (H, d, L) (b1 + P) Wq^T + bq
    c3: Tensor  # (H*d,) b1 Wv^T + bv
    n0: Tensor  # (H*d, C) centred Woc^T diag(g1)
    n1: Tensor  # (H*d, C) centred Wo1^T
    b2: Tensor  # (C,) centred b1 + bo1
    b2sq: Tensor
    k00: Tensor
    k01: Tensor
    k11: Tensor
    u0: Tensor  # (H*d,) N0 b2
    u1: Tensor
    g2: Tensor
    beta2: Tensor
    m7a: Tensor  # final attention keys from Z0, Z1, b2
    m7b: Tensor
    c7: Tensor
    f7: Tensor  # (H, d, L)
    m8a: Tensor  # final attention values from Z0, Z1, b2
    m8b: Tensor
    c8: Tensor
    f8: Tensor  # (H*d,)
    w_k1: Tensor  # (C, H*d) stacked on columns: layer-1 t2i k, v and i2t q projections
    w_f: Tensor  # final attention k, v projections (C, 2*H*d)


@dataclass
class ImageTerms:
    grid: tuple[int, int]
    k0: Tensor  # (H, d, L) layer-0 token->image keys of X + P
    v0: Tensor  # (H, d, L) layer-0 token->image values of X
    q0: Tensor  # (H, d, L) layer-0 image->token queries of X + P
    e1: Tensor  # (H, d, L) Xbc Woc
    n1: Tensor  # (L,) |Xbc|^2
    e2: Tensor
    e3: Tensor
    e4: Tensor
    x2: Tensor  # (L, C)
    x2sq: Tensor
    x2b2: Tensor
    e5: Tensor
    e6: Tensor
    e7: Tensor
    e8: Tensor


def block_diag_heads(x: Tensor) -> Tensor:
    """(N, H, T, d) per-head vectors -> (N, H*T, H*d), row (h, t) nonzero only in head h's columns."""
    n, h, t, d = x.shape
    eye = torch.eye(h, dtype=x.dtype, device=x.device)
    return torch.einsum("nhtd,hg->nhtgd", x, eye).reshape(n, h * t, h * d)


def _centre_last(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def _heads_t(x: Tensor, heads: int) -> Tensor:
    """(L, H*d) -> (H, d, L) contiguous."""
    length, c = x.shape
    return x.T.reshape(heads, c // heads, length).contiguous()


def weight_terms(prompt_encoder: nn.Module, mask_decoder: nn.Module) -> WeightTerms:
    """Products of the decoder weights that do not depend on the image or the prompts."""
    tf = mask_decoder.transformer
    blk0, blk1 = tf.layers
    att0 = blk0.cross_attn_image_to_token
    heads = att0.num_heads
    d = att0.internal_dim // heads
    pe = prompt_encoder.get_dense_pe()[0].float()  # (C, h, w)
    c, gh, gw_ = pe.shape
    pe = pe.flatten(1).T.contiguous()

    def lin(m: nn.Linear):
        return m.weight.float(), m.bias.float()

    wo, bo = lin(att0.out_proj)
    woc = wo - wo.mean(0, keepdim=True)
    g1, beta1 = blk0.norm4.weight.float(), blk0.norm4.bias.float()
    t2i, i2t = blk1.cross_attn_token_to_image, blk1.cross_attn_image_to_token
    wk, bk = lin(t2i.k_proj)
    wv, bv = lin(t2i.v_proj)
    wq, bq = lin(i2t.q_proj)
    wog = (woc * g1[:, None]).T  # (H*d, C)
    wo1, bo1 = lin(i2t.out_proj)
    n0 = _centre_last(wog)
    n1 = _centre_last(wo1.T)
    b2 = _centre_last(beta1 + bo1)
    g2, beta2 = blk1.norm4.weight.float(), blk1.norm4.bias.float()
    fin = tf.final_attn_token_to_image
    fk, fbk = lin(fin.k_proj)
    fv, fbv = lin(fin.v_proj)
    return WeightTerms(
        heads=heads, scale=1.0 / math.sqrt(d), channels=c, grid=(gh, gw_),
        eps1=blk0.norm4.eps, eps2=blk1.norm4.eps,
        pe=pe, no_mask=prompt_encoder.no_mask_embed.weight[0].float(), bo=bo, woc=woc, g1=g1,
        gw=woc.T @ woc, m2=wog @ wk.T, m3=wog @ wv.T, m4=wog @ wq.T,
        f2=_heads_t((beta1 + pe) @ wk.T + bk, heads), f4=_heads_t((beta1 + pe) @ wq.T + bq, heads),
        c3=beta1 @ wv.T + bv,
        n0=n0, n1=n1, b2=b2, b2sq=b2 @ b2, k00=n0 @ n0.T, k01=n0 @ n1.T, k11=n1 @ n1.T,
        u0=n0 @ b2, u1=n1 @ b2, g2=g2, beta2=beta2,
        m7a=(n0 * g2) @ fk.T, m7b=(n1 * g2) @ fk.T, c7=(b2 * g2) @ fk.T,
        f7=_heads_t((beta2 + pe) @ fk.T + fbk, heads),
        m8a=(n0 * g2) @ fv.T, m8b=(n1 * g2) @ fv.T, c8=(b2 * g2) @ fv.T, f8=beta2 @ fv.T + fbv,
        w_k1=torch.cat([wk.T, wv.T, wq.T], 1), w_f=torch.cat([fk.T, fv.T], 1),
    )


def image_terms(wt: WeightTerms, mask_decoder: nn.Module, embedding: Tensor) -> ImageTerms:
    """Projections of one (1, C, h, w) image embedding shared by every prompt on that image."""
    blk0 = mask_decoder.transformer.layers[0]
    h = wt.heads
    x = embedding[0].flatten(1).T + wt.no_mask  # (L, C)
    xp = x + wt.pe
    t2i, i2t = blk0.cross_attn_token_to_image, blk0.cross_attn_image_to_token
    k0 = t2i.k_proj(xp)
    v0 = t2i.v_proj(x)
    q0 = i2t.q_proj(xp)
    xbc = _centre_last(x + wt.bo)
    xg = xbc * wt.g1
    e234 = (xg @ wt.w_k1).split(wt.woc.shape[1], 1)
    x2 = _centre_last(xg)
    e56 = x2 @ torch.cat([wt.n0.T, wt.n1.T], 1)
    e78 = (x2 * wt.g2) @ wt.w_f
    hd = wt.woc.shape[1]
    return ImageTerms(
        grid=wt.grid,
        k0=_heads_t(k0, h), v0=_heads_t(v0, h), q0=_heads_t(q0, h),
        e1=_heads_t(xbc @ wt.woc, h), n1=(xbc * xbc).sum(-1),
        e2=_heads_t(e234[0], h), e3=_heads_t(e234[1], h), e4=_heads_t(e234[2], h),
        x2=x2, x2sq=(x2 * x2).sum(-1), x2b2=x2 @ wt.b2,
        e5=_heads_t(e56[:, :hd], h), e6=_heads_t(e56[:, hd:], h),
        e7=_heads_t(e78[:, :hd], h), e8=_heads_t(e78[:, hd:], h),
    )
