"""medsam_core: MedSAM-family models, preprocessing, predictor, cache, metrics and training.

Qt- and napari-free. torch is imported on first use, not at package import.

    >>> import medsam_core
    >>> model = medsam_core.load_model("lite_medsam")          # a LoadedModel; bundled weights, no download
    >>> predictor = medsam_core.Predictor(model)
    >>> predictor.set_image(image)                             # (H, W) or (H, W, C)
    >>> masks, scores = predictor.predict(boxes=[[x0, y0, x1, y1]])
"""

from __future__ import annotations

from ._paths import check_output, split_suffix
from .batch import segment_folder
from .checkpoint import load_model, save_checkpoint, select_device
from .embeddings import EmbeddingCache
from .errors import (
    CacheError,
    CacheMismatchError,
    CheckpointError,
    ImageError,
    MedSAMError,
    OutputError,
    PredictorStateError,
    PromptError,
    TrainingError,
)
from .io import read_image, write_labels
from .loaded_model import LoadedModel
from .metrics import dice, iou, nsd
from .predictor import Prediction, Predictor
from .preprocess import CT_WINDOWS, Intensity
from .prompts import box_from_mask, box_from_recist
from .propagate import SliceResult, WalkResult, propagate, segment_volume, walk_volume
from .registry import MODELS, get_spec
from .roi import BoxMask, global_intensity, predict_boxes
from .volume import embed_volume, volume_intensity

__all__ = [
    "dice",
    "iou",
    "nsd",
    "check_output",
    "split_suffix",
    "read_image",
    "segment_folder",
    "write_labels",
    "CT_WINDOWS",
    "MODELS",
    "CacheError",
    "CacheMismatchError",
    "CheckpointError",
    "EmbeddingCache",
    "ImageError",
    "Intensity",
    "LoadedModel",
    "MedSAMError",
    "OutputError",
    "Prediction",
    "Predictor",
    "PredictorStateError",
    "PromptError",
    "TrainingError",
    "get_spec",
    "load_model",
    "save_checkpoint",
    "select_device",
    "SliceResult",
    "WalkResult",
    "BoxMask",
    "box_from_mask",
    "box_from_recist",
    "embed_volume",
    "global_intensity",
    "predict_boxes",
    "propagate",
    "segment_volume",
    "walk_volume",
    "volume_intensity",
]
