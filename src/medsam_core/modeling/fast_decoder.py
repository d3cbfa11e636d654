"""A fast, exact re-arrangement of segment-anything's PromptEncoder + MaskDecoder forward pass.

Same function, same weights (read from the modules at every call; no parameters of its own).
Where the reference spends its time, and what this does instead:

* The reference copies the (256, 64, 64) image embedding and positional encoding once per
  prompt and projects all 4096 image tokens per prompt in every attention layer. Here the
  image-side work that does not depend on the prompt is done once per image and cached.
* Image tokens never attend to each other: after layer 0 each image token is the shared token
  plus an attention-weighted mix of the prompt tokens' values, then a LayerNorm. So every image
  token stays "shared row, rescaled, plus a low-rank term": ``r * (X + Z W)`` with Z the
  (4096, 128) pre-``out_proj`` attention output, itself ``A @ V`` with A the (4096, H x T)
  attention over T prompt tokens. LayerNorm statistics, projections and attention scores are
  then computed from A, V and shared projections of X (quadratic forms in A), never
  materialising a per-prompt (4096, 256) tensor.
* The output upscaling (ConvTranspose2d k2 s2 -> LayerNorm2d -> GELU -> ConvTranspose2d k2 s2 ->
  GELU) and the hypernetwork product are local per image token, so they are evaluated only in a
  window of tokens around each prompt. If a mask is positive on the window's edge the window is
  enlarged and recomputed (up to the whole grid). Outside the window the low-res logits are set
  to ``OUTSIDE_LOGIT``; a far-away positive blob not connected to the window is the only thing
  that can be lost. Only the mask tokens that are returned go through the final attention.

Shapes: N prompts, T prompt tokens (iou + 4 mask tokens + points + box corners), H heads of
size d, L = 64 x 64 image tokens, C = 256 channels. Tensors laid out as (N, H, T, L) keep the
image-token axis last.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._fast_terms import (
    ImageTerms,
    WeightTerms,
    block_diag_heads,
    image_terms,
    weight_terms,
)
from .sam import MASK_OUTPUTS

OUTSIDE_LOGIT = -40.0  # low-res logit given to pixels outside the evaluated window
_MARGIN_TOKENS = 3  # window margin around a box, in image tokens (4 input pixels at 256)
# Prompts per pass. Each (N, H*T, 4096) float32 intermediate takes 0.9 MB per prompt; with glibc's
# default malloc large buffers come fresh from mmap and are page-faulted in on every call. Smaller
# passes keep the working set and those costs down: 100 boxes, 1 thread, measured 3.0 s CPU at 64
# per pass, 2.7 s at 16, 2.45 s at 8 (1.8-2.2 s with MALLOC_MMAP/TRIM_THRESHOLD_ raised).
_CHUNK = 8
_PER_PIXEL = {"LayerNorm2d", "GELU", "ReLU", "Identity", "SiLU"}  # layers that mix no pixels


class FastDecoder:
    """Caches the per-weights and per-image terms; ``decode`` mirrors ``SamModel.decode``.

    Holds no parameters: the weights are read from ``prompt_encoder`` and ``mask_decoder`` at
    every call, and the caches are keyed on the parameters' identity and version counters, so
    fine-tuned (in-place updated) weights are always used.
    """

    def __init__(self, margin: int = _MARGIN_TOKENS) -> None:
        self.margin = margin  # window margin around the prompts, in image tokens
        self._params: list[Tensor] = []  # strong references: their identity + version is the key
        self._versions: list[int] = []
        self._weights: WeightTerms | None = None
        self._image: tuple[Tensor, ImageTerms, WeightTerms] | None = None
        self.windows_enlarged = 0  # how often the exact fallback enlarged a window (for tests)

    @staticmethod
    def supports(prompt_encoder: nn.Module, mask_decoder: nn.Module, embedding: Tensor,
                 mask_input: Tensor | None) -> bool:
        """True when the fast path computes this call exactly as the reference would.

        Box and/or point prompts on one embedding, no mask_input, and the decoder layout the
        derivation assumes (two-layer TwoWayTransformer with plain nn.Linear projections, output
        upscaling by non-overlapping transposed convolutions and per-pixel layers).
        """
        if mask_input is not None or embedding.dim() != 4 or embedding.shape[0] != 1:
            return False
        if any(p.dtype != torch.float32 for p in mask_decoder.parameters()):
            return False  # half-precision decoders keep the reference path (and its autocast)
        tf = getattr(mask_decoder, "transformer", None)
        layers = getattr(tf, "layers", ())
        if len(layers) != 2 or not hasattr(prompt_encoder, "no_mask_embed"):
            return False
        atts = [tf.final_attn_token_to_image]
        for blk in layers:
            atts += [blk.self_attn, blk.cross_attn_token_to_image, blk.cross_attn_image_to_token]
            if type(blk.norm4) is not nn.LayerNorm:
                return False
        for att in atts:
            for proj in (att.q_proj, att.k_proj, att.v_proj, att.out_proj):
                if type(proj) is not nn.Linear or proj.bias is None:
                    return False
        for layer in mask_decoder.output_upscaling:
            if isinstance(layer, nn.ConvTranspose2d):
                if layer.kernel_size != layer.stride or layer.padding != (0, 0) or layer.groups != 1:
                    return False
            elif type(layer).__name__ not in _PER_PIXEL:
                return False
        return True

    def _terms(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, embedding: Tensor):
        # Locals, not attributes, are returned: a concurrent call may swap the caches meanwhile.
        params = [*prompt_encoder.parameters(), *prompt_encoder.buffers(), *mask_decoder.parameters()]
        versions = [p._version for p in params]
        same = len(params) == len(self._params) and all(a is b for a, b in zip(params, self._params, strict=True))
        wt = self._weights
        if wt is None or not same or versions != self._versions:
            wt = weight_terms(prompt_encoder, mask_decoder)
            self._weights, self._params, self._versions, self._image = wt, params, versions, None
        emb = embedding.detach().float()
        cached = self._image
        if (
            cached is None
            or cached[2] is not wt
            or cached[0].shape != emb.shape
            or cached[0].device != emb.device
            or not torch.equal(cached[0], emb)
        ):
            cached = (emb.clone(), image_terms(wt, mask_decoder, emb), wt)
            self._image = cached
        return wt, cached[1]

    @torch.no_grad()
    def decode(
        self,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        embedding: Tensor,
        boxes: Tensor | None,
        points: tuple[Tensor, Tensor] | None,
        multimask_output: bool | str,
        input_size: int,
        windowed: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Low-res logits (N, M, 256, 256) and IoU (N, M) like the reference decoder.

        embedding: (1, C, 64, 64); boxes (N, 4) XYXY in model-input pixels; points ((N, P, 2) XY,
        (N, P) labels). With ``windowed`` and a box, logits outside the window around the box and
        points are ``OUTSIDE_LOGIT``; prompts without a box, or ``windowed=False``, get the whole
        low-res grid computed.
        """
        wt, it = self._terms(prompt_encoder, mask_decoder, embedding)
        n = len(boxes) if boxes is not None else len(points[0])
        if n == 0:
            m = len(MASK_OUTPUTS[multimask_output])
            low = (4 * it.grid[0], 4 * it.grid[1])
            return embedding.new_zeros((0, m) + low), embedding.new_zeros((0, m))
        parts = []
        for s in range(0, n, _CHUNK):
            b = boxes[s : s + _CHUNK] if boxes is not None else None
            p = (points[0][s : s + _CHUNK], points[1][s : s + _CHUNK]) if points is not None else None
            parts.append(self._decode_chunk(wt, it, prompt_encoder, mask_decoder, b, p, multimask_output,
                                            input_size, windowed))
        if len(parts) == 1:
            return parts[0]
        return torch.cat([x[0] for x in parts]), torch.cat([x[1] for x in parts])

    def _decode_chunk(self, wt, it, prompt_encoder, mask_decoder, boxes, points, multimask_output: bool | str,
                      input_size: int, windowed: bool) -> tuple[Tensor, Tensor]:
        sparse, _ = prompt_encoder(points=points, boxes=boxes[:, None, :] if boxes is not None else None,
                                   masks=None)
        n = sparse.shape[0]
        out_idx = [k + 1 for k in MASK_OUTPUTS[multimask_output]]  # output tokens; token 0 is the IoU token
        gh, gw = it.grid
        q_final, keys = _transformer(wt, it, sparse.float(), mask_decoder, out_idx)
        iou = mask_decoder.iou_prediction_head(q_final[:, 0])
        iou = iou[:, [i - 1 for i in out_idx]]
        hyper = torch.stack(
            [mask_decoder.output_hypernetworks_mlps[i - 1](q_final[:, 1 + j]) for j, i in enumerate(out_idx)], 1
        )  # (N, M, C/8)
        if windowed and boxes is not None:
            windows = _initial_windows(boxes, points, input_size, it.grid, self.margin)
        else:  # points alone often give far-apart pieces: evaluate the whole grid
            windows = torch.tensor([[0, 0, gh, gw]]).expand(n, -1)
        logits = _windowed_masks(wt, it, keys, hyper, mask_decoder, windows, self)
        return logits, iou


