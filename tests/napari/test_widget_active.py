"""The Active learning panel on a real viewer with the real weights: ranked suggestions and the jump
to them (2D and 3D), classes and provenance of the objects the widget makes, edits by hand, the
sidecar through the npe2 writer and reader, effort per round, automatic proposals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import QPoint, Qt

from medsam_core.provenance import sidecar_path
from medsam_core.samples import nuclei
from napari_medsam._reader import EVENTS_KEY, PROV_KEY, napari_get_reader

from .conftest import big_objects, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
LEFT = Qt.MouseButton.LeftButton


def _done(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.active.running is None and not widget.runner.busy, timeout=300_000)
    assert widget.last_error is None


def _click_row(qtbot, table, row: int) -> None:
    rect = table.visualItemRect(table.item(row, 0))
    qtbot.mouseClick(table.viewport(), LEFT, pos=rect.center())


def _box_centre_world(box, scale=(1.0, 1.0)) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(y0 + y1) / 2 * scale[0], (x0 + x1) / 2 * scale[1]])


@pytest.fixture
def sample_viewer(open_widget):
    """The shipped 256 x 256 nuclei sample as the widget's image, embedding ready."""
    viewer, widget = open_widget()
    sample = nuclei()
    viewer.add_image(sample.image, name="nuclei")
    widget.wait(300_000)
    return viewer, widget, sample


def test_rank_labels_sorted_top_k_and_jump_to_a_row(open_widget, qtbot):
    viewer, widget = open_widget()
    sample = nuclei()
    labels = np.where(np.isin(sample.labels, big_objects(sample.labels, 12, min_area=60)), sample.labels, 0)
    viewer.add_image(sample.image, name="nuclei", scale=(0.5, 0.5))
    ref = viewer.add_labels(labels.astype(np.int32), name="reference", scale=(0.5, 0.5))
    widget.set_labels_layer(ref)
    viewer.add_image(np.ascontiguousarray(sample.image[:, ::-1]), name="other", scale=(0.5, 0.5))
    viewer.add_labels(np.ascontiguousarray(labels[:, ::-1]).astype(np.int32), name="other labels", scale=(0.5, 0.5))
    widget.wait(300_000)
    panel = widget.active_panel
    assert panel.source_combo.currentData() == "labels" and panel.topk_spin.value() == 10
    panel.topk_spin.setValue(15)  # of 2 x 12 objects: both images are in the list
    qtbot.mouseClick(panel.all_check, LEFT, pos=QPoint(8, panel.all_check.height() // 2))  # on its box
    assert panel.all_check.isChecked()
    qtbot.mouseClick(panel.rank_btn, LEFT)
    _done(widget, qtbot)

    sugg = widget.active.suggestions
    assert len(sugg) == 15 and panel.table.rowCount() == 15
    scores = [float(panel.table.item(r, 4).text()) for r in range(15)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert [s.score for s in sugg] == sorted((s.score for s in sugg), reverse=True)
    assert {s.image_id for s in sugg} == {"nuclei", "other"} and all(s.z is None for s in sugg)
    for s in sugg:  # every component in [0, 1], stability measured (n_jitter > 0), no previous model
        assert 0 <= s.components["iou_pred"] <= 1 and 0 <= s.components["stability"] <= 1
        assert "agreement" not in s.components
    mine = [k for k, s in enumerate(sugg) if s.image_id == "nuclei"]
    assert viewer.layers["MedSAM suggestions"].nshapes == len(mine)  # the current image's boxes
    before = np.array(viewer.scene.camera.center[-2:])

    row = next(k for k, s in enumerate(sugg) if s.image_id == "other")
    _click_row(qtbot, panel.table, row)  # another image: it becomes the widget's, with its labels
    assert widget.last_error is None
    assert widget.session.image_layer.name == "other" and widget.labels_layer.name == "other labels"
    centre = _box_centre_world(sugg[row].box, (0.5, 0.5))
    assert not np.allclose(before, centre)
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], centre, atol=1e-6)
    assert viewer.scene.camera.zoom > 2  # zoomed in on one nucleus (the whole image is 128 world units)

    row = mine[2]
    _click_row(qtbot, panel.table, row)  # back to the first image
    assert widget.session.image_layer.name == "nuclei" and widget.labels_layer is ref
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], _box_centre_world(sugg[row].box, (0.5, 0.5)),
                               atol=1e-6)
    layer = viewer.layers["MedSAM suggestions"]
    assert layer.nshapes == len(mine) and layer.selected_data == {2}
    np.testing.assert_allclose(layer.edge_color[2][:3], [0, 1, 1])  # highlighted: cyan
    assert viewer.layers.selection.active.name == "MedSAM boxes"  # new boxes still go there


