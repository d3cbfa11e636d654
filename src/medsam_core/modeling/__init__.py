"""nn.Modules only: the TinyViT encoder and the SAM-family model assembled by ``_build``."""

from __future__ import annotations

from functools import partial

import torch

from .sam import SamModel
from .tiny_vit import TinyViT

__all__ = ["SamModel", "TinyViT", "build_model"]


def _sam_blocks(input_size: int):
    # segment-anything is imported here, not at module import: it pulls in torchvision.
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(input_size, input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def _vit_b_encoder():
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        depth=12, embed_dim=768, img_size=1024, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11), window_size=14,
        out_chans=256,
    )


def build_model(arch: str) -> SamModel:
    """An untrained model of one architecture: ``"tinyvit_256"`` or ``"vit_b_1024"``."""
    if arch == "tinyvit_256":
        encoder, size = TinyViT(img_size=256), 256
    elif arch == "vit_b_1024":
        encoder, size = _vit_b_encoder(), 1024
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    prompt_encoder, mask_decoder = _sam_blocks(size)
    return SamModel(encoder, prompt_encoder, mask_decoder, input_size=size)