# -- transformer -------------------------------------------------------------------------------


def _split(x: Tensor, heads: int) -> Tensor:
    """(N, T, H*d) -> (N, H, T, d)."""
    n, t, c = x.shape
    return x.reshape(n, t, heads, c // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(N, H, T, d) -> (N, T, H*d)."""
    n, h, t, d = x.shape
    return x.transpose(1, 2).reshape(n, t, h * d)


def _dot(shared: Tensor, vecs: Tensor) -> Tensor:
    """shared (H, d, L) . vecs (N, H, T, d) -> (N, H*T, L): per-head dot with every image token.

    One matmul per head written straight into the prompt-major layout: a head-major batched
    product followed by a transposing copy costs several times more on CPU.
    """
    n, h, t, _ = vecs.shape
    if torch.is_grad_enabled():  # training: out= has no autograd; one batched product per call
        prod = torch.bmm(vecs.transpose(0, 1).reshape(h, n * t, -1), shared)  # (H, N*T, L)
        return prod.view(h, n, t, -1).transpose(0, 1).reshape(n, h * t, -1)
    vecs = vecs.contiguous()
    out = vecs.new_empty((n, h, t, shared.shape[-1]))
    for i in range(h):
        torch.matmul(vecs[:, i], shared[i], out=out[:, i])
    return out.view(n, h * t, -1)


def _baddbmm(s: Tensor, w: Tensor, a: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """beta * s + alpha * w @ a; in place when no gradient is being recorded (inference)."""
    if torch.is_grad_enabled():
        return torch.baddbmm(s, w, a, beta=beta, alpha=alpha)
    return s.baddbmm_(w, a, beta=beta, alpha=alpha)


def _mul(s: Tensor, x: Tensor) -> Tensor:
    return s * x if torch.is_grad_enabled() else s.mul_(x)


def _add(s: Tensor, x: Tensor) -> Tensor:
    return s + x if torch.is_grad_enabled() else s.add_(x)


def _agg(weights: Tensor, shared_t: Tensor, heads: int) -> Tensor:
    """sum_l weights[(h, t), l] * shared[h, :, l]: (N, H*T, L), (H, d, L) -> (N, H, T, d)."""
    n = weights.shape[0]
    w = weights.view(n, heads, -1, weights.shape[-1])
    if torch.is_grad_enabled():  # training: one batched product (and one in the backward pass)
        t = w.shape[2]
        prod = torch.bmm(w.transpose(0, 1).reshape(heads, n * t, -1), shared_t.transpose(1, 2))
        return prod.view(heads, n, t, -1).transpose(0, 1)
    return torch.stack([w[:, i] @ shared_t[i].T for i in range(heads)], 1)


def _lowrank_w(vblk: Tensor, mat: Tensor, qblk: Tensor) -> Tensor:
    """(N, K, J) weights w with (w @ A)[k, l] = (Z[l] mat) . q_k, Z = A^T vblk, A: (N, J, L)."""
    return qblk @ mat.T @ vblk.transpose(1, 2)


def _scores(e: Tensor, f: Tensor, q: Tensor, r1: Tensor, lowrank: list[tuple[Tensor, Tensor]]) -> Tensor:
    """r1 * (e . q + sum_i w_i @ A_i) + f . q -> (N, H*T, L); q already scaled."""
    s = _dot(e, q)
    for w, a in lowrank:
        s = _baddbmm(s, w, a)
    return _add(_mul(s, r1[:, None]), _dot(f, q))


def _transformer(wt: WeightTerms, it: ImageTerms, sparse: Tensor, md: nn.Module, out_idx: list[int]):
    """TwoWayTransformer + final attention -> (final queries of [iou, out masks], image-token state)."""
    tf = md.transformer
    blk0, blk1 = tf.layers
    n = sparse.shape[0]
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).float()
    tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse], 1)  # (N, T, C)
    qpe = tokens
    heads = wt.heads
    scale = wt.scale  # folded into the few prompt-side vectors, never applied to (N, J, L)

    # Layer 0: image side is the shared X (+ PE) for every prompt.
    q = blk0.norm1(blk0.self_attn(q=tokens, k=tokens, v=tokens))
    att = blk0.cross_attn_token_to_image
    qh = _split(att.q_proj(q + qpe), heads) * scale
    t = qh.shape[2]
    a = torch.softmax(_dot(it.k0, qh), -1)  # (N, J, L)
    q = blk0.norm2(q + att.out_proj(_merge(_agg(a, it.v0, heads))))
    q = blk0.norm3(q + blk0.mlp(q))
    att = blk0.cross_attn_image_to_token
    kt = _split(att.k_proj(q + qpe), heads) * scale
    vt0 = _split(att.v_proj(q), heads)
    a0t = torch.softmax(_dot(it.q0, kt).view(n, heads, t, -1), 2).view(n, heads * t, -1)  # over T
    v0 = block_diag_heads(vt0)  # (N, J, H*d)
    # keys1 = r1 * (Xc + Z0 Woc^T) * g1 + b1, Z0 = A0^T V0: |Y1c|^2 = |Xc|^2 + 2 <Xc, Z0 Woc^T> + quad.
    c = _baddbmm(_dot(it.e1, vt0), v0 @ wt.gw @ v0.transpose(1, 2), a0t, beta=2.0)
    r1 = torch.rsqrt(((a0t * c).sum(1) + it.n1) / wt.channels + wt.eps1)  # (N, L)

    # Layer 1: image tokens are r1 * (shared + low-rank) + constant.
    q = blk1.norm1(q + blk1.self_attn(q=q + qpe, k=q + qpe, v=q))
    att = blk1.cross_attn_token_to_image
    qh = _split(att.q_proj(q + qpe), heads) * scale
    s = _scores(it.e2, wt.f2, qh, r1, [(_lowrank_w(v0, wt.m2, block_diag_heads(qh)), a0t)])
    ar = _mul(torch.softmax(s, -1), r1[:, None])  # (N, J, L) attention weights * r1
    o = _agg(ar, it.e3, heads)
    o = o + _heads_diag(((ar @ a0t.transpose(1, 2)) @ v0) @ wt.m3, heads, t)
    o = o + wt.c3.reshape(heads, 1, -1)
    q = blk1.norm2(q + att.out_proj(_merge(o)))
    q = blk1.norm3(q + blk1.mlp(q))
    att = blk1.cross_attn_image_to_token
    kt = _split(att.k_proj(q + qpe), heads) * scale
    vt1 = _split(att.v_proj(q), heads)
    s = _scores(it.e4, wt.f4, kt, r1, [(_lowrank_w(v0, wt.m4, block_diag_heads(kt)), a0t)])
    a1t = torch.softmax(s.view(n, heads, t, -1), 2).view(n, heads * t, -1)
    v1 = block_diag_heads(vt1)
    # |Y2c|^2 for Y2c = r1 * (X2 + Z0 N0) + b2 + Z1 N1, grouped by A0 and A1:
    # r1^2 |X2|^2 + 2 r1 X2.b2 + |b2|^2 + r1 * sum A0 * t0 + sum A1 * t1.
    t0 = _mul(_baddbmm(_dot(it.e5, vt0), v0 @ wt.k00 @ v0.transpose(1, 2), a0t, beta=2.0), r1[:, None])
    t0 = _add(_baddbmm(t0, v0 @ wt.k01 @ v1.transpose(1, 2), a1t, alpha=2.0), 2 * (v0 @ wt.u0)[..., None])
    t1 = _mul(_dot(it.e6, vt1), 2 * r1[:, None])
    t1 = _add(_baddbmm(t1, v1 @ wt.k11 @ v1.transpose(1, 2), a1t), 2 * (v1 @ wt.u1)[..., None])
    sq = r1 * (r1 * it.x2sq + 2 * it.x2b2 + (a0t * t0).sum(1)) + (a1t * t1).sum(1) + wt.b2sq
    r2 = torch.rsqrt(sq / wt.channels + wt.eps2)
    keys = _Keys(r1, r2, a0t, v0, a1t, v1)

    # Final token -> image attention, only for the iou token and the returned mask tokens.
    sel = [0] + out_idx
    qf = q[:, sel]
    att = tf.final_attn_token_to_image
    qh = _split(att.q_proj(qf + qpe[:, sel]), heads) * scale
    tf_ = len(sel)
    qb = block_diag_heads(qh)
    s = _scores(it.e7, wt.f7, qh, r1, [(_lowrank_w(v0, wt.m7a, qb), a0t)])
    # r2 * (r1 * (e7 + Z0 m7a) + c7 + Z1 m7b) + f7 = (s - f7) * r2 + f7 with the Z1 and c7 terms.
    f7 = _dot(wt.f7, qh)
    s = _baddbmm(_add(_add(s, -f7), (qb @ wt.c7)[..., None]), _lowrank_w(v1, wt.m7b, qb), a1t)
    s = _add(_mul(s, r2[:, None]), f7)
    ar2 = _mul(torch.softmax(s, -1), r2[:, None])  # (N, K, L)
    ar12 = ar2 * r1[:, None]
    o = _agg(ar12, it.e8, heads)
    o = o + _heads_diag(((ar12 @ a0t.transpose(1, 2)) @ v0) @ wt.m8a, heads, tf_)
    o = o + _heads_diag(((ar2 @ a1t.transpose(1, 2)) @ v1) @ wt.m8b, heads, tf_)
    o = o + ar2.sum(-1).reshape(n, heads, tf_, 1) * wt.c8.reshape(heads, 1, -1) + wt.f8.reshape(heads, 1, -1)
    qf = tf.norm_final_attn(qf + att.out_proj(_merge(o)))
    return qf, keys


