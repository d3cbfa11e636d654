"""The MedSAM widget's "Model" tab: channels, model and checkpoint, what the model sees, ROI zoom.

Layout only: the widgets are set as attributes of the MedSAM widget, which wires them.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medsam_core import CT_WINDOWS, MODELS

from ._settings import INTENSITY_MODES, ROI_ZOOM


def ask_checkpoint(parent, caption: str = "MedSAM checkpoint") -> str:
    """A checkpoint file chosen in a file dialog ("" when cancelled): the Model tab and Fine-tune's Load."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(parent, caption, "", "Checkpoints (*.pth *.pt *.ckpt)")
    return path


def settings_page(self) -> QWidget:
    """The Model tab: channels, model + checkpoint, intensity, ROI zoom, preview (attributes set on ``self``, the widget)."""
    page = QWidget()
    lay = QVBoxLayout(page)
    form = QFormLayout()
    self.channel_axis_combo, self.channel_combo = QComboBox(), QComboBox()
    self.channel_combo.addItems(["auto", "mean", "max", *map(str, range(8))])
    form.addRow("Channel axis", self.channel_axis_combo)
    form.addRow("Channels", self.channel_combo)
    lay.addLayout(form)
    lay.addWidget(_model_box(self))
    lay.addWidget(_intensity_box(self))
    return page

def _model_box(self) -> QGroupBox:
    box = QGroupBox("Model")
    form = QFormLayout(box)
    self.model_combo = QComboBox()
    self.model_combo.addItems(list(MODELS))
    self.checkpoint_edit = QLineEdit()
    self.checkpoint_edit.setPlaceholderText("bundled weights (LiteMedSAM) or a checkpoint file")
    self.browse_btn, self.load_btn = QPushButton("..."), QPushButton("Load")
    row = QHBoxLayout()
    row.addWidget(self.checkpoint_edit)
    row.addWidget(self.browse_btn)
    self.device_label = QLabel("not loaded (loads on first use)")
    self.device_label.setWordWrap(True)  # it also names the encoder, e.g. while the fast one is built
    form.addRow("Model", self.model_combo)
    form.addRow("Checkpoint", row)
    form.addRow(self.load_btn, self.device_label)
    return box

def _intensity_box(self) -> QGroupBox:
    box = QGroupBox("What the model sees")
    form = QFormLayout(box)
    self.intensity_combo, self.window_combo = QComboBox(), QComboBox()
    self.intensity_combo.addItems(INTENSITY_MODES)
    self.window_combo.addItems(list(CT_WINDOWS))
    self.preview_btn = QPushButton("Preview model input (M)")
    self.zoom_combo = QComboBox()
    self.zoom_combo.addItems(list(ROI_ZOOM))
    self.zoom_combo.setToolTip("auto: zoom in on boxes too small for the whole-image view (small objects on "
                               "large images); on: every box; off: never (whole-image embedding only)")
    form.addRow("Intensity", self.intensity_combo)
    form.addRow("CT window", self.window_combo)
    form.addRow("ROI zoom", self.zoom_combo)
    form.addRow(self.preview_btn)
    return box

