"""Acting as a person on a real viewer: mouse drags on the canvas, File > Open with its reader dialog."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPoint, Qt, QTimer
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication, QRadioButton

LEFT = Qt.MouseButton.LeftButton


def canvas_point(viewer, yx) -> QPoint:
    """World (y, x) -> canvas widget pixel."""
    canvas = viewer.window._qt_viewer.canvas
    p = np.asarray(canvas.view.scene.transform.map([yx[1], yx[0], 0, 1]), float)
    return QPoint(int(round(p[0] / p[3])), int(round(p[1] / p[3])))


def drag(viewer, qtbot, start_yx, end_yx, steps: int = 6) -> None:
    """Press the left button at world ``start_yx``, move in ``steps``, release at ``end_yx``."""
    native = viewer.window._qt_viewer.canvas.native
    a, b = canvas_point(viewer, start_yx), canvas_point(viewer, end_yx)
    QTest.mouseMove(native, a)
    qtbot.wait(20)
    QTest.mousePress(native, LEFT, Qt.KeyboardModifier.NoModifier, a)
    for k in range(1, steps + 1):
        t = k / steps
        QTest.mouseMove(native, QPoint(int(a.x() + t * (b.x() - a.x())), int(a.y() + t * (b.y() - a.y()))))
        qtbot.wait(15)
    QTest.mouseRelease(native, LEFT, Qt.KeyboardModifier.NoModifier, b)
    qtbot.wait(30)


def drag_box(viewer, qtbot, box_xyxy) -> None:
    """Draw the XYXY pixel box as a person would (a rectangle drag on the canvas)."""
    x0, y0, x1, y1 = box_xyxy
    drag(viewer, qtbot, (y0, x0), (y1, x1))


def file_open(viewer, qtbot, path, plugin_text: str = "MedSAM") -> None:
    """File > Open ``path``: napari's GUI path, answering the reader-choice dialog with our plugin."""

    tries = [0]

    def answer():
        tries[0] += 1
        for w in QApplication.topLevelWidgets():
            if w.isVisible() and type(w).__name__ == "QtReaderDialog":
                for rb in w.findChildren(QRadioButton):
                    if plugin_text in rb.text():
                        rb.setChecked(True)
                w.accept()
                return
        if tries[0] < 100:
            QTimer.singleShot(50, answer)  # not shown yet

    QTimer.singleShot(50, answer)
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    qtbot.wait(50)


def lasso(viewer, qtbot, xy_points, steps: int = 3) -> None:
    """Draw a polygon through (V, 2) XY pixel vertices as a person does with napari's lasso tool:
    press at the first vertex, move through the others (napari adds a vertex every 10 screen px),
    release back at the first one."""
    native = viewer.window._qt_viewer.canvas.native
    pts = [canvas_point(viewer, (y, x)) for x, y in np.asarray(xy_points, float)]
    pts.append(pts[0])
    QTest.mouseMove(native, pts[0])
    qtbot.wait(20)
    QTest.mousePress(native, LEFT, Qt.KeyboardModifier.NoModifier, pts[0])
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        for k in range(1, steps + 1):
            t = k / steps
            QTest.mouseMove(native, QPoint(int(a.x() + t * (b.x() - a.x())), int(a.y() + t * (b.y() - a.y()))))
            qtbot.wait(10)
    QTest.mouseRelease(native, LEFT, Qt.KeyboardModifier.NoModifier, pts[-1])
    qtbot.wait(30)