def test_jump_in_a_3d_stack_goes_to_the_slice(open_widget, qtbot):
    viewer, widget = open_widget()
    sample = nuclei()
    ids = big_objects(sample.labels, 4)
    vol = np.stack([sample.image[::-1], sample.image])  # (2, 256, 256)
    lab = np.zeros(vol.shape, np.int32)
    lab[1] = np.where(np.isin(sample.labels, ids), sample.labels, 0)  # objects on slice 1 only
    viewer.add_image(vol, name="stack")
    ref = viewer.add_labels(lab, name="stack labels")
    widget.set_labels_layer(ref)
    viewer.dims.set_current_step(0, 0)
    widget.wait(300_000)
    panel = widget.active_panel
    panel.topk_spin.setValue(3)
    qtbot.mouseClick(panel.rank_btn, LEFT)
    _done(widget, qtbot)
    sugg = widget.active.suggestions
    assert len(sugg) == 3 and all(s.z == 1 for s in sugg)
    assert [panel.table.item(r, 3).text() for r in range(3)] == ["1"] * 3
    assert [panel.table.item(r, 1).text() for r in range(3)] == ["-" if s.label is None else str(s.label) for s in sugg]

    _click_row(qtbot, panel.table, 2)
    assert widget.last_error is None
    assert viewer.dims.current_step[0] == 1
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], _box_centre_world(sugg[2].box), atol=1e-6)
    shown = viewer.layers["MedSAM suggestions"]
    assert shown.nshapes == 3 and np.all(np.array([d[:, 0] for d in shown.data]) == 1)  # boxes on slice 1


def test_classes_provenance_of_new_objects_edits_and_undo(sample_viewer, qtbot):
    viewer, widget, sample = sample_viewer
    panel = widget.active_panel
    panel.tabs.setCurrentIndex(1)
    qtbot.keyClicks(panel.class_edit, "nucleus")
    qtbot.mouseClick(panel.add_class_btn, LEFT)
    assert panel.class_combo.currentText() == "nucleus"
    a_id, b_id = big_objects(sample.labels, 2)
    box = ref_box(sample.labels, a_id)
    (a,) = widget.segment_boxes([box])

    prov = widget.labels_layer.metadata[PROV_KEY]
    rec = prov[a]
    assert prov.classes.names[rec.class_id] == "nucleus"
    model = widget.session.model
    assert rec.model == model.spec.name == "lite_medsam" and rec.weights_sha256 == model.weights_sha256
    assert rec.round == 0 and not rec.edited_by_person
    assert [p.kind for p in rec.prompts] == ["box"] and rec.prompts[0].z is None
    np.testing.assert_allclose(rec.prompts[0].data, box)
    np.testing.assert_array_equal(prov.model_mask(a, sample.labels.shape), widget.labels_layer.data == a)
    assert rec.area == int((widget.labels_layer.data == a).sum()) > 50
    assert panel.class_table.rowCount() == 1 and panel.class_table.item(0, 1).text() == "nucleus"

    # a second object in the default class, then "assign to selected label" on the first
    idx = panel.class_combo.findText("object")
    panel.class_combo.setCurrentIndex(idx)
    panel.class_combo.activated.emit(idx)
    (b,) = widget.segment_boxes([ref_box(sample.labels, b_id)])
    assert prov.classes.names[prov[b].class_id] == "object"
    widget.labels_layer.selected_label = a
    qtbot.mouseClick(panel.assign_btn, LEFT)
    assert widget.last_error is None and prov.classes.names[prov[a].class_id] == "object"

    # a person paints over object a: Refresh (sync) flags it, b stays accepted
    yy, xx = np.nonzero(widget.labels_layer.data == a)
    widget.labels_layer.paint((int(yy.mean()), int(xx.mean())), 0, refresh=True)
    assert not prov[a].edited_by_person
    qtbot.mouseClick(panel.refresh_btn, LEFT)
    assert widget.last_error is None
    assert prov[a].edited_by_person and not prov[b].edited_by_person
    assert prov[a].area == int((widget.labels_layer.data == a).sum())

    widget.undo()  # the commit of b: its record goes with it
    assert b not in prov and a in prov and not (widget.labels_layer.data == b).any()


