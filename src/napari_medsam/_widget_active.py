"""The "Active learning" section of the MedSAM widget: layout and wiring over _active_session.ActiveActions."""

from __future__ import annotations

import math

from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medsam_core import MedSAMError

from ._active_session import SOURCES
from ._plot import LinePlots
from ._widget_auto import AutoTab

SUGGESTION_COLUMNS = ("#", "label", "image", "z", "score", "iou_pred", "stability", "agreement", "flip", "contrast",
                      "head")
EFFORT_COLUMNS = ("round", "objects", "s / object", "prompts / object", "accepted", "Dice")
METRICS = (  # (RoundStats field, title, fixed top of the y axis or None)
    ("seconds_per_object", "seconds / object", None),
    ("prompts_per_object", "prompts / object", None),
    ("accepted_share", "accepted without edits", 1.0),
    ("mean_dice", "Dice model vs kept", 1.0),
)


def _table(columns, height: int) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels(list(columns))
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.verticalHeader().setVisible(False)
    t.setMaximumHeight(height)
    return t


def _fill(table: QTableWidget, rows) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.setItem(r, c, QTableWidgetItem(_fmt(value)))
    table.resizeColumnsToContents()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


class EffortPlot(LinePlots):
    """Four panels (seconds and prompts per object, accepted share, Dice) over fine-tuning rounds."""

    def __init__(self):
        super().__init__(columns=2, min_height=120, markers=True)
        self.rows: list = []
        self.set_rows([])

    def set_rows(self, rows) -> None:
        self.rows = [r for r in rows if r.round is not None]  # objects painted by hand have no round
        self.set_panels([(title + ":", [float(getattr(r, name)) for r in self.rows], top if top is not None else 0.0)
                         for name, title, top in METRICS])


