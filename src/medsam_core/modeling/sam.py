"""The promptable segmentation model: image encoder + prompt encoder + mask decoder.

The prompt encoder, mask decoder and the ViT-B image encoder come from Meta's
``segment-anything`` package (the reference implementation that LiteMedSAM, MedSAM and SAM
checkpoints were saved from, so their keys load strictly); the TinyViT encoder is ours
(``tiny_vit.py``). Attribute names match the checkpoints' key prefixes.
"""

from __future__ import annotations

import torch
from torch import nn

#: Mask tokens each ``multimask_output`` returns (SAM's decoder computes all four whichever it
#: returns): the one-mask output, the three multimask outputs, or all four ("all", one-mask first).
MASK_OUTPUTS = {False: (0,), True: (1, 2, 3), "all": (0, 1, 2, 3)}


class SamModel(nn.Module):
    """image_encoder: (B, 3, S, S) -> (B, 256, 64, 64); decode: prompts -> low-res logits + IoU.

    Coordinates given to :meth:`decode` are in model-input pixels (the S x S grid), XY order.
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 input_size: int):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = input_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float -> (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def decode(
        self,
        embedding: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool | str = False,
        fast: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode N prompts against one image embedding.

        embedding: (1, 256, 64, 64); boxes: (N, 4) XYXY; points: ((N, P, 2) XY, (N, P) labels,
        1 foreground / 0 background); mask_input: (N, 1, 256, 256) logits of an earlier mask.
        Returns low-res logits (N, M, 256, 256) and predicted IoU (N, M), M = 3 if
        ``multimask_output`` else 1; ``multimask_output="all"`` gives M = 4 from the same pass:
        the one-mask output first, then the three multimask outputs (SAM's decoder computes all
        four mask tokens whichever it returns).

        fast: use ``fast_decoder.FastDecoder`` (same function, shared image-side work, logits only
        in a window around each prompt, ``OUTSIDE_LOGIT`` elsewhere) when it covers the call:
        box/point prompts without ``mask_input``, gradients off, the standard decoder layout.
        Otherwise, and with ``fast=False``, the reference segment-anything forward pass runs.
        """
        if multimask_output not in MASK_OUTPUTS:
            raise ValueError(f"multimask_output must be False, True or 'all', got {multimask_output!r}")
        if fast and (boxes is not None or points is not None) and not torch.is_grad_enabled():
            from .fast_decoder import FastDecoder

            if FastDecoder.supports(self.prompt_encoder, self.mask_decoder, embedding, mask_input):
                fd = self.__dict__.get("_fast_decoder")
                if fd is None:
                    fd = self.__dict__["_fast_decoder"] = FastDecoder()
                return fd.decode(self.prompt_encoder, self.mask_decoder, embedding, boxes, points,
                                 multimask_output, self.input_size)
        sparse, dense = self.prompt_encoder(
            points=points, boxes=boxes[:, None, :] if boxes is not None else None, masks=mask_input
        )
        logits, iou = self.mask_decoder.predict_masks(  # all four; MaskDecoder.forward slices the same way
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        keep = list(MASK_OUTPUTS[multimask_output])
        return logits[:, keep], iou[:, keep]
