"""The MedSAM widget's public methods for the tab workflows (3D, series, fine-tune): each validates
through its session action class (``widget.volume``, ``widget.series``, ``widget.train``), then
updates its panel. Mixed into ``_widget.MedSAMWidget``; scripts call them on the widget."""

from __future__ import annotations

from medsam_core import MedSAMError


class WorkflowMethods:
    """3D stacks, image series and fine-tuning, as the MedSAM widget's public methods."""

    def segment_3d(self, box=None, z: int | None = None) -> None:
        """Segment the selected box (or (4,) XYXY ``box`` on slice ``z``) through the 3D stack, from its
        slice, in the background (``wait()`` for it); one label id, one undo step. A box on another
        slice over a 3D object (or with the key-box toggle) becomes that object's key box."""
        self.volume_panel.started()
        try:
            if box is None:
                self.volume.segment_3d()
            else:
                self.volume.segment_box_3d(box, z)
        except MedSAMError:
            self.volume_panel.finished("error")
            raise

    def cancel_3d(self) -> None:
        """Cancel the running 3D segmentation or precompute: labels stay as they were."""
        self.volume.cancel()

    def precompute_volume(self) -> None:
        """Encode every slice of the 3D image into the embedding cache in the background."""
        self.volume_panel.started()
        try:
            self.volume.precompute()
        except MedSAMError:
            self.volume_panel.finished("error")
            raise

    def recist_lines_layer(self):
        """The "MedSAM lines" Shapes layer, active in line mode: each line drawn is a RECIST prompt."""
        layer = self.volume.lines_layer()
        self._bind_layer_keys(layer)
        return layer

    def segment_recist(self, long_axis, short_axis=None, z: int | None = None) -> int:
        """RECIST ((2, 2) XY pixel line(s)) -> box -> 2D object on slice ``z``; returns its label id."""
        return self.volume.segment_recist(long_axis, short_axis, z)

    def open_series(self, folder, out_dir, resume: bool = True) -> int:
        """Annotate the images of ``folder`` one by one, labels saved to ``out_dir`` (never ``folder``);
        shows the first image without labels (``resume``). Returns its index."""
        i = self.series.open(folder, out_dir, resume)
        self.series_panel.refresh()
        return i

    def next_image(self) -> int | None:
        """Save the labels (atomically, when there are any) and show the next image; None at the end."""
        return self._series_move(self.series.next)

    def previous_image(self) -> int | None:
        """Save the labels and show the previous image; None at the start."""
        return self._series_move(self.series.previous)

    def go_image(self, i: int) -> int:
        """Save the labels and show image ``i`` of the series."""
        return self._series_move(self.series.go, i)

    def _series_move(self, move, *args):
        out = move(*args)
        self.series_panel.refresh()
        return out

    def add_training_pair(self, image, labels) -> int:
        """Add an (image, labels) layer pair (layers or names) to the fine-tune list; returns its length."""
        n = self.train.add_pair(image, labels)
        self.train_panel.refresh()
        return n

    def remove_training_pair(self, index: int) -> None:
        self.train.remove_pair(index)
        self.train_panel.refresh()

    def finetune(self, pairs=None, mode: str = "decoder", epochs: int = 20, holdout: float = 0.25,
                 start: str = "base", force: bool = False) -> None:
        """Fine-tune on [(image layer, labels layer), ...] (layers or names; None: the panel's list)
        in the background (``wait()`` for it). mode: decoder | lora | full. The new model serves the
        next boxes only if its held-out Dice beats the active model's (or ``force``); the result
        is in ``train.last_round`` and the panel. Bad input raises before anything runs."""
        self.train_panel.started()
        try:
            self.train.start(pairs, mode, epochs, holdout, start, force)
        except MedSAMError:
            self.train_panel.refresh()
            raise

    def cancel_finetune(self) -> None:
        """Stop the running fine-tuning round; the active model is untouched."""
        self.train.cancel()

    def accept_model(self):
        """Use the last refused round's model anyway ("Use anyway"); returns it."""
        model = self.train.use_anyway()
        self.train_panel.refresh()
        return model

    def rollback_model(self):
        """Serve the model that was active before the last accepted round again; returns it."""
        model = self.train.rollback()
        self.train_panel.refresh()
        return model

    def save_model(self, path):
        """Write the active model as a checkpoint with its metadata, atomically; returns the path."""
        return self.train.save(path)
