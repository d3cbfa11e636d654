"""Segment in 3D, key boxes, cancel, RECIST lines: the real widget, the real LiteMedSAM, real cells3d nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import dice, rect, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT = 600_000  # ms: a loaded 2-core CPU encodes a slice in seconds; correctness, not speed, is tested
NUCLEUS = 8  # a whole cells3d nucleus inside the crop below
CROP = (slice(29, 39), slice(10, 138), slice(60, 188))  # 10 slices of 128 x 128


@pytest.fixture
def stack(cells3d):
    image, labels, spacing = cells3d
    return np.ascontiguousarray(image[CROP]), labels[CROP] == NUCLEUS, spacing


def test_segment_3d_in_a_worker_then_undo(open_widget, qtbot, stack):
    vol, ref, spacing = stack
    viewer, widget = open_widget()
    viewer.add_image(vol, scale=spacing)
    z = 5
    widget.set_overwrite(False)
    before = widget.labels_layer.data.copy()
    bar = widget.volume_panel.progress
    shown, on_progress = [], widget.volume.on_progress
    widget.volume.on_progress = lambda done, total: (on_progress(done, total), shown.append(bar.format()))
    widget.segment_3d(ref_box(ref[z], True), z=z)
    assert widget.volume.running and widget.volume_panel.cancel_btn.isEnabled()
    widget.wait(WAIT)
    # the bar moves while the extent prior's two planes are encoded, and says so; then it counts slices
    assert shown[1].startswith("reading the depth: orthogonal plane 1 of 2"), shown
    assert shown[2].startswith("reading the depth: orthogonal plane 2 of 2"), shown
    assert shown[0].startswith("1 of ~") and shown[3].startswith("2 of ~"), shown
    labels = widget.labels_layer.data
    assert not widget.volume.running
    assert set(np.unique(labels)) == {0, 1}  # one 3D label id
    slices = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    assert len(slices) >= 8  # the whole nucleus, not just the start slice
    d = dice(labels == 1, ref)
    assert d >= 0.85, d  # measured 0.93 on this crop; the core gets 0.93 on the full 30-slice nucleus
    # done: the slices the walk kept (its own count, not the last guess of the total)
    assert bar.value() == bar.maximum() > 1 and bar.format() == f"{len(slices)} slices, done", bar.format()
    assert int(widget.shapes_layer.features["label_id"].iloc[-1]) == 1
    # why the walk stopped, per direction, with the slice, and a button that shows that slice
    stops = widget.volume.stops(1)
    rows = widget.volume_panel.stops.rows
    assert [label.text() for label, _ in rows] == [f"object 1 {d}: {stops[d]}" for d in ("up", "down")]
    assert all(" at slice " in label.text() for label, _ in rows)
    for (_, button), d in zip(rows, ("up", "down"), strict=True):
        assert button.text() == f"Go to {stops[d].slice}"
        button.click()
        assert viewer.dims.current_step[0] == stops[d].slice
    n_walked = widget.volume.results[1][0].rewalked
    # a box on another slice over the object becomes its key box; re-running uses both
    widget.segment_3d(ref_box(ref[2], True), z=2)
    widget.wait(WAIT)
    ids = widget.shapes_layer.features["label_id"].to_numpy()
    assert sorted(ids.tolist()) == [-1, 1]
    # the key box lies below the start slice: only the down side was walked again, the rest kept
    fixed = widget.volume.results[1][0]
    assert fixed.start == z and 2 in fixed.keys and 0 < fixed.rewalked < n_walked
    assert fixed.stops["up"] == stops["up"]  # the up side was kept, with its stop
    assert [label.text() for label, _ in widget.volume_panel.stops.rows] == [
        f"object 1 {d}: {fixed.stops[d]}" for d in ("up", "down")]
    assert set(np.unique(widget.labels_layer.data)) == {0, 1}
    assert dice(widget.labels_layer.data == 1, ref) >= 0.85
    assert len(widget.session.history) == 2
    widget.undo()  # the key-box run
    assert widget.shapes_layer.features["label_id"].tolist() == [1]
    widget.undo()  # the whole 3D object at once
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert widget.shapes_layer.nshapes == 0


def test_cancel_leaves_labels_untouched(open_widget, stack):
    vol, ref, spacing = stack
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(vol, scale=spacing)
    widget.labels_layer.data[0, :4, :4] = 7  # a user's own label must survive
    before = widget.labels_layer.data.copy()
    steps = []

    def cancel_after_first(done, total):  # the cancel hook: the user presses Cancel mid-walk
        steps.append(done)
        widget.cancel_3d()

    widget.volume.on_progress = cancel_after_first
    widget.segment_3d(ref_box(ref[5], True), z=5)
    assert steps == [1]  # the walk started, then stopped at the next slice
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert widget.session.history == [] and widget.shapes_layer.nshapes == 0
    assert "cancelled" in widget.status_label.text()
    assert not widget.volume.running and widget.volume_panel.segment_btn.isEnabled()


def test_recist_line_gives_an_object(open_widget, stack):
    vol, ref, spacing = stack
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(vol)
    z = 5
    viewer.dims.set_current_step(0, z)
    yy, xx = np.nonzero(ref[z])
    # the long axis: the nucleus' extreme points along its wider direction
    if np.ptp(xx) >= np.ptp(yy):
        y_mid = int(np.median(yy))
        row = np.flatnonzero(ref[z, y_mid])
        line = np.array([[z, y_mid, row[0]], [z, y_mid, row[-1]]], float)
    else:
        x_mid = int(np.median(xx))
        col = np.flatnonzero(ref[z, :, x_mid])
        line = np.array([[z, col[0], x_mid], [z, col[-1], x_mid]], float)
    lines = widget.recist_lines_layer()
    # napari hands plugins proxies of layers: compare by name, not identity
    assert str(lines.mode) == "add_line" and viewer.layers.selection.active.name == lines.name
    lines.add([line], shape_type="line")  # as drawn by the user
    labels = widget.labels_layer.data
    assert np.flatnonzero((labels > 0).any(axis=(1, 2))).tolist() == [z]
    d = dice(labels[z] == 1, ref[z])
    assert d >= 0.8, d


def test_synthetic_ball_stops_shown_with_go_to_buttons(open_widget):
    """A bright ball in a small synthetic stack (9 slices of 64 x 64): the walk covers the ball and
    the panel shows each direction's stop as the API returns it, with a button to its slice."""
    zz, yy, xx = np.ogrid[:9, :64, :64]
    ball = ((zz - 4) / 3.5) ** 2 + ((yy - 32) / 14) ** 2 + ((xx - 32) / 14) ** 2 <= 1
    vol = np.where(ball, 1800, 300).astype(np.uint16)
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    viewer.add_image(vol)
    widget.segment_3d(ref_box(ball[4], True), z=4)
    labels = widget.labels_layer.data
    assert dice(labels == 1, ball) >= 0.8
    stops = widget.volume.stops(1)
    assert set(stops) == {"up", "down"} and stops["up"].slice > 4 > stops["down"].slice
    rows = widget.volume_panel.stops.rows
    assert [label.text() for label, _ in rows] == [f"object 1 {d}: {stops[d]}" for d in ("up", "down")]
    for (_, button), d in zip(rows, ("up", "down"), strict=True):
        button.click()
        assert viewer.dims.current_step[0] == stops[d].slice


