"""TinyViT image encoder, in the variant LiteMedSAM was distilled into.

Written for this project from the TinyViT paper (Wu et al., ECCV 2022) and the layout of the
``image_encoder.*`` keys in LiteMedSAM's checkpoint: MobileSAM's TinyViT-5M widths
(64, 128, 160, 320), depths (2, 2, 6, 2), heads (2, 4, 5, 10), windows (7, 7, 14, 7), a 1x1
patch embedding (LiteMedSAM feeds 256x256 images, so the stem does not downsample), stride-2
merges except into the last stage, and SAM's 256-channel neck. (B, 3, 256, 256) in,
(B, 256, 64, 64) out.

Parameter names mirror the checkpoint so that loading is strict and needs no key mapping.
Activations stay channels-last (B, H, W, C) in the attention stages and NCHW in the
convolutional parts; attention uses ``scaled_dot_product_attention`` with the learned relative
position bias as an additive mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (checkpoint names ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (SAM's neck normalisation)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand: float = 4.0):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2 or 1), 1x1 conv; NCHW in and out."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


def _relative_offset_index(window: int) -> torch.Tensor:
    """(N, N) index into the per-head bias table, N = window**2.

    The table has one entry per absolute offset (|dy|, |dx|), stored row-major as
    ``|dy| * window + |dx|`` (the order in which TinyViT first meets the offsets).
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Multi-head self-attention inside one window, with a learned relative-position bias.

    ``qkv`` is laid out head by head ([q, k, v] of head 0, then head 1, ...), as in the checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("bias_index", _relative_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) tokens of B windows -> (B, N, C)."""
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        x = self.norm(x)
        if type(self.qkv) is nn.Linear:
            # One projection per q / k / v (rows picked from ``qkv``'s head-by-head layout): each
            # gives (B, N, heads, d), and OpenVINO folds its (1, 2) transpose into the attention
            # subgraph, where one projection needed a 5D permute and a split per block. The same
            # numbers in PyTorch; the engine 3-8 % faster on a Zen 4 EPYC (docs/engines.md, "Layout").
            w, wb = self.qkv.weight.view(h, 3, d, c), self.qkv.bias.view(h, 3, d)
            q, k, v = (F.linear(x, w[:, i].reshape(h * d, c), wb[:, i].reshape(h * d)).view(b, n, h, d).transpose(1, 2)
                       for i in range(3))  # each (B, heads, N, head_dim)
        else:  # a wrapped projection (LoRA fine-tuning): called as a module
            q, k, v = self.qkv(x).view(b, n, h, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise 3x3 conv, MLP; (B, H, W, C) in and out."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (-h) % ws, (-w) % ws
        # Padded tokens take part as keys (zeros through the attention's LayerNorm), exactly as
        # the network was trained; masking them out would change the output.
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        nh, nw = hp // ws, wp // ws
        windows = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        x = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        return x[:, :h, :w] if (pad_h or pad_w) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._window_attention(x)
        b, h, w, c = x.shape
        # Back to channels-last through a (B, C, H*W) -> (B, H*W, C) transpose, not a 4D permute:
        # the same numbers (bit for bit in PyTorch), but OpenVINO turns a 4D permute of the
        # convolution's output into a relabelled layout and then converts it back before the
        # residual and the LayerNorm with a slow generic reorder (20 % of the engine's time on
        # a Zen 5 EPYC); the 3D transpose is one fast copy (docs/engines.md, "Layout").
        x = self.local_conv(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2).reshape(b, h, w, c)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, out_dim: int, stride: int, expand: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW in and out."""
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    def __init__(self, dim, depth, num_heads, window, out_dim=None, stride=2, mlp_ratio=4.0):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW in and out; channels-last inside (3D transposes, as in TinyViTBlock.forward)."""
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2).reshape(b, h, w, c)
        for block in self.blocks:
            x = block(x)
        x = x.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """LiteMedSAM's image encoder: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64)."""

    def __init__(
        self,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        windows=(7, 7, 14, 7),
        out_chans: int = 256,
        img_size: int = 256,
    ):
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        stages: list[nn.Module] = [ConvStage(embed_dims[0], depths[0], embed_dims[1], stride=2)]
        for i in range(1, 4):
            last = i == 3
            # The merge into the widest stage keeps the resolution (64x64 for a 256 input).
            stride = 1 if i == 2 else 2
            stages.append(
                AttentionStage(
                    embed_dims[i], depths[i], num_heads[i], windows[i],
                    out_dim=None if last else embed_dims[i + 1], stride=stride,
                )
            )
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
