"""The fine-tune panel on a real viewer with the real weights: a guarded round in a worker,
Use anyway / Roll back, save and load, cancel after the first step, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from medsam_core import MedSAMError
from medsam_core.samples import nuclei

from .conftest import big_objects, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
LEFT = Qt.MouseButton.LeftButton


def _few_objects() -> tuple[np.ndarray, np.ndarray]:
    """The shipped sample with 6 of its objects labelled (1 epoch = 1 step: a tiny CPU job)."""
    sample = nuclei()
    ids = big_objects(sample.labels, 6, min_area=60)
    assert len(ids) == 6
    labels = np.where(np.isin(sample.labels, ids), sample.labels, 0).astype(np.int32)
    return sample.image, labels


@pytest.fixture
def trained_viewer(open_widget):
    viewer, widget = open_widget()
    image, labels = _few_objects()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="reference")
    widget.wait(300_000)  # the prefetch of the image's embedding
    return viewer, widget


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_finetune_guard_use_anyway_rollback_save_load(trained_viewer, qtbot, tmp_path):
    viewer, widget = trained_viewer
    panel = widget.train_panel
    base = widget.session.model
    base_sha = base.weights_sha256
    panel.image_combo.setCurrentText("nuclei")
    panel.labels_combo.setCurrentText("reference")
    panel.epochs_spin.setValue(1)
    panel.holdout_spin.setValue(0.35)
    assert panel.mode_combo.currentText() == "decoder"
    qtbot.mouseClick(panel.train_btn, LEFT)  # Qt.LeftButton: the real worker, not the synchronous runner
    qtbot.waitUntil(lambda: not widget.train.running and not widget.runner.busy, timeout=300_000)
    assert widget.last_error is None

    rnd = widget.train.last_round
    assert rnd is not None and rnd.result.steps >= 1
    assert panel.progress.maximum() == rnd.result.steps and panel.progress.value() == panel.progress.maximum()
    assert len(panel.loss_plot.losses) == rnd.result.steps and len(panel.loss_plot.points()) == rnd.result.steps
    text = panel.result_label.text()
    assert f"{rnd.dice_active:.3f} -> {rnd.result.dice_after:.3f}" in text and "held-out Dice" in text
    assert rnd.accepted == (rnd.result.dice_after > rnd.dice_active)  # the guard decided
    if rnd.accepted:
        assert widget.session.model is rnd.model and widget.session.model.weights_sha256 != base_sha
        assert "accepted" in text and not panel.force_btn.isEnabled()
    else:
        assert widget.session.model is base and widget.session.model.weights_sha256 == base_sha
        assert "refused" in text and panel.force_btn.isEnabled() and not panel.rollback_btn.isEnabled()
        qtbot.mouseClick(panel.force_btn, LEFT)  # "Use anyway"
        assert widget.last_error is None
    new = widget.session.model
    assert new is rnd.model and new.weights_sha256 != base_sha and new.encoder_id == base.encoder_id
    widget_sides = dict(widget.train.guard.sides)  # the split this round used
    assert widget.session.predictor.model is new  # the next boxes use it ...
    image, labels = _few_objects()
    obj = big_objects(labels, 1, min_area=60)[0]
    (lid,) = widget.segment_boxes([ref_box(labels, obj)])
    assert widget.labels_layer.data.max() == lid
    assert widget.session.encoder_calls == 0  # ... with the cached embedding (decoder mode keeps the encoder)

    path = widget.save_model(tmp_path / "tuned.pt")
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))
    assert panel.rollback_btn.isEnabled()
    qtbot.mouseClick(panel.rollback_btn, LEFT)
    assert widget.session.model is base and widget.session.model.weights_sha256 == base_sha
    assert widget.session.predictor.model is base and not panel.rollback_btn.isEnabled()
    with pytest.raises(MedSAMError, match="nothing to roll back"):
        widget.rollback_model()

    widget.load_model("lite_medsam", path)  # what "Load model..." does with the chosen file
    loaded = widget.session.model
    assert _same_weights(loaded, new) and loaded.meta["round"] == 1 and "dice_after" in loaded.meta
    assert loaded.weights_sha256 == new.weights_sha256  # one identity in provenance, saved or not
    # day 2 continues from the loaded round: its number goes on, and it holds out the same objects
    guard = widget.train._guard()
    assert guard.first_round == 2 and guard.sides and guard.sides == widget_sides


def test_cancel_after_first_step_and_bad_input(trained_viewer, qtbot):
    viewer, widget = trained_viewer
    widget.runner.synchronous = True
    panel = widget.train_panel
    model, sha = widget.session.model, widget.session.model.weights_sha256
    show_progress, steps = widget.train.on_progress, []

    def cancel_after_first(step, total, loss):
        show_progress(step, total, loss)
        steps.append(step)
        widget.cancel_finetune()

    widget.train.on_progress = cancel_after_first
    widget.finetune([("nuclei", "reference")], "decoder", epochs=3, holdout=0.35)
    assert steps == [1]  # stopped right after the first step
    assert widget.session.model is model and model.weights_sha256 == sha
    assert widget.train.guard.rounds == [] and not widget.train.running
    assert "cancelled" in panel.result_label.text() and panel.train_btn.isEnabled()
    assert widget.last_error is None  # a cancel is not an error
    widget.train.on_progress = show_progress

    empty = viewer.add_labels(np.zeros((256, 256), np.int32), name="empty")
    names, data = [ly.name for ly in viewer.layers], {ly.name: np.array(ly.data) for ly in viewer.layers}
    with pytest.raises(MedSAMError, match="no objects"):
        widget.finetune([("nuclei", empty)], epochs=1)
    panel.image_combo.setCurrentText("nuclei")
    panel.labels_combo.setCurrentText("empty")
    qtbot.mouseClick(panel.train_btn, LEFT)  # the button shows the same error as a notification
    assert "no objects" in widget.last_error
    assert widget.session.model is model and model.weights_sha256 == sha
    assert [ly.name for ly in viewer.layers] == names
    for ly in viewer.layers:
        np.testing.assert_array_equal(ly.data, data[ly.name])
    assert panel.train_btn.isEnabled() and not widget.train.running
