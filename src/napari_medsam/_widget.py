"""MedSAM dock widget: layout and signal wiring; state and actions live in _session.Session.

The scripting API is the Qt-free ``widget.session`` (_session.Session and its action classes);
the widget's public methods (``set_image_layer``, ``segment_boxes``, ``set_intensity``, ...) are
thin delegates that also show the new state in the dock. They raise ``MedSAMError`` on bad input
and change nothing then; the buttons and keys show the same message as a napari notification.
"""

from __future__ import annotations

from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medsam_core import MedSAMError

from ._active_session import ActiveActions
from ._series_session import SeriesActions
from ._session import Session
from ._train_session import TrainActions
from ._volume_session import VolumeActions
from ._widget_actions import WorkflowMethods
from ._widget_active import ActivePanel
from ._widget_model import ask_checkpoint, settings_page
from ._widget_series import SERIES_SHORTCUTS, SeriesPanel
from ._widget_train import TrainPanel
from ._widget_volume import VOLUME_SHORTCUTS, VolumePanel
from ._workers import Runner

SHORTCUTS = (  # (napari key, Qt key, action, method name)
    ("Control-Z", "Ctrl+Z", "undo the last MedSAM change", "undo"),
    ("G", "G", "segment all pending boxes", "segment_all"),
    ("O", "O", "toggle overwrite", "toggle_overwrite"),
    ("N", "N", "toggle negative points", "toggle_negative"),
    ("M", "M", "preview what the model sees", "preview"),
)
NEW_LABELS = "(new labels layer)"


def _narrow(root: QWidget) -> None:
    """Let combo boxes and line edits shrink to the dock's width (long layer names, placeholders)."""
    for combo in root.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(6)
    for edit in root.findChildren(QLineEdit):
        edit.setMinimumWidth(60)


