"""The "Image series" section of the MedSAM widget: layout and wiring over _series_session.SeriesActions."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QPushButton

SERIES_SHORTCUTS = (  # (napari key, Qt key, action, widget method)
    ("PageDown", "PgDown", "save the labels and show the next image of the series", "next_image"),
    ("PageUp", "PgUp", "save the labels and show the previous image of the series", "previous_image"),
)


class SeriesPanel(QGroupBox):
    """Input folder, output folder, Open; image list (done images marked); Previous / Next."""

    def __init__(self, widget):
        super().__init__("Image series")
        self.widget = widget
        form = QFormLayout(self)
        self.folder_edit, self.out_edit = QLineEdit(), QLineEdit()
        self.out_edit.setPlaceholderText("labels go here (never the image folder)")
        for label, edit in (("Images", self.folder_edit), ("Output", self.out_edit)):
            row = QHBoxLayout()
            btn = QPushButton("...")
            btn.clicked.connect(lambda _=False, e=edit: self._browse(e))
            row.addWidget(edit)
            row.addWidget(btn)
            form.addRow(label, row)
        self.open_btn = QPushButton("Open series (resume)")
        self.image_combo = QComboBox()
        self.prev_btn, self.next_btn = QPushButton("< Previous (PgUp)"), QPushButton("Next (PgDown) >")
        row = QHBoxLayout()
        row.addWidget(self.prev_btn)
        row.addWidget(self.next_btn)
        form.addRow(self.open_btn)
        form.addRow("Image", self.image_combo)
        form.addRow(row)
        self.open_btn.clicked.connect(lambda: widget.try_action(self._on_open))
        self.prev_btn.clicked.connect(lambda: widget.try_action(widget.previous_image))
        self.next_btn.clicked.connect(lambda: widget.try_action(widget.next_image))
        self.image_combo.activated.connect(lambda i: widget.try_action(widget.go_image, i))

    def _browse(self, edit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder", edit.text())
        if path:
            edit.setText(path)

    def _on_open(self) -> None:
        self.widget.open_series(self.folder_edit.text().strip(), self.out_edit.text().strip())

    def refresh(self) -> None:
        series = self.widget.series.series
        if series is None:
            return
        self.image_combo.clear()
        self.image_combo.addItems([("\u2713 " if done else "   ") + name for name, done in self.widget.series.status()])
        self.image_combo.setCurrentIndex(series.index)
