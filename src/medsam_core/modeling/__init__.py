"""nn.Modules only: the TinyViT encoder and the SAM-family model assembled by ``_build``."""

from __future__ import annotations

import threading
from functools import partial

import torch

from .sam import SamModel
from .tiny_vit import TinyViT

__all__ = ["SamModel", "TinyViT", "build_model"]


_SAM_LOADING = threading.Lock()  # the private package is half-built while it loads: one loader at a time


def sam_modeling():
    """segment-anything's ``modeling`` subpackage (``_sam_modeling``), loaded once, thread-safely."""
    with _SAM_LOADING:  # a second thread (a model loaded in a worker while the GUI loads one) waits
        return _sam_modeling()


def _sam_modeling():
    """segment-anything's ``modeling`` subpackage, without running ``segment_anything/__init__``.

    That ``__init__`` imports the package's own predictor and, through it, torchvision, whose
    operator registration wakes torch._dynamo and triton: seconds of import time, and a crash
    inside napari under software OpenGL. The modeling modules import only torch and each other,
    so they are loaded as a private package of their own. If the user already imported
    segment_anything, that copy is used.
    """
    import importlib.util
    import sys

    if "segment_anything.modeling" in sys.modules:
        return sys.modules["segment_anything.modeling"]
    alias = "medsam_core._segment_anything_modeling"
    if alias in sys.modules:
        return sys.modules[alias]
    found = importlib.util.find_spec("segment_anything")
    if found is None or not found.submodule_search_locations:
        from ..errors import CheckpointError

        raise CheckpointError("the package 'segment-anything' is missing: pip install segment-anything")
    from pathlib import Path

    folder = Path(list(found.submodule_search_locations)[0]) / "modeling"
    spec = importlib.util.spec_from_file_location(
        alias, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[alias]
        raise
    return module


def _sam_blocks(input_size: int):
    sam = sam_modeling()
    MaskDecoder, PromptEncoder, TwoWayTransformer = sam.MaskDecoder, sam.PromptEncoder, sam.TwoWayTransformer

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
    return sam_modeling().ImageEncoderViT(
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
