"""The "Automatic" tab of the Active learning panel: layout and wiring over _auto_session.AutoActions."""

from __future__ import annotations

from dataclasses import replace

from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from medsam_core import MedSAMError

from ._auto_session import AUTO_LAYER


class AutoTab(QWidget):
    """Train (epochs), Segment everything, Cancel, progress, Accept selected / all, keep a refused round,
    roll back, save the model with its head; a status line says what happened last."""

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.actions = widget.active.auto
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(self.actions.config.epochs)
        self.epochs_spin.setToolTip("Training passes over the labelled images (each in 4 flips/rotations)")
        form.addRow("Epochs", self.epochs_spin)
        lay.addLayout(form)
        self.train_btn = QPushButton("Train automatic head")
        self.train_btn.setToolTip("Learn from the labelled objects of every open image (label every object in "
                                  "the area you work on); kept only if it beats the active one on held-out objects")
        self.segment_btn = QPushButton("Segment everything")
        self.segment_btn.setToolTip(f"Find every object of this image (slice) into the layer {AUTO_LAYER!r}; "
                                    "your labels are not touched")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("Stop training or segmenting; nothing is changed")
        row = QHBoxLayout()
        for b in (self.train_btn, self.segment_btn, self.cancel_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        row = QHBoxLayout()
        self.accept_btn, self.accept_all_btn = QPushButton("Accept selected"), QPushButton("Accept all")
        self.accept_btn.setToolTip(f"Move the label picked in {AUTO_LAYER!r} (as you edited it) into your labels")
        for b in (self.accept_btn, self.accept_all_btn):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.keep_btn, self.rollback_btn = QPushButton("Keep refused round"), QPushButton("Roll back")
        self.save_btn = QPushButton("Save model + head...")
        for b in (self.keep_btn, self.rollback_btn, self.save_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.status_label = QLabel(self.actions.status)
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        lay.addStretch(1)
        self._wire()

    def _wire(self) -> None:
        w, a = self.widget, self.actions
        self.train_btn.clicked.connect(lambda: w.try_action(self._started, self._train))
        self.segment_btn.clicked.connect(lambda: w.try_action(self._started, a.segment))
        self.cancel_btn.clicked.connect(a.cancel)
        self.accept_btn.clicked.connect(lambda: w.try_action(self._then_show, a.accept_selected))
        self.accept_all_btn.clicked.connect(lambda: w.try_action(self._then_show, a.accept_all))
        self.keep_btn.clicked.connect(lambda: w.try_action(self._then_show, a.accept_round))
        self.rollback_btn.clicked.connect(lambda: w.try_action(self._then_show, a.rollback))
        self.save_btn.clicked.connect(lambda: w.try_action(self._on_save))
        a.on_progress = self._on_progress
        a.on_finished = self._on_finished

    def _train(self) -> None:
        self.actions.config = replace(self.actions.config, epochs=int(self.epochs_spin.value()))
        self.actions.train()

    def _started(self, func) -> None:
        for b in (self.train_btn, self.segment_btn):
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first step
        try:
            func()
        except MedSAMError:
            self._on_finished("error")
            raise

    def _then_show(self, func) -> None:
        func()
        self.status_label.setText(self.actions.status)

    def _on_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Model checkpoint with the automatic head", "model_auto.pt",
                                              "Checkpoints (*.pt *.pth)")
        if path:
            out = self.actions.save(path)
            self.widget.show_status(f"MedSAM: model and automatic head saved to {out}")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(min(int(done), max(int(total), 1)))

    def _on_finished(self, what: str) -> None:
        for b in (self.train_btn, self.segment_btn):
            b.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if what in ("error", "cancelled") else 1)
        self.status_label.setText(self.actions.status)