class MedSAMWidget(WorkflowMethods, QWidget):
    """Box-prompt segmentation of the chosen image layer into a Labels layer."""

    def __init__(self, napari_viewer, runner: Runner | None = None):
        super().__init__()
        from medsam_core.runtime import tune_malloc

        tune_malloc()  # keep the decoder's large buffers in the heap (docs/benchmarks.md, Decoder)
        from ._save import prefer_own_writers

        prefer_own_writers()  # File > Save on labels: the plugin's writer (provenance sidecar) by default
        self.viewer = napari_viewer
        self.runner = runner or Runner()
        self.session = Session(napari_viewer, self.runner, on_status=self.show_status, on_error=self._notify)
        self.volume = VolumeActions(self.session)
        self.series = SeriesActions(self.session, self.set_image_layer)
        self.train = TrainActions(self.session, on_model=self.set_model)
        self.active = ActiveActions(self.session, self.train, self.set_image_layer)  # scripts: widget.active.rank(...)
        self.last_error: str | None = None
        self._build_ui()
        self._wire()
        self._refresh_layer_choices()
        self._on_layers_changed()  # the image may be open before the plugin: segment it right away

    # -- layout -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        # Fits a 1280 px wide window: what a person uses on every box (image, labels, Segment all,
        # Undo, the status line) stays on top; settings and the less frequent workflows are tabs.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll, content = QScrollArea(), QWidget()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # never clipped silently
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer.addWidget(scroll)
        lay = QVBoxLayout(content)
        form = QFormLayout()
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.segment_btn, self.undo_btn = QPushButton("Segment all (G)"), QPushButton("Undo (Ctrl+Z)")
        row.addWidget(self.segment_btn)
        row.addWidget(self.undo_btn)
        lay.addLayout(row)
        self.status_label = QLabel("MedSAM: ready")
        self.status_label.setWordWrap(True)
        lay.addWidget(self.status_label)
        self.volume_panel, self.series_panel = VolumePanel(self), SeriesPanel(self)
        self.train_panel, self.active_panel = TrainPanel(self), ActivePanel(self)
        self.tabs = QTabWidget()
        for panel, name in ((self._boxes_page(), "Boxes"), (settings_page(self), "Model"),
                            (self.volume_panel, "3D"), (self.series_panel, "Series"),
                            (self.train_panel, "Fine-tune"), (self.active_panel, "Active")):
            if isinstance(panel, QGroupBox):
                panel.setTitle("")
                panel.setFlat(True)
            page = QWidget()  # top-aligned: a short panel does not spread over the tallest one's height
            page_lay = QVBoxLayout(page)
            page_lay.setContentsMargins(0, 0, 0, 0)
            page_lay.addWidget(panel)
            page_lay.addStretch(1)
            self.tabs.addTab(page, name)
        self.tabs.setTabToolTip(5, "Active learning: which objects to label next")
        lay.addWidget(self.tabs)
        lay.addStretch(1)
        _narrow(content)

    def _boxes_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        self.overwrite_check = QCheckBox("Overwrite existing labels (O)")
        self.delete_check = QCheckBox("Deleting a box removes its object")
        self.delete_check.setChecked(True)
        self.auto_check = QCheckBox("Segment each box as it is drawn")
        self.auto_check.setChecked(True)
        self.negative_check = QCheckBox("Negative points (N)")
        self.polygon_btn = QPushButton("Polygon / lasso prompt")
        self.polygon_btn.setToolTip("Draw around an object on 'MedSAM polygons' (lasso mode): it becomes a label")
        for w in (self.overwrite_check, self.delete_check, self.auto_check, self.negative_check, self.polygon_btn):
            lay.addWidget(w)
        keys = "<br>".join(f"<b>{qt}</b>: {what}" for _, qt, what, _ in SHORTCUTS)
        self.help_label = QLabel(
            "Draw rectangles on <i>MedSAM boxes</i>; move or resize one to redo its object. "
            "Click points on <i>MedSAM points</i> to refine. On labels opened from a file (Cellpose, "
            f"QuPath), a box or point on an object redoes that object only.<br>{keys}"
        )
        self.help_label.setWordWrap(True)
        lay.addWidget(self.help_label)
        return page

    # -- wiring ---------------------------------------------------------------------------------
    def _wire(self) -> None:
        self.image_combo.activated.connect(lambda _: self.try_action(self._on_image_chosen))
        self.labels_combo.activated.connect(lambda _: self.try_action(self._on_labels_chosen))
        self.channel_axis_combo.activated.connect(lambda _: self.try_action(self._on_channel_changed))
        self.channel_combo.activated.connect(lambda _: self.try_action(self._on_channel_changed))
        self.load_btn.clicked.connect(lambda: self.try_action(self._on_load_clicked))
        self.browse_btn.clicked.connect(self._browse_checkpoint)
        self.intensity_combo.activated.connect(lambda _: self.try_action(self._on_intensity_changed))
        self.window_combo.activated.connect(lambda _: self.try_action(self._on_intensity_changed))
        self.preview_btn.clicked.connect(lambda: self.try_action(self.preview))
        self.zoom_combo.activated.connect(lambda _: self.try_action(self.set_roi_zoom, self.zoom_combo.currentText()))
        self.overwrite_check.toggled.connect(lambda v: self.try_action(self.session.set_overwrite, v))
        self.delete_check.toggled.connect(lambda v: self.try_action(self.session.set_delete_removes, v))
        self.auto_check.toggled.connect(lambda v: self.try_action(self.session.set_auto_segment, v))
        self.negative_check.toggled.connect(lambda v: self.try_action(self.session.set_negative, v))
        self.polygon_btn.clicked.connect(lambda: self.try_action(self.polygon_layer))
        self.segment_btn.clicked.connect(lambda: self.try_action(self.segment_all))
        self.undo_btn.clicked.connect(lambda: self.try_action(self.undo))
        for _, qt_key, _, method in SHORTCUTS + VOLUME_SHORTCUTS + SERIES_SHORTCUTS:
            sc = QShortcut(QKeySequence(qt_key), self)
            sc.activated.connect(lambda m=method: self.try_action(getattr(self, m)))
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.events.renamed.connect(lambda _: self._refresh_layer_choices())
        self.viewer.dims.events.current_step.connect(self._on_step)

    def try_action(self, func, *args):
        """Run a button's action: a MedSAMError becomes a notification and a status line."""
        try:
            return func(*args)
        except MedSAMError as exc:
            self._notify(exc)

    def _notify(self, exc: Exception) -> None:
        self.last_error = str(exc)
        show_error(f"MedSAM: {exc}")
        self.show_status(f"MedSAM: {exc}")

    def show_status(self, text: str) -> None:
        try:
            self.status_label.setText(text)
        except RuntimeError:  # the dock was closed while a worker finished: there is nobody to tell
            return
        self.viewer.status = text
        if self.session.predictor is not None:
            self.device_label.setText(self._model_line())
            auto_tab = getattr(getattr(self, "active_panel", None), "auto_tab", None)
            if auto_tab is not None:  # a checkpoint's automatic head, said as soon as the model is loaded
                auto = self.active.auto
                auto.head  # noqa: B018 - adopts the new model's head and updates the status
                auto_tab.status_label.setText(auto.status)

    def _on_layers_changed(self, event=None) -> None:
        opened = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if isinstance(opened, Labels):  # labels opened for correction (a Cellpose mask) become the target
            self.try_action(self.session.imports.take_opened, opened)
        self._refresh_layer_choices()
        self.train_panel.refresh()
        if self.session.image_layer is None or self.session.image_layer not in self.viewer.layers:
            images = [ly for ly in self.viewer.layers if isinstance(ly, Image) and not ly.name.startswith("MedSAM")]
            if images:
                self.try_action(self.set_image_layer, images[-1])
                # napari selects the inserted layer after this handler: hand the focus back to the boxes
                QTimer.singleShot(0, self._activate_boxes)

    def _activate_boxes(self) -> None:
        if self.session.shapes_layer is not None and self.session.shapes_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.session.shapes_layer
            self.session.shapes_layer.mode = "add_rectangle"

    def _refresh_layer_choices(self) -> None:
        self.image_combo.clear()
        self.image_combo.addItems([ly.name for ly in self.viewer.layers if isinstance(ly, Image)])
        self.labels_combo.clear()
        self.labels_combo.addItems([NEW_LABELS, *(ly.name for ly in self.viewer.layers if isinstance(ly, Labels))])
        s = self.session
        if s.image_layer is not None:
            self.image_combo.setCurrentText(s.image_layer.name)
            self.channel_axis_combo.clear()
            self.channel_axis_combo.addItems(["none", *map(str, range(s.image_layer.ndim))])
            ca = s.settings.channel_axis
            self.channel_axis_combo.setCurrentText("none" if ca is None else str(ca))
        if s.labels_layer is not None:
            self.labels_combo.setCurrentText(s.labels_layer.name)

    def _layer_named(self, name: str):
        if name not in self.viewer.layers:  # renamed or removed since the list was filled
            self._refresh_layer_choices()
            raise MedSAMError(f"there is no layer {name!r} any more (renamed or closed): pick it again from the list")
        return self.viewer.layers[name]

    def _on_image_chosen(self) -> None:
        self.set_image_layer(self._layer_named(self.image_combo.currentText()))

    def _on_labels_chosen(self) -> None:
        name = self.labels_combo.currentText()
        if name != NEW_LABELS:
            self.set_labels_layer(self._layer_named(name))

    def _on_channel_changed(self) -> None:
        axis = self.channel_axis_combo.currentText()
        self.set_channel(None if axis in ("", "none") else int(axis), self.channel_combo.currentText())

    def _on_load_clicked(self) -> None:
        path = self.checkpoint_edit.text().strip() or None
        self.session.load_model_async(self.model_combo.currentText(), path)

    def _browse_checkpoint(self) -> None:
        path = ask_checkpoint(self)
        if path:
            self.checkpoint_edit.setText(path)

    def _on_intensity_changed(self) -> None:
        self.set_intensity(self.intensity_combo.currentText(), self.window_combo.currentText())

    def _on_step(self, event=None) -> None:
        self.try_action(self.session.prefetch)

    def _bind_layer_keys(self, *layers) -> None:
        """The shortcuts on the boxes and points layers, or on ``layers`` (polygons, RECIST lines: made
        on demand), so Ctrl+Z and the others work whichever MedSAM layer is active."""
        for layer in layers or (self.session.shapes_layer, self.session.points_layer):
            for napari_key, _, _, method in SHORTCUTS + VOLUME_SHORTCUTS + SERIES_SHORTCUTS:
                layer.bind_key(napari_key, lambda _layer, m=method: self.try_action(getattr(self, m)), overwrite=True)

    # -- public API (scripts call these; they raise MedSAMError on bad input) ------------------
    def set_image_layer(self, layer, labels_layer=None) -> None:
        """Segment image ``layer``; prompt layers are (re)created, labels go to ``labels_layer`` or a new one."""
        self.session.set_image_layer(layer, labels_layer)
        self._image_set()

    def _image_set(self) -> None:
        self._bind_layer_keys()
        self._refresh_layer_choices()
        self.volume_panel.stops.refresh()  # this image's 3D objects' stops
        self.try_action(self.session.prefetch)

    def set_labels_layer(self, labels_layer) -> None:
        self.session.set_labels_layer(labels_layer)
        self._refresh_layer_choices()

    def set_model(self, model) -> None:
        """Use an already loaded ``medsam_core`` model (e.g. shared between widgets or tests)."""
        self.session.set_model(model)
        self.device_label.setText(self._model_line())

    def _model_line(self) -> str:
        """"lite_medsam (ft.pt) on cpu" (which weights: _session.weights_note), and once an image was
        encoded, which encoder ran it."""
        from ._session import weights_note

        model = self.session.model
        line, encoder = f"{model.spec.name}{weights_note(model)} on {self.session.device}", self.session.encoder_text
        return f"{line}; {encoder}" if encoder else line

    def load_model(self, name: str = "lite_medsam", checkpoint=None, device=None) -> None:
        """Load a registered model (bundled weights, or ``checkpoint``) now, on this thread."""
        self.set_model(self.session.load_model(name, checkpoint=checkpoint, device=device))

    # Settings: the session validates before it changes anything (_settings.SettingsActions); the
    # widget then shows the values it took.
    def set_intensity(self, mode: str = "auto", window: str | None = None, low: float = 0.5,
                      high: float = 99.5) -> None:
        """See ``Session.set_intensity``: auto | percentile | ct (+ CT window) | contrast | minmax."""
        self.session.set_intensity(mode, window, low, high)
        self._show_settings()

    def set_roi_zoom(self, setting: str = "auto") -> None:
        """See ``Session.set_roi_zoom``: "auto", "on" or "off"."""
        self.session.set_roi_zoom(setting)
        self._show_settings()

    def set_channel(self, channel_axis: int | None = None, channel: int | str = "auto") -> None:
        """See ``Session.set_channel``: channel axis (None: none) and "auto" / "mean" / "max" / an index."""
        self.session.set_channel(channel_axis, channel)
        if self.session.image_layer is not None:
            self._image_set()

    def set_overwrite(self, overwrite: bool) -> None:
        self.session.set_overwrite(overwrite)
        self._show_settings()

    def toggle_overwrite(self) -> None:
        self.set_overwrite(not self.session.settings.overwrite)

    def toggle_negative(self) -> None:
        self.session.set_negative(not self.session.settings.negative)
        self._show_settings()

    def _show_settings(self) -> None:
        s = self.session.settings
        for box, value in ((self.overwrite_check, s.overwrite), (self.negative_check, s.negative),
                           (self.delete_check, s.delete_removes), (self.auto_check, s.auto_segment)):
            box.blockSignals(True)
            box.setChecked(value)
            box.blockSignals(False)
        self.intensity_combo.setCurrentText(s.intensity_mode)
        self.window_combo.setCurrentText(s.ct_window)
        self.zoom_combo.setCurrentText(s.roi_zoom)

    def segment_boxes(self, boxes=None, z=None) -> list[int]:
        """Segment (N, 4) XYXY boxes in image pixels on the current slice (or slice ``z``); they are
        added to the prompt layer. ``boxes=None``: every pending rectangle. Returns the label ids."""
        return self.session.segment_boxes(boxes, z)

    def segment_all(self) -> list[int]:
        """Segment every rectangle not segmented yet (in the background where a slice needs encoding)."""
        return self.session.sync_shapes(blocking=False)

    def undo(self) -> str:
        """Revert the last MedSAM change exactly (labels, boxes, points)."""
        return self.session.undo()

    def refine(self, label_id: int, points=None, labels=None) -> int:
        """Refine object ``label_id`` with (P, 2) XY pixel ``points`` and (P,) 1/0 ``labels``."""
        return self.session.refine(label_id, points, labels)

    def polygon_layer(self):
        """Activate "MedSAM polygons" in lasso mode: each polygon drawn becomes an object."""
        layer = self.session.polygon_layer()
        self._bind_layer_keys(layer)
        return layer

    def segment_polygon(self, xy, z=None) -> int:
        """Segment the (V, 2) XY pixel polygon ``xy`` (current slice or slice ``z``); returns its label id."""
        return self.session.segment_polygon(xy, z)

    def preview(self):
        """Add or update the image layer "MedSAM model input": what the model sees for the current slice."""
        from ._preview import show_model_input

        layer = show_model_input(self.session)
        self._activate_boxes()  # napari selects an inserted layer: the next drag must still draw a box
        QTimer.singleShot(0, self._activate_boxes)
        return layer

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block until background work (model loading, encoding) is done: for scripts."""
        self.runner.wait(timeout_ms)

    @property
    def labels_layer(self):
        return self.session.labels_layer

    @property
    def shapes_layer(self):
        return self.session.shapes_layer

    @property
    def points_layer(self):
        return self.session.points_layer
