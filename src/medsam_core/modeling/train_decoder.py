"""A differentiable fast decoder for fine-tuning the mask decoder on cached embeddings.

``decode_for_training`` runs ``fast_decoder``'s re-arranged forward pass with autograd on: the
weight products and the image-side projections are recomputed from the current (trainable)
weights at every call, once per image rather than once per prompt, and the output upscaling is
evaluated only in a window around each prompt box and its target object. Inside the windows the
logits equal the reference decoder's, and so do the gradients of any loss of those logits; outside
they are the constant ``OUTSIDE_LOGIT`` (no gradient), which only drops the cross-entropy of far
background pixels the reference scores at about -10 anyway.

Why: the reference copies the image embedding for every prompt and runs the two-way transformer
and the 256 x 256 upscaling on each copy; forward + backward of 8 boxes took 1.9 s on 2 CPU cores,
this takes a fraction of that (see docs/benchmarks.md, "Fine-tuning").
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ._fast_terms import image_terms, weight_terms
from .fast_decoder import _MARGIN_TOKENS, FastDecoder, _initial_windows, _transformer, _windowed_masks


def supports_training(prompt_encoder: nn.Module, mask_decoder: nn.Module, embedding: Tensor) -> bool:
    """True when ``decode_for_training`` computes what the reference decoder computes."""
    return FastDecoder.supports(prompt_encoder, mask_decoder, embedding, None)


def decode_for_training(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    embedding: Tensor,
    boxes: Tensor,
    input_size: int,
    window_boxes: Tensor | None = None,
    margin: int = _MARGIN_TOKENS,
) -> tuple[Tensor, Tensor]:
    """Single-mask decode of N boxes on one embedding, with gradients -> (logits (N, 1, 256, 256), iou (N, 1)).

    embedding: (1, C, 64, 64); boxes: (N, 4) XYXY in model-input pixels (the prompts).
    window_boxes: (N, 4) model-input pixels the window must also cover (the target objects'
    bounding boxes, so no target pixel falls outside the evaluated window); None: the prompts.
    """
    wt = weight_terms(prompt_encoder, mask_decoder)
    it = image_terms(wt, mask_decoder, embedding.float())
    sparse, _ = prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
    q_final, keys = _transformer(wt, it, sparse.float(), mask_decoder, [1])
    iou = mask_decoder.iou_prediction_head(q_final[:, 0])[:, :1]
    hyper = mask_decoder.output_hypernetworks_mlps[0](q_final[:, 1])[:, None]  # (N, 1, C/8)
    corners = [boxes.detach().reshape(-1, 2, 2)]
    if window_boxes is not None:
        corners.append(window_boxes.reshape(-1, 2, 2).to(boxes))
    windows = _initial_windows(None, (torch.cat(corners, 1), None), input_size, it.grid, margin)
    logits = _windowed_masks(wt, it, keys, hyper, mask_decoder, windows, SimpleNamespace(windows_enlarged=0))
    return logits, iou
