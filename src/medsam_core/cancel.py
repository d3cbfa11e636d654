"""The one cancel check: a job's ``cancel`` is None, a ``threading.Event`` or a callable returning True."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import CancelledError

__all__ = ["Cancel", "check_cancel", "is_cancelled"]

Cancel = Callable[[], bool] | threading.Event | None


def is_cancelled(cancel: Cancel) -> bool:
    """True when ``cancel`` says stop (an Event that is set, or a callable returning True)."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def check_cancel(cancel: Cancel, message: str = "cancelled by the user; nothing was changed") -> None:
    """Raise CancelledError(message) if ``cancel`` says stop."""
    if is_cancelled(cancel):
        raise CancelledError(message)
