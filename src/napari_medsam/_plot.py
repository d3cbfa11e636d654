"""The one plot widget of the dock: small line plots (a grid of panels) drawn with QPainter.

Each panel is ``(title, values, top)``: values plotted left to right, y from ``top``'s scale
(``top`` None: the values' own min..max; a number: 0..top). The fine-tune loss is one panel,
the effort per round four (``columns=2``).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


def _fmt(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


class LinePlots(QWidget):
    """``set_panels([(title, values, top), ...])``; ``points(k)``: panel k's polyline in widget pixels."""

    def __init__(self, columns: int = 1, min_height: int = 60, markers: bool = False):
        super().__init__()
        self.columns, self.markers = columns, markers
        self.panels: list[tuple[str, list[float], float | None]] = []
        self.setMinimumHeight(min_height)

    def set_panels(self, panels) -> None:
        self.panels = [(title, [float(v) for v in values], top) for title, values, top in panels]
        self.update()

    def cell(self, k: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) of panel ``k`` in widget pixels."""
        rows = max(math.ceil(len(self.panels) / self.columns), 1)
        w, h = self.width() / self.columns, self.height() / rows
        return (k % self.columns) * w, (k // self.columns) * h, w, h

    def points(self, k: int = 0) -> list[tuple[float, float]]:
        if k >= len(self.panels):
            return []
        _, values, top = self.panels[k]
        vals = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
        if not vals:
            return []
        x0, y0, w, h = self.cell(k)
        m, head = (5.0, 16.0) if top is not None else (4.0, 4.0)
        if top is None:
            lo, hi = min(v for _, v in vals), max(v for _, v in vals)
        else:
            lo, hi = 0.0, top if top > 0 else (max(v for _, v in vals) or 1.0)
        span = (hi - lo) or 1.0
        dx = (w - 2 * m) / max(len(values) - 1, 1)
        return [(x0 + m + i * dx, y0 + h - m - (v - lo) / span * (h - head - m)) for i, v in vals]

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for k, (title, values, _) in enumerate(self.panels):
            x0, y0, w, h = self.cell(k)
            painter.setPen(QPen(Qt.GlobalColor.gray))
            painter.drawRect(int(x0), int(y0), int(w) - 1, int(h) - 1)
            pts = self.points(k)
            painter.setPen(QPen(Qt.GlobalColor.cyan, 1.5))
            if self.markers or len(pts) == 1:
                for x, y in pts:
                    painter.drawEllipse(QPointF(x, y), 2.0, 2.0)
            if len(pts) > 1:
                painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in pts]))
            if values or self.markers:
                painter.drawText(int(x0) + 4, int(y0) + 12, f"{title} {_fmt(values[-1]) if values else '-'}")
        painter.end()