class ActivePanel(QGroupBox):
    """Suggestions (source, top-k, Rank, table: click to jump), automatic proposals; classes (picker,
    add, assign, label -> class table); effort per round (table + plot); Refresh and save/load."""

    def __init__(self, widget):
        super().__init__("Active learning")
        self.widget = widget
        self.actions = widget.active
        lay = QVBoxLayout(self)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._suggest_tab(), "Suggest")
        self.auto_tab = AutoTab(widget)
        self.tabs.addTab(self.auto_tab, "Automatic")
        self.tabs.addTab(self._classes_tab(), "Classes")
        self.tabs.addTab(self._effort_tab(), "Effort")
        lay.addWidget(self.tabs)
        row = QHBoxLayout()
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.setToolTip("Detect edits made by hand, update the class table and the effort per round")
        self.save_btn, self.load_btn = QPushButton("Save provenance..."), QPushButton("Load provenance...")
        for b in (self.refresh_btn, self.save_btn, self.load_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self._wire()
        self.refresh()

    def _suggest_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        form = QFormLayout()
        self.source_combo = QComboBox()
        for key, text in SOURCES.items():
            self.source_combo.addItem(text, key)
        self.topk_spin = QSpinBox()
        self.topk_spin.setRange(1, 500)
        self.topk_spin.setValue(10)
        self.all_check = QCheckBox("All open images")
        self.all_check.setToolTip("each open image with a Labels layer of its shape")
        form.addRow("Candidates", self.source_combo)
        form.addRow("Top k", self.topk_spin)
        lay.addLayout(form)
        lay.addWidget(self.all_check)
        self.rank_btn = QPushButton("Rank")
        lay.addWidget(self.rank_btn)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        self.table = _table(SUGGESTION_COLUMNS, 220)
        self.table.setToolTip("Click a row to go to its box")
        lay.addWidget(self.table)
        self.weights_label = QLabel(self.actions.weights_status)
        self.weights_label.setWordWrap(True)
        self.weights_label.setToolTip("The score weighs the confidence signals by what your own corrections show: "
                                      "which signals were low on the objects you had to fix")
        lay.addWidget(self.weights_label)
        self.propose_btn = QPushButton("Propose objects")
        self.propose_btn.setToolTip("Learn from the labelled objects, propose the objects of this image in "
                                    "a new layer 'MedSAM proposals' (your labels are not touched)")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("Stop ranking or proposing; nothing is changed")
        row = QHBoxLayout()
        row.addWidget(self.propose_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.propose_label = QLabel(self.actions.proposal_status)
        self.propose_label.setWordWrap(True)
        lay.addWidget(self.propose_label)
        return tab

    def _classes_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        form = QFormLayout()
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("New objects get this class")
        form.addRow("Class of new objects", self.class_combo)
        row = QHBoxLayout()
        self.class_edit, self.add_class_btn = QLineEdit(), QPushButton("Add class")
        self.class_edit.setPlaceholderText("new class name")
        row.addWidget(self.class_edit)
        row.addWidget(self.add_class_btn)
        form.addRow(row)
        lay.addLayout(form)
        self.assign_btn = QPushButton("Assign class to selected label")
        lay.addWidget(self.assign_btn)
        self.class_table = _table(("label", "class"), 160)
        lay.addWidget(self.class_table)
        return tab

    def _effort_tab(self) -> QWidget:
        tab = QWidget()
        lay = QVBoxLayout(tab)
        self.effort_table = _table(EFFORT_COLUMNS, 130)
        lay.addWidget(self.effort_table)
        self.effort_plot = EffortPlot()
        lay.addWidget(self.effort_plot)
        return tab

    def _wire(self) -> None:
        w, a = self.widget, self.actions
        self.rank_btn.clicked.connect(lambda: w.try_action(self._on_rank))
        self.table.cellClicked.connect(lambda row, _col: w.try_action(self._on_jump, row))
        self.propose_btn.clicked.connect(lambda: w.try_action(self._started, a.propose))
        self.cancel_btn.clicked.connect(a.cancel)
        self.add_class_btn.clicked.connect(lambda: w.try_action(self._on_add_class))
        self.class_edit.returnPressed.connect(lambda: w.try_action(self._on_add_class))
        self.class_combo.activated.connect(lambda _: w.try_action(self._on_class_chosen))
        self.assign_btn.clicked.connect(lambda: w.try_action(self._on_assign))
        self.refresh_btn.clicked.connect(lambda: w.try_action(self.refresh_all))
        self.save_btn.clicked.connect(lambda: w.try_action(self._on_save))
        self.load_btn.clicked.connect(lambda: w.try_action(self._on_load))
        a.on_progress = self._on_progress
        a.on_finished = self._on_finished
        a.on_changed = self.refresh
        # after the widget's own handlers (which may switch the labels layer)
        w.viewer.layers.events.inserted.connect(self._on_layers, position="last")
        w.viewer.layers.events.removed.connect(self._on_layers, position="last")
        w.labels_combo.activated.connect(lambda _: self.refresh())

    # -- handlers -------------------------------------------------------------------------------
    def _started(self, func, *args) -> None:
        self.rank_btn.setEnabled(False)
        self.propose_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first step
        try:
            func(*args)
        except MedSAMError:
            self._on_finished("error")
            raise

    def _on_rank(self) -> None:
        self._started(self.actions.rank, self.source_combo.currentData(), self.topk_spin.value(),
                      self.all_check.isChecked())

    def _on_jump(self, row: int) -> None:
        self.actions.jump(row)
        self.table.selectRow(row)
        self.refresh()

    def _on_add_class(self) -> None:
        self.actions.add_class(self.class_edit.text())
        self.class_edit.clear()
        self.refresh()

    def _on_class_chosen(self) -> None:
        self.actions.set_class(int(self.class_combo.currentData()))

    def _on_assign(self) -> None:
        self.actions.assign_selected()
        self.refresh()

    def _on_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Labels file the provenance belongs to", "labels.tif",
                                              "Labels (*.tif *.tiff *.nii *.nii.gz)")
        if path:
            out = self.actions.save_provenance(path)
            self.widget.show_status(f"MedSAM: provenance saved to {out}")

    def _on_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Labels file whose provenance to load", "",
                                              "Labels (*.tif *.tiff *.nii *.nii.gz)")
        if path:
            self.actions.load_provenance(path)
            self.refresh()

    def _on_layers(self, event=None) -> None:
        self.refresh()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(min(int(done), max(int(total), 1)))

    def _on_finished(self, what: str) -> None:
        self.rank_btn.setEnabled(True)
        self.propose_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if what not in ("error", "cancelled") else 0)
        if what == "ranked":
            self.show_suggestions()
        self.propose_label.setText(self.actions.proposal_status)
        self.refresh()

    # -- state -> view --------------------------------------------------------------------------
    def show_suggestions(self) -> None:
        rows = []
        for k, sug in enumerate(self.actions.suggestions, start=1):
            c = sug.components
            rows.append((k, "-" if sug.label is None else sug.label, str(sug.image_id), sug.z, sug.score,
                         *(c.get(name) for name in SUGGESTION_COLUMNS[5:])))
        _fill(self.table, rows)
        self.weights_label.setText(self.actions.weights_status)

    def refresh_all(self) -> None:
        """Detect edits (sync), then the class table and the effort per round."""
        rows = self.actions.effort()  # syncs first
        _fill(self.effort_table, [(r.round if r.round is not None else "by hand", r.objects, r.seconds_per_object,
                                   r.prompts_per_object, r.accepted_share, r.mean_dice) for r in rows])
        self.effort_plot.set_rows(rows)
        self.refresh()

    def refresh(self) -> None:
        """Class picker and label -> class table of the widget's labels layer (no sync: cheap)."""
        try:
            prov = self.actions.provenance()
        except MedSAMError:  # no labels layer yet
            self.class_combo.clear()
            _fill(self.class_table, [])
            return
        self.class_combo.clear()
        for cid, name in sorted(prov.classes.names.items()):
            self.class_combo.addItem(name, cid)
        self.class_combo.setCurrentIndex(self.class_combo.findData(prov.classes.default))
        _fill(self.class_table, self.actions.class_table())
