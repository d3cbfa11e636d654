"""The "3D stack" section of the MedSAM widget: layout and wiring over _volume_session.VolumeActions."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QProgressBar, QPushButton

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
        self.segment_btn.clicked.connect(lambda: widget._try(widget.segment_3d))
        self.cancel_btn.clicked.connect(widget.cancel_3d)
        self.precompute_btn.clicked.connect(lambda: widget._try(widget.precompute_volume))
        self.recist_btn.clicked.connect(lambda: widget._try(widget.recist_lines_layer))
        self.key_check.toggled.connect(lambda v: setattr(self.actions, "key_mode", bool(v)))
        self.actions.on_progress = self._on_progress
        self.actions.on_finished = self._on_finished

    def started(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.cancel_btn.setEnabled(True)
        self.segment_btn.setEnabled(False)
        self.precompute_btn.setEnabled(False)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(min(int(done), max(int(total), 1)))

    def _on_finished(self, what: str) -> None:
        if what == "done":
            self.progress.setValue(self.progress.maximum())
        self.cancel_btn.setEnabled(False)
        self.segment_btn.setEnabled(True)
        self.precompute_btn.setEnabled(True)
