"""The Suggest tab ranks with weights fitted on the user's own corrections (real viewer, real weights):
the default weights while fewer than MIN_CORRECTIONS objects made by the model are kept, fitted
ones after; the tab says which; progress per plane; Cancel changes nothing."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt

from medsam_core.active import Weights, combine
from medsam_core.samples import nuclei
from medsam_core.signals import MIN_CORRECTIONS, weights_from_corrections
from napari_medsam._reader import PROV_KEY

from .conftest import big_objects, dice, ref_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]
LEFT = Qt.MouseButton.LeftButton


def _rank(widget, qtbot, calls) -> None:
    calls.clear()
    qtbot.mouseClick(widget.active_panel.rank_btn, LEFT)
    qtbot.waitUntil(lambda: widget.active.running is None and not widget.runner.busy, timeout=600_000)
    assert widget.last_error is None


def test_suggest_tab_ranks_with_weights_fitted_on_the_users_corrections(open_widget, qtbot):
    viewer, widget = open_widget()
    sample = nuclei()
    viewer.add_image(sample.image, name="nuclei")
    widget.wait(300_000)
    panel, active = widget.active_panel, widget.active
    assert f"once {MIN_CORRECTIONS} objects" in panel.weights_label.text()
    calls = []
    shown = active.on_progress
    active.on_progress = lambda done, total: (calls.append((done, total)), shown(done, total))
    ids = big_objects(sample.labels, 12, min_area=60)

    few = widget.segment_boxes([ref_box(sample.labels, i, pad=4) for i in ids[:5]])
    _rank(widget, qtbot, calls)
    assert calls == [(1, 2), (2, 2)]  # the corrections' plane, then the candidates' plane
    assert not active.ranking.weights.fitted and active.ranking.weights.weights == Weights()
    assert f"5 of {MIN_CORRECTIONS} corrections" in panel.weights_label.text()
    assert active.ranking.signals == ("flip", "contrast")  # no automatic head trained
    for s in active.suggestions:
        assert s.score == pytest.approx(combine(s.components, Weights()))

    made = few + widget.segment_boxes([ref_box(sample.labels, i, pad=4) for i in ids[5:]])
    lab = widget.labels_layer
    prov = lab.metadata[PROV_KEY]
    data = lab.data
    for lid, ref in zip(made, ids, strict=True):  # the person corrects every object to the reference outline
        data[data == lid] = 0
        data[(sample.labels == ref) & (data == 0)] = lid
    lab.refresh()
    kept = {lid: dice(prov.model_mask(lid, data.shape), data == lid) for lid in made}
    assert min(kept.values()) < 0.95  # real corrections, not all accepted as they were

    _rank(widget, qtbot, calls)
    assert calls == [(1, 2), (2, 2)]
    fw = active.ranking.weights
    assert fw.fitted and fw.n == len(made) == 12 and fw.weights != Weights()
    assert f"fitted on {len(made)} corrections" in panel.weights_label.text()
    # the weights are the fit of the measured components on the Dice of the user's corrections
    by_label = {key[2]: comp for key, comp in active.measured.items()}
    expect = weights_from_corrections([by_label[lid] for lid in made], [kept[lid] for lid in made])
    assert expect.fitted and vars(fw.weights) == pytest.approx(vars(expect.weights))
    sugg = active.suggestions
    assert [s.score for s in sugg] == sorted((s.score for s in sugg), reverse=True)
    for s in sugg:
        assert s.score == pytest.approx(combine(s.components, fw.weights))
        assert {"flip", "contrast"} <= set(s.components)
    assert max(abs(s.score - combine(s.components, Weights())) for s in sugg) > 1e-3  # not the defaults
    assert panel.table.rowCount() == len(sugg) and panel.table.item(0, 9).text() != "-"  # the contrast column

    # Cancel: nothing changes (the suggestions and the weights of the last ranking stay)
    before, ranking = list(sugg), active.ranking
    qtbot.mouseClick(panel.rank_btn, LEFT)
    qtbot.mouseClick(panel.cancel_btn, LEFT)
    qtbot.waitUntil(lambda: active.running is None and not widget.runner.busy, timeout=600_000)
    assert widget.last_error is None
    assert active.ranking is ranking and active.suggestions == before and "cancelled" in widget.status_label.text()
    assert panel.rank_btn.isEnabled() and not panel.cancel_btn.isEnabled()

    # with an automatic head for this encoder, its agreement is one more signal (measured and fitted)
    import torch

    from medsam_core.autoguard import HeadSession
    from medsam_core.autohead import AutoHead, PostParams, build_head

    torch.manual_seed(0)
    active.auto.heads = HeadSession(AutoHead(build_head(), PostParams(), widget.session.model.encoder_id))
    _rank(widget, qtbot, calls)
    assert active.ranking.signals == ("flip", "contrast", "head") and active.ranking.weights.fitted
    assert all(0 <= s.components["head"] <= 1 for s in active.suggestions)
    assert "head" in panel.weights_label.text()
