"""The encoder's channels-last round trips (3D transposes) and its three q / k / v projections, both
chosen for the OpenVINO engine's speed, give exactly what the plain formulation gives: same
numbers, bit for bit, in PyTorch (also when LoRA wraps the projection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsam_core.modeling.tiny_vit import Attention, AttentionStage, TinyViTBlock


def _permute_block(block: TinyViTBlock, x: torch.Tensor) -> torch.Tensor:
    x = x + block._window_attention(x)
    x = block.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return x + block.mlp(x)


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, buf in module.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    return module.eval()


def test_block_equals_the_4d_permute_formulation():
    block = _randomised(TinyViTBlock(dim=32, num_heads=2, window=7))
    x = torch.randn(2, 10, 12, 32, generator=torch.Generator().manual_seed(1))  # padded windows too
    with torch.inference_mode():
        assert torch.equal(block(x), _permute_block(block, x))


def test_stage_equals_the_4d_permute_formulation():
    stage = _randomised(AttentionStage(32, 2, 2, 7, out_dim=48, stride=2))
    x = torch.randn(1, 32, 14, 9, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        y = x.permute(0, 2, 3, 1)
        for block in stage.blocks:
            y = _permute_block(block, y)
        expected = stage.downsample(y.permute(0, 3, 1, 2))
        got = stage(x)
    assert got.shape == (1, 48, 7, 5)
    assert torch.equal(got, expected)


def _one_projection(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The checkpoint's layout read directly: one qkv projection, [q, k, v] head by head."""
    b, n, c = x.shape
    qkv = attn.qkv(attn.norm(x)).view(b, n, attn.num_heads, 3, attn.head_dim)
    q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn.attention_biases[:, attn.bias_index])
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


class _Wrapped(torch.nn.Module):
    """Stands for a LoRA-wrapped projection: a module that is not an nn.Linear."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.base = linear

    def forward(self, x):
        return self.base(x)


def test_three_projections_equal_the_checkpoint_layout_and_the_wrapped_path():
    attn = _randomised(Attention(dim=40, num_heads=4, window=7))
    x = torch.randn(3, 49, 40, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = _one_projection(attn, x)
        assert torch.equal(attn(x), expected)
        attn.qkv = _Wrapped(attn.qkv)
        assert torch.equal(attn(x), expected)
