"""The encoder's channels-last round trips (3D transposes, chosen for the OpenVINO engine's speed)
give exactly what the plain 4D permutes give: same numbers, bit for bit, in PyTorch."""

from __future__ import annotations

import torch

from medsam_core.modeling.tiny_vit import AttentionStage, TinyViTBlock


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
