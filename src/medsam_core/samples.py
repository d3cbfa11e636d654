"""The small real sample shipped in the package: a DSB2018 nuclei crop, its labels and boxes.

See ``medsam_core/sample_data/README.md`` for the source and licence (BBBC038 via stardist, BSD-3-Clause).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "sample_data"
NUCLEI_IMAGE = DATA_DIR / "nuclei_dsb2018_crop.tif"
NUCLEI_LABELS = DATA_DIR / "nuclei_dsb2018_crop_labels.tif"
NUCLEI_BOXES = DATA_DIR / "nuclei_dsb2018_crop_boxes.csv"


@dataclass(frozen=True)
class Sample:
    """image (256, 256) uint16; labels (256, 256) uint8, 0 = background, object i+1 belongs to
    boxes[i]; boxes (N, 4) float64 XYXY inclusive pixel coordinates; paths of the three files."""

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    image_path: Path
    labels_path: Path
    boxes_path: Path


def nuclei_paths() -> dict[str, Path]:
    """Paths of the shipped nuclei sample: keys "image", "labels", "boxes"."""
    return {"image": NUCLEI_IMAGE, "labels": NUCLEI_LABELS, "boxes": NUCLEI_BOXES}


def nuclei() -> Sample:
    """Load the shipped 256x256 DSB2018 nuclei crop with its 25 reference labels and boxes."""
    import tifffile

    boxes = np.loadtxt(NUCLEI_BOXES, delimiter=",", skiprows=1, ndmin=2)
    return Sample(tifffile.imread(NUCLEI_IMAGE), tifffile.imread(NUCLEI_LABELS), boxes,
                  NUCLEI_IMAGE, NUCLEI_LABELS, NUCLEI_BOXES)
