"""Process-wide settings the plugin needs inside a running napari (kept out of the session)."""

from __future__ import annotations


def avoid_triton_clash() -> None:
    """Keep torch from importing triton inside a running napari.

    segment-anything imports torchvision, whose torch._dynamo probes for triton; loading triton's
    bundled LLVM next to Mesa's (software OpenGL) crashes the process. Inference never needs
    triton, so inside the plugin it is marked absent unless it is already loaded or the user sets
    MEDSAM_ALLOW_TRITON=1.
    """
    import os
    import sys

    if "triton" not in sys.modules and os.environ.get("MEDSAM_ALLOW_TRITON") != "1":
        sys.modules["triton"] = None  # import triton -> ImportError -> torch treats it as absent
