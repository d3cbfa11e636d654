"""Helpers for the MedSAM widget tests: open the real dock widget, boxes around real objects."""

from __future__ import annotations

import numpy as np
import pytest


def ref_box(labels2d: np.ndarray, label_id: int, pad: float = 2) -> np.ndarray:
    """(4,) XYXY bounding box of ``label_id`` pushed out by ``pad`` pixels."""
    yy, xx = np.nonzero(labels2d == label_id)
    return np.array([xx.min() - pad, yy.min() - pad, xx.max() + pad, yy.max() + pad], float)


def rect(box, lead=()) -> np.ndarray:
    """XYXY box -> napari rectangle vertices ((y, x) order, with leading coordinates ``lead``)."""
    x0, y0, x1, y1 = box
    return np.array([[*lead, y, x] for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0))], float)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def big_objects(labels2d: np.ndarray, n: int, min_area: int = 150) -> list[int]:
    """``n`` well-sized object ids (not touching the border), in a fixed order."""
    ids, counts = np.unique(labels2d, return_counts=True)
    out = []
    for lid, c in zip(ids, counts, strict=True):
        if lid == 0 or c < min_area:
            continue
        yy, xx = np.nonzero(labels2d == lid)
        if yy.min() > 3 and xx.min() > 3 and yy.max() < labels2d.shape[0] - 4 and xx.max() < labels2d.shape[1] - 4:
            out.append(int(lid))
    return out[:n]


@pytest.fixture
def open_widget(make_napari_viewer, lite_model):
    """open_widget(show=False) -> (viewer, widget) with the real dock widget and the real model."""

    def make(show: bool = False):
        viewer = make_napari_viewer(show=show)
        _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
        widget.set_model(lite_model)
        # These tests were calibrated on whole-image decoding (one encode, hand-picked objects);
        # ROI zoom (the default, "auto") has its own tests in test_widget_zoom.py.
        widget.set_roi_zoom("off")
        return viewer, widget

    return make


REPO_DOCS = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs"