def _heads_diag(x: Tensor, heads: int, t: int) -> Tensor:
    """(N, H*T, H*d) with row (h, t) -> keep its own head's d columns: (N, H, T, d)."""
    n = x.shape[0]
    x = x.reshape(n, heads, t, heads, -1)
    idx = torch.arange(heads, device=x.device)
    return x[:, idx, :, idx].transpose(0, 1)


class _Keys:
    """Per-prompt state of the final image tokens, materialised only inside windows."""

    def __init__(self, r1, r2, a0t, v0, a1t, v1):
        self.r1, self.r2, self.a0t, self.v0, self.a1t, self.v1 = r1, r2, a0t, v0, a1t, v1

    def gather(self, wt: WeightTerms, it: ImageTerms, rows: Tensor, idx: Tensor) -> Tensor:
        """keys2 of prompts ``rows`` (n',) at image tokens ``idx`` (n', Lw) -> (n', Lw, C)."""
        rows = rows.to(idx.device)
        j = torch.arange(self.a0t.shape[1], device=idx.device)
        r1 = self.r1[rows[:, None], idx][..., None]
        r2 = self.r2[rows[:, None], idx][..., None]
        a0 = self.a0t[rows[:, None, None], j[None, :, None], idx[:, None, :]]  # (n', J, Lw)
        a1 = self.a1t[rows[:, None, None], j[None, :, None], idx[:, None, :]]
        z0 = a0.transpose(1, 2) @ self.v0[rows]  # (n', Lw, H*d)
        z1 = a1.transpose(1, 2) @ self.v1[rows]
        y = r1 * (it.x2[idx] + z0 @ wt.n0) + wt.b2 + z1 @ wt.n1
        return r2 * y * wt.g2 + wt.beta2


