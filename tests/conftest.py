"""Shared fixtures: the real bundled model (loaded once), real data from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def lite_model():
    """The real LiteMedSAM with its bundled weights, on CPU."""
    import medsam_core

    return medsam_core.load_model("lite_medsam", device="cpu")


@pytest.fixture(scope="session")
def dsb2018():
    """Real 2D fluorescence nuclei: (image (512, 512) uint16, labels (512, 512) int32)."""
    path = SHARED_DATA / "fluo_nuclei_dsb2018.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: CI provides ../shared beside the checkout")
    with np.load(path) as d:
        return d["image"], d["labels"]


@pytest.fixture(scope="session")
def cells3d():
    """Real 3D confocal nuclei: (image (60, 256, 256) uint16, labels, spacing (z, y, x))."""
    path = SHARED_DATA / "confocal3d_nuclei_cells3d.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: CI provides ../shared beside the checkout")
    with np.load(path) as d:
        return d["image"], d["labels"], tuple(d["spacing"])


def disk_image(shape=(128, 128), center=(64, 64), radius=20, fg=200, bg=20, dtype=np.uint8):
    """A bright disk on a dark background, and its mask."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
    img = np.where(mask, fg, bg).astype(dtype)
    return img, mask