def test_writer_writes_the_sidecar_reader_reads_it_corrupt_sidecar_warns(sample_viewer, qtbot, tmp_path):
    viewer, widget, sample = sample_viewer
    ids = big_objects(sample.labels, 2)
    got = widget.segment_boxes([ref_box(sample.labels, i) for i in ids])
    lab = widget.labels_layer
    viewer.layers.selection.active = lab
    path = tmp_path / "labels.tif"
    viewer.layers.save(str(path), selected=True, plugin="napari-medsam")  # the npe2 labels writer
    side = sidecar_path(path)
    assert path.is_file() and side.is_file()

    [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "labels"
    np.testing.assert_array_equal(data, lab.data)
    back = kwargs["metadata"][PROV_KEY]
    assert back.to_dict() == lab.metadata[PROV_KEY].to_dict() and sorted(back.records) == sorted(got)
    events = [(e.time, e.kind, e.label) for e in lab.metadata[EVENTS_KEY]]
    assert {e[2] for e in events if e[1] == "commit"} == set(got)  # the effort log is saved too
    assert [(e.time, e.kind, e.label) for e in kwargs["metadata"][EVENTS_KEY]] == events
    [layer] = viewer.open(str(path), plugin="napari-medsam")  # through napari: a Labels layer with provenance
    assert isinstance(layer, Labels) and layer.metadata[PROV_KEY].to_dict() == back.to_dict()

    side.write_text('{"format": "napari-medsam-provenance", "version": 1, "classes": ')  # truncated
    with pytest.warns(UserWarning, match="without its provenance"):
        [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "labels" and PROV_KEY not in kwargs["metadata"]
    np.testing.assert_array_equal(data, lab.data)


def test_effort_table_has_one_row_per_round(sample_viewer, qtbot, lite_model, monkeypatch):
    viewer, widget, sample = sample_viewer
    a_id, b_id, c_id, d_id = big_objects(sample.labels, 4)
    widget.segment_boxes([ref_box(sample.labels, a_id)])  # base model: round 0
    tuned = copy.deepcopy(lite_model)
    tuned.meta = {**getattr(lite_model, "meta", {}), "round": 1}  # what the guard stamps on round 1
    widget.set_model(tuned)
    widget.segment_boxes([ref_box(sample.labels, b_id)])
    widget.segment_boxes([ref_box(sample.labels, c_id)])
    panel = widget.active_panel
    qtbot.mouseClick(panel.refresh_btn, LEFT)
    assert widget.last_error is None
    t = panel.effort_table
    assert t.rowCount() == 2
    assert [t.item(r, 0).text() for r in range(2)] == ["0", "1"]
    assert [t.item(r, 1).text() for r in range(2)] == ["1", "2"]
    assert [t.item(r, 4).text() for r in range(2)] == ["1.000", "1.000"]  # nothing edited
    assert [t.item(r, 5).text() for r in range(2)] == ["1.000", "1.000"]  # model mask == kept mask
    assert float(t.item(1, 3).text()) == 1.0  # one box per object
    assert all(len(panel.effort_plot.points(k)) == 2 for k in range(4))

    # a provenance failure warns and never costs the mask
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("medsam_core.provenance.Provenance.record_model_mask", broken)
    with pytest.warns(UserWarning, match="provenance not recorded"):
        (d,) = widget.segment_boxes([ref_box(sample.labels, d_id)])
    assert (widget.labels_layer.data == d).sum() > 50 and d not in widget.labels_layer.metadata[PROV_KEY]


def _nuclei_with_ten_labelled(open_widget):
    """A viewer with the nuclei image and a Labels layer "mine" holding 10 of its objects, encoded."""
    viewer, widget = open_widget()
    sample = nuclei()
    viewer.add_image(sample.image, name="nuclei")
    ids = big_objects(sample.labels, 10, min_area=60)
    ref = viewer.add_labels(np.where(np.isin(sample.labels, ids), sample.labels, 0).astype(np.int32), name="mine")
    widget.set_labels_layer(ref)
    widget.wait(300_000)
    return viewer, widget, ref


def test_propose_objects_new_layer_user_labels_untouched(open_widget, qtbot):
    viewer, widget, ref = _nuclei_with_ten_labelled(open_widget)
    before = ref.data.tobytes()
    n_layers = len(viewer.layers)
    qtbot.mouseClick(widget.active_panel.propose_btn, LEFT)
    _done(widget, qtbot)

    props = viewer.layers["MedSAM proposals"]
    assert isinstance(props, Labels) and props is not ref and len(viewer.layers) == n_layers + 1
    assert ref.data.tobytes() == before and widget.labels_layer is ref
    n = len(np.unique(props.data)) - 1
    assert 10 <= n <= 40  # the sample has 25 nuclei
    text = widget.active_panel.propose_label.text()
    assert f"{n} proposals" in text and "mean predicted IoU" in text


def test_cancel_propose_changes_nothing(open_widget, qtbot):
    """Issue 15: "Propose objects" has a Cancel; a cancel is a status line, no layer, no error."""
    viewer, widget, ref = _nuclei_with_ten_labelled(open_widget)
    names = [ly.name for ly in viewer.layers]
    panel = widget.active_panel
    assert not panel.cancel_btn.isEnabled()
    qtbot.mouseClick(panel.propose_btn, LEFT)
    assert panel.cancel_btn.isEnabled() and widget.active.running == "proposing"
    qtbot.mouseClick(panel.cancel_btn, LEFT)
    _done(widget, qtbot)  # no error either
    assert [ly.name for ly in viewer.layers] == names  # no "MedSAM proposals"
    assert "cancelled" in widget.status_label.text()
    assert panel.propose_btn.isEnabled() and not panel.cancel_btn.isEnabled()


def test_proposals_stay_with_the_image_they_were_made_for(open_widget, qtbot):
    """Another image picked while the proposals are computed: they are not laid over it (a message
    says what to do), and no proposals layer of the wrong geometry is left behind."""
    viewer, widget, ref = _nuclei_with_ten_labelled(open_widget)
    other = viewer.add_image(np.asarray(viewer.layers["nuclei"].data)[::-1].copy(), name="other")
    qtbot.mouseClick(widget.active_panel.propose_btn, LEFT)
    assert widget.active.running == "proposing"
    widget.set_image_layer(other)
    qtbot.waitUntil(lambda: widget.active.running is None and not widget.runner.busy, timeout=600_000)
    assert "the proposals for 'nuclei' were not shown" in widget.last_error
    assert "MedSAM proposals" not in [ly.name for ly in viewer.layers]
    assert not np.asarray(widget.labels_layer.data).any()


def _auto_done(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.active.auto.running is None and not widget.runner.busy, timeout=600_000)
    assert widget.last_error is None


def test_segment_everything_train_accept_object_by_object_and_cancel(open_widget, qtbot, tmp_path_factory):
    """Issue 19: Train the automatic head on 12 labelled nuclei, Segment everything into its own layer,
    accept one object (provenance "automatic, round 1") and all; Cancel is a status line, no error."""
    from dataclasses import replace

    from medsam_core.autoguard import with_post

    viewer, widget = open_widget()
    sample = nuclei()
    viewer.add_image(sample.image, name="nuclei")
    ids = big_objects(sample.labels, 12, min_area=60)
    mine = viewer.add_labels(np.where(np.isin(sample.labels, ids), sample.labels, 0).astype(np.int32), name="mine")
    widget.set_labels_layer(mine)
    widget.wait(300_000)
    tab, auto = widget.active_panel.auto_tab, widget.active.auto
    assert widget.active_panel.tabs.tabText(1) == "Automatic" and not tab.cancel_btn.isEnabled()
    qtbot.mouseClick(tab.segment_btn, LEFT)  # no head yet: a notification, nothing runs
    assert auto.running is None and tab.segment_btn.isEnabled() and "no automatic head" in widget.last_error
    widget.last_error = None
    auto.config = replace(auto.config, views=1)
    tab.epochs_spin.setValue(25)
    qtbot.mouseClick(tab.train_btn, LEFT)
    assert auto.running and tab.cancel_btn.isEnabled()
    _auto_done(widget, qtbot)
    assert "round 1: held-out F1" in tab.status_label.text()
    if auto.heads.active is None:  # the guard refused it: the person keeps it all the same
        qtbot.mouseClick(tab.keep_btn, LEFT)
    assert auto.heads.active is auto.heads.rounds[-1].head and auto.round == 1

    before = mine.data.copy()
    qtbot.mouseClick(tab.segment_btn, LEFT)
    _auto_done(widget, qtbot)
    layer = viewer.layers["MedSAM automatic"]
    assert layer is not mine and np.array_equal(mine.data, before)
    n = len(np.unique(layer.data)) - 1
    assert n >= 8 and f"{n} objects" in tab.status_label.text()

    layer.selected_label = int(np.unique(layer.data)[1])
    picked = layer.data == layer.selected_label
    qtbot.mouseClick(tab.accept_btn, LEFT)
    (lid,) = [k for k in np.unique(mine.data) if k not in np.unique(before)]
    assert not (layer.data == layer.selected_label).any()  # moved out of the automatic layer
    assert ((mine.data == lid) == (picked & (before == 0))).all()
    rec = mine.metadata[PROV_KEY].records[lid]
    assert rec.model == "automatic:lite_medsam" and rec.round == 1 and rec.prompts[0].kind == "box"
    in_layer = layer.data.copy()
    qtbot.mouseClick(tab.accept_all_btn, LEFT)
    assert not layer.data.any() and len(np.unique(mine.data)) > len(np.unique(before)) + 1
    widget.undo()  # one commit per accept: the last one goes back
    assert lid in np.unique(mine.data)
    np.testing.assert_array_equal(layer.data, in_layer)  # ... into the automatic layer (was: lost from both)
    qtbot.mouseClick(tab.accept_all_btn, LEFT)  # and can be accepted again
    assert not layer.data.any()

    names = [ly.name for ly in viewer.layers]
    layer_before = layer.data.copy()
    auto.heads.active = with_post(auto.heads.active, refine="decoder")  # a few steps to cancel between
    qtbot.mouseClick(tab.segment_btn, LEFT)
    qtbot.mouseClick(tab.cancel_btn, LEFT)
    _auto_done(widget, qtbot)
    assert "cancelled" in widget.status_label.text() and [ly.name for ly in viewer.layers] == names
    assert np.array_equal(layer.data, layer_before) and tab.segment_btn.isEnabled()

    # a checkpoint with another head, loaded later: its head serves (was: the first head stayed, unseen)
    from medsam_core import load_model
    from medsam_core.autoguard import save_with_model

    other_head = with_post(auto.heads.active, refine="head")
    other_head.meta = {**other_head.meta, "round": 7}
    path = save_with_model(tmp_path_factory.mktemp("ck") / "other.pt", widget.session.model, other_head)
    widget.set_model(load_model("lite_medsam", checkpoint=path))
    assert auto.heads.active is not None and auto.round == 7 and auto.heads.can_rollback
    assert "replaces the previous one" in tab.status_label.text(), tab.status_label.text()

    # the automatic objects belong to "nuclei": another image's labels never get them
    other = viewer.add_image(sample.image[::-1].copy(), name="other")
    widget.set_image_layer(other)
    other_labels = widget.labels_layer
    qtbot.mouseClick(tab.accept_all_btn, LEFT)
    assert "were made on 'nuclei', not on 'other'" in widget.last_error
    assert not np.asarray(other_labels.data).any() and other_labels is not mine


def test_automatic_tab_fits_a_1280_window(make_napari_viewer, qtbot, lite_model, tmp_path):
    """Every control of Active > Automatic is whole at 1280 x 800 (picture in tmp_path to look at)."""
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.set_model(lite_model)
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(1280, 800)
    widget.tabs.setCurrentIndex(next(i for i in range(widget.tabs.count()) if widget.tabs.tabText(i) == "Active"))
    widget.active_panel.tabs.setCurrentWidget(widget.active_panel.auto_tab)
    qtbot.wait(300)
    tab = widget.active_panel.auto_tab
    clipped = []
    for c in tab.findChildren(QAbstractButton) + tab.findChildren(QAbstractSpinBox):
        seen = c.visibleRegion().boundingRect()
        if c.isVisibleTo(widget) and seen.height() > 0 and seen.width() < c.width():
            clipped.append(c.text() if hasattr(c, "text") else type(c).__name__)
    win.grab().save(str(tmp_path / "automatic_1280.png"))
    assert not clipped, clipped


def test_automatic_objects_of_every_segmented_slice_can_be_accepted(open_widget):
    """A 3D stack segmented on z=1, then z=3: z=1's objects stayed visible but "no such object" was
    all Accept said there (only the last slice counted)."""
    from medsam_core.auto import Proposals

    viewer, widget = open_widget()
    vol = np.random.default_rng(0).integers(0, 50, (5, 40, 40)).astype(np.uint16)
    image = viewer.add_image(vol, name="stack")
    auto = widget.active.auto
    for z, (y, x) in ((1, (5, 5)), (3, (20, 22))):
        viewer.dims.set_current_step(0, z)
        m = np.zeros((1, 40, 40), bool)
        m[0, y:y + 8, x:x + 9] = True
        auto._on_segmented(Proposals(m, np.array([[x, y, x + 8, y + 7]], float), np.ones(1)), image,
                           widget.session.current_plane())
    viewer.dims.set_current_step(0, 1)  # back to the first slice segmented
    (lid,) = auto.accept_all()
    assert np.flatnonzero((widget.labels_layer.data == lid).any(axis=(1, 2))).tolist() == [1]
    rec = provenance_of_layer(widget.labels_layer).records[lid]
    assert rec.prompts[0].z == 1 and list(rec.prompts[0].data[:2]) == [5.0, 5.0]
    viewer.dims.set_current_step(0, 3)
    assert len(auto.accept_all()) == 1
    assert not auto.layer().data.any()


def provenance_of_layer(layer):
    return layer.metadata[PROV_KEY]
