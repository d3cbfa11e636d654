"""Errors raised by medsam_core.

Every error says what is wrong and what to do about it; callers (CLI, napari widget) show
``str(error)`` to the user as is, never a torch stack trace.
"""

from __future__ import annotations


class MedSAMError(Exception):
    """Base class of every error medsam_core raises on purpose."""


class CheckpointError(MedSAMError):
    """A checkpoint is missing, corrupted, of the wrong model, or does not match strictly."""


class PromptError(MedSAMError, ValueError):
    """A box, point or mask prompt is malformed, degenerate or outside the image."""


class ImageError(MedSAMError, ValueError):
    """An image has the wrong dimensionality, dtype, non-finite pixels, or cannot be read."""


class CacheError(MedSAMError):
    """The embedding store cannot be used (e.g. its folder is a file)."""


class CacheMismatchError(CacheError):
    """A stored embedding was made by another model, weights or preprocessing."""


class PredictorStateError(MedSAMError, RuntimeError):
    """A Predictor method was called out of order (e.g. predict before set_image)."""


class ModelNotFoundError(MedSAMError, KeyError):
    """A model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingError(MedSAMError):
    """Fine-tuning inputs are unusable (no objects, mismatched shapes, NaNs)."""


class OutputError(ImageError):
    """An output path cannot be written safely: it is an input, a folder, read-only or has no folder."""


class CancelledError(MedSAMError):
    """A long operation was cancelled by the user; nothing was changed."""