# -- windows -----------------------------------------------------------------------------------


def _initial_windows(boxes, points, input_size: int, grid: tuple[int, int], margin: int) -> Tensor:
    """(N, 4) token windows [y0, x0, y1, x1) around each prompt's box and points, with a margin."""
    gh, gw = grid
    per = input_size / gw
    coords = []
    if boxes is not None:
        coords.append(boxes.reshape(-1, 2, 2).float())
    if points is not None:
        coords.append(points[0].float())
    pts = torch.cat(coords, 1) / per  # (N, K, 2) XY in tokens
    lo = pts.amin(1).floor() - margin
    hi = pts.amax(1).floor() + 1 + margin
    x0, y0 = lo[:, 0].clamp(0, gw), lo[:, 1].clamp(0, gh)
    x1, y1 = hi[:, 0].clamp(0, gw), hi[:, 1].clamp(0, gh)
    return torch.stack([y0, x0, y1, x1], 1).long().cpu()


def _windowed_masks(wt, it, keys: _Keys, hyper: Tensor, md: nn.Module, windows: Tensor, owner) -> Tensor:
    """Upscale + hypernetwork product inside each window; enlarge windows whose mask touches an edge.

    Windows are batched in groups of one common size (rounded up to 8 tokens), so one large
    prompt does not make every window in the batch large.
    """
    n, m = hyper.shape[:2]
    gh, gw = it.grid
    out = hyper.new_full((n, m, 4 * gh, 4 * gw), OUTSIDE_LOGIT)
    todo = torch.arange(n)
    windows = windows.clone()
    while len(todo):
        win = windows[todo]
        hh = (-(-(win[:, 2] - win[:, 0]) // 8) * 8).clamp(max=gh)
        ww = (-(-(win[:, 3] - win[:, 1]) // 8) * 8).clamp(max=gw)
        again = []
        for size in torch.unique(torch.stack([hh, ww], 1), dim=0):
            sel = ((hh == size[0]) & (ww == size[1])).nonzero()[:, 0]
            again += _window_group(wt, it, keys, hyper, md, todo[sel], windows, int(size[0]), int(size[1]), out)
        if not again:
            break
        owner.windows_enlarged += len(again)
        todo = torch.tensor(again)
        w = windows[todo]
        grow_y = (w[:, 2] - w[:, 0] + 1) // 2 + 1
        grow_x = (w[:, 3] - w[:, 1] + 1) // 2 + 1
        windows[todo] = torch.stack([
            (w[:, 0] - grow_y).clamp(0, gh), (w[:, 1] - grow_x).clamp(0, gw),
            (w[:, 2] + grow_y).clamp(0, gh), (w[:, 3] + grow_x).clamp(0, gw)], 1)
    return out


def _window_group(wt, it, keys: _Keys, hyper: Tensor, md: nn.Module, rows: Tensor, windows: Tensor,
                  hh: int, ww: int, out: Tensor) -> list[int]:
    """Logits of prompts ``rows`` in (hh, ww)-token windows written into ``out``; returns the rows
    whose mask is positive on a window edge inside the grid (their window must grow)."""
    gh, gw = it.grid
    m = hyper.shape[1]
    win = windows[rows]
    # Keep each window's centre, shift the common-size window inside the grid.
    y0 = ((win[:, 0] + win[:, 2]) // 2 - hh // 2).clamp(0, gh - hh)
    x0 = ((win[:, 1] + win[:, 3]) // 2 - ww // 2).clamp(0, gw - ww)
    ys = y0[:, None] + torch.arange(hh)
    xs = x0[:, None] + torch.arange(ww)
    idx = (ys[:, :, None] * gw + xs[:, None, :]).reshape(len(rows), -1).to(hyper.device)
    k = keys.gather(wt, it, rows, idx)  # (n', hh*ww, C)
    up = md.output_upscaling(k.transpose(1, 2).reshape(len(rows), -1, hh, ww))  # (n', C/8, 4hh, 4ww)
    lg = (hyper[rows.to(hyper.device)] @ up.flatten(2)).reshape(len(rows), m, 4 * hh, 4 * ww)
    again = []
    for j, i in enumerate(rows.tolist()):
        ya, xa = int(y0[j]) * 4, int(x0[j]) * 4
        out[i, :, ya : ya + 4 * hh, xa : xa + 4 * ww] = lg[j]
        if _touches_edge(lg[j] > 0, int(y0[j]), int(x0[j]), hh, ww, gh, gw):
            again.append(i)
    return again


def _touches_edge(pos: Tensor, y0: int, x0: int, hh: int, ww: int, gh: int, gw: int) -> bool:
    """pos (M, 4hh, 4ww): positive on a window edge that is not the grid border?"""
    edges = []
    if y0 > 0:
        edges.append(pos[:, 0, :])
    if y0 + hh < gh:
        edges.append(pos[:, -1, :])
    if x0 > 0:
        edges.append(pos[:, :, 0])
    if x0 + ww < gw:
        edges.append(pos[:, :, -1])
    return any(bool(e.any()) for e in edges)

