"""The "Fine-tune" section of the MedSAM widget: layout and wiring over _train_session.TrainActions."""

from __future__ import annotations

from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from medsam_core.training import MODES

from ._plot import LinePlots
from ._widget_model import ask_checkpoint


class LossPlot(LinePlots):
    """The loss of each step of the running round (one panel of _plot.LinePlots)."""

    def __init__(self):
        super().__init__(columns=1, min_height=60)
        self.losses: list[float] = []

    def set_losses(self, losses) -> None:
        self.losses = [float(v) for v in losses]
        self.set_panels([("loss", self.losses, None)] if self.losses else [])


class TrainPanel(QGroupBox):
    """Pairs (image + labels, add/remove), mode, epochs, holdout; Fine-tune, Cancel; progress and
    loss plot; the result (held-out Dice before -> after) with Use anyway and Roll back; save/load."""

    def __init__(self, widget):
        super().__init__("Fine-tune")
        self.widget = widget
        self.actions = widget.train
        grid = QGridLayout(self)
        form = QFormLayout()
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        grid.addLayout(form, 0, 0, 1, 2)
        self.add_btn, self.remove_btn = QPushButton("Add pair"), QPushButton("Remove pair")
        grid.addWidget(self.add_btn, 1, 0)
        grid.addWidget(self.remove_btn, 1, 1)
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(70)
        self.pair_list.setToolTip("Empty: the Image + Labels chosen above")
        grid.addWidget(self.pair_list, 2, 0, 1, 2)
        grid.addLayout(self._settings_row(), 3, 0, 1, 2)
        self.from_active_check = QCheckBox("Start from the active model")
        self.from_active_check.setToolTip("train from the model in use, not the base model")
        grid.addWidget(self.from_active_check, 4, 0, 1, 2)
        self.train_btn, self.cancel_btn = QPushButton("Fine-tune"), QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        grid.addWidget(self.train_btn, 5, 0)
        grid.addWidget(self.cancel_btn, 5, 1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        grid.addWidget(self.progress, 6, 0, 1, 2)
        # the result and its decisions right under the buttons (above the fold), the plot last
        self.result_label = QLabel(self.actions.summary)
        self.result_label.setWordWrap(True)
        grid.addWidget(self.result_label, 7, 0, 1, 2)
        self.force_btn, self.rollback_btn = QPushButton("Use anyway"), QPushButton("Roll back")
        self.save_btn, self.load_btn = QPushButton("Save model as..."), QPushButton("Load model...")
        for i, b in enumerate((self.force_btn, self.rollback_btn, self.save_btn, self.load_btn)):
            grid.addWidget(b, 8 + i // 2, i % 2)
        self.loss_plot = LossPlot()
        grid.addWidget(self.loss_plot, 10, 0, 1, 2)
        self._wire()
        self.refresh()

    def _settings_row(self) -> QGridLayout:
        row = QGridLayout()  # two rows: fits a narrow dock
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(20)
        self.holdout_spin = QDoubleSpinBox()
        self.holdout_spin.setRange(0.05, 0.9)
        self.holdout_spin.setSingleStep(0.05)
        self.holdout_spin.setValue(0.25)
        for k, (label, w) in enumerate((("Mode", self.mode_combo), ("Epochs", self.epochs_spin),
                                        ("Held out", self.holdout_spin))):
            row.addWidget(QLabel(label), k // 2, 2 * (k % 2))
            row.addWidget(w, k // 2, 2 * (k % 2) + 1)
        return row

    def _wire(self) -> None:
        w = self.widget
        self.add_btn.clicked.connect(lambda: w.try_action(self._on_add))
        self.remove_btn.clicked.connect(lambda: w.try_action(self._on_remove))
        self.train_btn.clicked.connect(lambda: w.try_action(self._on_train))
        self.cancel_btn.clicked.connect(w.cancel_finetune)
        self.force_btn.clicked.connect(lambda: w.try_action(w.accept_model))
        self.rollback_btn.clicked.connect(lambda: w.try_action(w.rollback_model))
        self.save_btn.clicked.connect(lambda: w.try_action(self._on_save))
        self.load_btn.clicked.connect(lambda: w.try_action(self._on_load))
        self.actions.on_progress = self._on_progress
        self.actions.on_finished = self._on_finished

    # -- handlers -------------------------------------------------------------------------------
    def _on_add(self) -> None:
        self.widget.add_training_pair(self.image_combo.currentText(), self.labels_combo.currentText())

    def _on_remove(self) -> None:
        row = self.pair_list.currentRow()
        self.widget.remove_training_pair(row if row >= 0 else len(self.actions.pairs) - 1)

    def current_pairs(self):
        """The listed pairs, or the Image + Labels chosen above when the list is empty."""
        if self.actions.pairs:
            return list(self.actions.pairs)
        return [(self.image_combo.currentText(), self.labels_combo.currentText())]

    def _on_train(self) -> None:
        self.widget.finetune(self.current_pairs(), self.mode_combo.currentText(), self.epochs_spin.value(),
                             self.holdout_spin.value(), start="active" if self.from_active_check.isChecked() else "base")

    def _on_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save MedSAM model", "medsam_finetuned.pt", "Checkpoints (*.pt)")
        if path:
            self.widget.save_model(path)

    def _on_load(self) -> None:
        path = ask_checkpoint(self, "Load MedSAM model")
        if path:
            self.widget.load_model(self.widget.model_combo.currentText(), path)
            self.refresh()

    # -- state -> view --------------------------------------------------------------------------
    def started(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.loss_plot.set_losses([])
        self.result_label.setText("fine-tuning...")
        self.train_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)

    def _on_progress(self, step: int, total: int, loss: float) -> None:
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(min(int(step), max(int(total), 1)))
        self.loss_plot.set_losses(self.actions.losses)

    def _on_finished(self, what: str) -> None:
        if what in ("accepted", "refused"):
            self.progress.setValue(self.progress.maximum())
        self.refresh()

    def refresh(self) -> None:
        """Layer choices, pair list, result text and which buttons apply."""
        layers = self.widget.viewer.layers
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            keep = combo.currentText()
            combo.clear()
            names = [ly.name for ly in layers if isinstance(ly, kind) and not ly.name.startswith("MedSAM model")]
            combo.addItems(names)
            current = self.widget.session.image_layer if kind is Image else self.widget.session.labels_layer
            if keep in names:
                combo.setCurrentText(keep)
            elif current is not None and current.name in names:  # default: what the widget segments
                combo.setCurrentText(current.name)
        self.pair_list.clear()
        self.pair_list.addItems([f"{i.name} + {lab.name}" for i, lab in self.actions.pairs])
        a = self.actions
        running = a.running
        self.train_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        rnd = a.last_round
        self.force_btn.setEnabled(not running and rnd is not None and not rnd.accepted)
        self.rollback_btn.setEnabled(not running and a.can_rollback)
        self.result_label.setText(a.summary)
