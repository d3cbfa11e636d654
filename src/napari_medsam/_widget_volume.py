"""The "3D stack" section of the MedSAM widget: layout and wiring over _volume_session.VolumeActions.

Below the buttons: the progress of a walk (slices decoded of the expected number, and the time
left) and, for each 3D object, why its walk stopped in each direction, with a button that shows
that slice.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medsam_core.walk_extent import PLANES

VOLUME_SHORTCUTS = (  # (napari key, Qt key, action, widget method)
    ("Shift-G", "Shift+G", "segment the selected box in 3D", "segment_3d"),
)


class VolumePanel(QGroupBox):
    """Buttons: Segment in 3D, Cancel, Precompute all slices, RECIST line; a key-box toggle; progress."""

    def __init__(self, widget):
        super().__init__("3D stack")
        self.widget = widget
        self.actions = widget.volume
        grid = QGridLayout(self)
        self.segment_btn = QPushButton("Segment in 3D (Shift+G)")
        self.cancel_btn = QPushButton("Cancel")
        self.precompute_btn = QPushButton("Precompute all slices")
        self.recist_btn = QPushButton("RECIST line")
        self.recist_btn.setToolTip("Draw a lesion's long axis on 'MedSAM lines'; a second crossing line is its short axis")
        self.key_check = QCheckBox("New box = key box of the last 3D object")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.cancel_btn.setEnabled(False)
        grid.addWidget(self.segment_btn, 0, 0)
        grid.addWidget(self.cancel_btn, 0, 1)
        grid.addWidget(self.precompute_btn, 1, 0)
        grid.addWidget(self.recist_btn, 1, 1)
        grid.addWidget(self.key_check, 2, 0, 1, 2)
        grid.addWidget(self.progress, 3, 0, 1, 2)
        self.stops = StopsView(self)
        grid.addWidget(self.stops, 4, 0, 1, 2)
        self.segment_btn.clicked.connect(lambda: widget.try_action(widget.segment_3d))
        self.cancel_btn.clicked.connect(widget.cancel_3d)
        self.precompute_btn.clicked.connect(lambda: widget.try_action(widget.precompute_volume))
        self.recist_btn.clicked.connect(lambda: widget.try_action(widget.recist_lines_layer))
        self.key_check.toggled.connect(lambda v: setattr(self.actions, "key_mode", bool(v)))
        self.actions.on_progress = self._on_progress
        self.actions.on_finished = self.finished
        self.actions.on_result = lambda owner: self.stops.refresh()

    def started(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.cancel_btn.setEnabled(True)
        self.segment_btn.setEnabled(False)
        self.precompute_btn.setEnabled(False)

    def _on_progress(self, done: int, total: int) -> None:
        total = max(int(total), 1)
        seconds_left = self.actions.seconds_left
        self.progress.setRange(0, total)
        self.progress.setValue(min(int(done), total))
        left = "" if seconds_left is None else f", about {_duration(seconds_left)} left"
        step = self.actions.walk_step
        planes = self._planes()  # steps that read the extent prior's planes
        if step is not None and step.stage == "plane":
            self.progress.setFormat(f"reading the depth: orthogonal plane {planes} of {PLANES}{left}")
        else:
            self.progress.setFormat(f"{int(done) - planes} of ~{total - planes} slices{left}")

    def _planes(self) -> int:
        step = self.actions.walk_step
        return step.planes if step is not None else 0

    def finished(self, what: str) -> None:
        if what == "done":
            step = self.actions.walk_step  # a walk's last step: the slices it kept (the total was a guess)
            done = max(step.done if step is not None else self.progress.maximum(), 1)
            self.progress.setRange(0, done)
            self.progress.setValue(done)
            self.progress.setFormat(f"{done - self._planes()} slices, done")
        self.cancel_btn.setEnabled(False)
        self.segment_btn.setEnabled(True)
        self.precompute_btn.setEnabled(True)


def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class StopsView(QWidget):
    """For each 3D object: "object 3 up: vanished at slice 81 [Go to 81]", one row per direction."""

    def __init__(self, panel: VolumePanel):
        super().__init__()
        self.actions = panel.actions
        self.widget = panel.widget
        self.rows: list[tuple[QLabel, QPushButton]] = []
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def refresh(self) -> None:
        while self._layout.count():
            item = self._layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.rows = []
        for owner in sorted(self.actions.results):
            stops = self.actions.stops(owner)
            for direction in ("up", "down"):
                if direction in stops:
                    self._add_row(owner, direction, stops[direction])

    def _add_row(self, owner: int, direction: str, stop) -> None:
        row = QWidget()
        grid = QGridLayout(row)
        grid.setContentsMargins(0, 0, 0, 0)
        label = QLabel(f"object {owner} {direction}: {stop}")
        label.setToolTip("why the 3D walk of this object ended in this direction; a key box there "
                         "re-walks only this side")
        button = QPushButton(f"Go to {stop.slice}")
        button.clicked.connect(lambda _=False, o=owner, z=stop.slice: self.widget.try_action(self.actions.go_to_slice, o, z))
        grid.addWidget(label, 0, 0)
        grid.addWidget(button, 0, 1)
        self._layout.addWidget(row)
        self.rows.append((label, button))