@pytest.mark.parametrize("edit", ["delete an earlier box", "remove the labels layer", "pick another image"])
def test_edits_during_a_walk_never_write_it_against_other_boxes_or_layers(open_widget, edit):
    """A walk takes seconds to minutes; meanwhile a person may delete another box, remove the labels
    layer or pick another image. The finished walk lands on its own box (the other objects keep
    their ids), or is not written at all, with a message saying why and what to do."""
    zz, yy, xx = np.ogrid[:9, :64, :128]
    a = ((zz - 4) / 3.5) ** 2 + ((yy - 32) / 12) ** 2 + ((xx - 32) / 12) ** 2 <= 1
    b = ((zz - 4) / 3.5) ** 2 + ((yy - 32) / 12) ** 2 + ((xx - 96) / 12) ** 2 <= 1
    vol = np.where(a | b, 1800, 300).astype(np.uint16)
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    image = viewer.add_image(vol, name="balls")
    other = viewer.add_image(vol[:, :, ::-1].copy(), name="other")
    widget.set_image_layer(image)
    labels = widget.labels_layer
    widget.shapes_layer.add([rect(ref_box(a[4], True), (4,)), rect(ref_box(b[4], True), (4,))],
                            shape_type="rectangle")  # two 2D objects on slice 4: ids 1 (a) and 2 (b)
    assert widget.shapes_layer.features["label_id"].tolist() == [1, 2]
    progress = widget.volume.on_progress

    def interfere(done, total):  # the person acts while the walk runs (after its first slice)
        progress(done, total)
        if done == 1:
            if edit == "delete an earlier box":
                widget.shapes_layer.selected_data = {0}
                widget.shapes_layer.remove_selected()  # object 1 goes; the walked box moves to index 0
            elif edit == "remove the labels layer":
                viewer.layers.remove(labels)
            else:
                widget.set_image_layer(other)

    widget.volume.on_progress = interfere
    widget.shapes_layer.selected_data = {1}
    widget.segment_3d()  # object 2 (ball b) through the stack
    if edit == "delete an earlier box":
        assert widget.shapes_layer.features["label_id"].tolist() == [2]
        assert set(np.unique(labels.data)) == {0, 2}  # object 1 went with its box; b is now 3D
        assert dice(labels.data == 2, b) >= 0.8
        assert (labels.data == 2).any(axis=(1, 2)).sum() >= 5
        assert widget.last_error is None
        return
    assert "was not written" in widget.last_error
    if edit == "remove the labels layer":
        assert "labels layer 'MedSAM labels' was removed" in widget.last_error
        assert labels not in viewer.layers and (labels.data == 2).any(axis=(1, 2)).sum() == 1  # not written
    else:
        assert "pick 'balls' again" in widget.last_error
        assert (labels.data == 2).any(axis=(1, 2)).sum() == 1  # the first image's labels: only the 2D box
        assert not widget.labels_layer.data.any() and widget.session.history == []
    assert not widget.volume.running and widget.volume_panel.segment_btn.isEnabled()


