"""The dock fits the window (issue 15, bug 3): at 1280 x 800 and 1920 x 1080 every control of every
tab is fully visible across (no clipped browse button, Undo, 3D Cancel, Held out spin box), and
what a person uses on every box (Segment all, Undo, the status line) is above the fold.
The window pictures go to docs/images/dock_<W>x<H>.png (look at them after a layout change)."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

from .conftest import REPO_DOCS

pytestmark = [pytest.mark.gui, pytest.mark.slow]
CONTROLS = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit)


def _clipped(widget) -> list[str]:
    """Controls shown (on the current tab) whose visible part is narrower than they are."""
    out = []
    for cls in CONTROLS:
        for c in widget.findChildren(cls):
            if not c.isVisibleTo(widget) or c.width() <= 0:
                continue
            seen = c.visibleRegion().boundingRect()
            if seen.height() > 0 and seen.width() < c.width():
                out.append(f"{type(c).__name__} {getattr(c, 'text', lambda: '')() or c.toolTip()[:30]!r}: "
                           f"{seen.width()} of {c.width()} px")
    return out


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_dock_fits_the_window(make_napari_viewer, qtbot, lite_model, dsb2018, size):
    image, _ = dsb2018
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(*size)
    qtbot.wait(300)
    problems = {}
    for i in range(widget.tabs.count()):
        widget.tabs.setCurrentIndex(i)
        qtbot.wait(100)
        bad = _clipped(widget)
        if bad:
            problems[widget.tabs.tabText(i)] = bad
        if widget.tabs.tabText(i) == "Fine-tune":
            win.grab().save(str(REPO_DOCS / "images" / f"dock_{size[0]}x{size[1]}_finetune.png"))
    assert not problems, problems
    widget.tabs.setCurrentIndex(0)
    qtbot.wait(100)
    for w in (widget.segment_btn, widget.undo_btn, widget.status_label, widget.image_combo, widget.labels_combo):
        seen = w.visibleRegion().boundingRect()
        assert (seen.width(), seen.height()) == (w.width(), w.height()), w  # above the fold, whole
    assert win.grab().save(str(REPO_DOCS / "images" / f"dock_{size[0]}x{size[1]}.png"))