def test_each_image_keeps_its_3d_objects_stops_and_undo_steps(open_widget):
    """Two stacks, one 3D object each (both label 1, in their own labels layers): going back to the
    first finds its box, its walk's stop reasons (not the other image's) and its undo step."""
    zz, yy, xx = np.ogrid[:9, :64, :64]
    ball = ((zz - 4) / 3.5) ** 2 + ((yy - 32) / 14) ** 2 + ((xx - 32) / 14) ** 2 <= 1
    small = ((zz - 4) / 2.0) ** 2 + ((yy - 32) / 10) ** 2 + ((xx - 32) / 10) ** 2 <= 1
    viewer, widget = open_widget()
    widget.runner.synchronous = True
    first = viewer.add_image(np.where(ball, 1800, 300).astype(np.uint16), name="first")
    second = viewer.add_image(np.where(small, 1800, 300).astype(np.uint16), name="second")
    widget.set_image_layer(first)
    widget.segment_3d(ref_box(ball[4], True), z=4)
    first_labels, first_stops = widget.labels_layer, widget.volume.stops(1)
    widget.set_image_layer(second)
    assert widget.volume.stops(1) == {} and widget.shapes_layer.nshapes == 0
    widget.segment_3d(ref_box(small[4], True), z=4)
    second_stops = widget.volume.stops(1)
    assert second_stops != first_stops  # a shorter object: other stops
    widget.set_image_layer(first)
    assert widget.labels_layer is first_labels and widget.volume.stops(1) == first_stops
    assert widget.shapes_layer.features["label_id"].tolist() == [1]
    assert [label.text() for label, _ in widget.volume_panel.stops.rows] == [
        f"object 1 {d}: {first_stops[d]}" for d in ("up", "down")]
    widget.undo()
    assert not np.asarray(first_labels.data).any() and widget.shapes_layer.nshapes == 0


def test_2d_box_on_a_slice_takes_the_volume_window_and_the_walks_embedding(open_widget, stack):
    """A box drawn on one slice of a 3D image is normalised with the volume's window, as the 3D walk
    and "Precompute all slices" are (MedSAM's rule for 3D data): after a walk, a 2D box on a walked
    slice costs no encode, and its mask is the scripting API's for that box under the volume's window."""
    import medsam_core
    from medsam_core import Intensity, volume_intensity

    vol, ref, spacing = stack
    viewer, widget = open_widget()
    viewer.add_image(vol, scale=spacing)
    z = 5
    widget.segment_3d(ref_box(ref[z], True), z=z)
    widget.wait(WAIT)
    s = widget.session
    walked = widget.volume.results[1][0]
    y = next(k for k in sorted(walked.masks) if k != z)  # another slice the walk encoded
    window = volume_intensity(vol, Intensity())
    assert s.model_intensity(s.plane_image(s.plane_at(y))) == window  # not the slice's own percentiles
    calls = s.encoder_calls
    viewer.dims.set_current_step(0, y)
    widget.wait(WAIT)
    box = ref_box(ref[y], True)
    widget.set_overwrite(True)  # the new object takes its pixels from the 3D one, to compare it whole
    widget.shapes_layer.add([rect(box, lead=(y,))], shape_type="rectangle")
    widget.wait(WAIT)
    assert s.encoder_calls == calls  # the walk's embedding of that slice, same window, no encode
    mine = widget.labels_layer.data[y] == 2
    pred = medsam_core.Predictor(s.model, cache=s.cache)
    api = medsam_core.predict_boxes(pred, vol[y], box[None], mode="whole", intensity=window)[0]
    assert pred.encoder_calls == 0 and mine.any()
    np.testing.assert_array_equal(mine, api.full(mine.shape))
