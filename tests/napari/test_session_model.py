"""The Qt-free Session on napari.components.ViewerModel with synchronous work (no Xvfb, no QWidget):
boxes, ROI zoom, switching the Labels layer, undo wording, cancel as a normal outcome."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medsam_core.errors import CancelledError

from .conftest import big_objects, ref_box

pytestmark = pytest.mark.slow


@pytest.fixture
def session(lite_model, dsb2018):
    from napari.components import ViewerModel

    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    image, ref = dsb2018
    viewer = ViewerModel()
    statuses = []
    s = Session(viewer, Runner(synchronous=True), on_status=statuses.append)
    s.set_model(lite_model)
    s.set_image_layer(viewer.add_image(image[:256, :256], name="nuclei"))
    s.statuses = statuses
    return s, ref[:256, :256]


def test_boxes_switch_labels_and_undo_wording(session):
    s, ref = session
    a, b, c = big_objects(ref, 3)
    assert s.segment_boxes([ref_box(ref, a, 3), ref_box(ref, b, 3)]) == [1, 2]
    first = s.labels_layer
    kept = np.array(first.data)
    other = s.viewer.add_labels(np.zeros(ref.shape, np.int32), name="second")
    s.set_labels_layer(other)
    assert s.shapes_layer.nshapes == 0  # the old boxes belong to the old layer's objects
    assert s.segment_boxes([ref_box(ref, c, 3)]) == [1]
    assert set(np.unique(other.data).tolist()) == {0, 1}
    np.testing.assert_array_equal(first.data, kept)
    assert s.undo() == "1 box" and "undid 1 box" in s.statuses[-1]
    assert not other.data.any()


def test_roi_zoom_setting_is_validated_first(session):
    from medsam_core import MedSAMError

    s, _ = session
    s.settings.roi_zoom = "sideways"
    with pytest.raises(MedSAMError, match="ROI zoom"):
        s.roi_mode()


def test_a_cancelled_job_ends_in_on_cancel_not_on_error():
    from napari_medsam._workers import Runner

    def job(event):
        yield 1
        if event.is_set():
            raise CancelledError("cancelled by the user; nothing was changed")
        yield 2
        return "done"

    event, seen = threading.Event(), []
    runner = Runner(synchronous=True)
    runner.run_steps(job, event, on_step=lambda v: (seen.append(v), event.set()), on_done=seen.append,
                     on_error=lambda e: seen.append(("error", e)), on_cancel=lambda e: seen.append(("cancel", str(e))))
    assert seen == [1, ("cancel", "cancelled by the user; nothing was changed")]
    seen.clear()
    runner.run(lambda: "ok", on_done=seen.append, on_error=seen.append)
    assert seen == ["ok"]


class _HeldRunner:
    """A runner whose jobs end when the test says, in the order it says (two loads racing)."""

    def __init__(self):
        self.jobs = []

    def run(self, func, *args, on_done, on_error, desc="", on_cancel=None):
        self.jobs.append((args, on_done, on_error))


def test_the_model_asked_for_last_is_the_one_served(lite_model, monkeypatch):
    """Load a checkpoint, then (before it finished) the bundled weights: whichever load ended first,
    the first request won or was dropped by chance; a blocking action during a load loaded the
    bundled model and threw the requested checkpoint away. The line names the weights that serve."""
    import copy

    from napari.components import ViewerModel

    import medsam_core
    from napari_medsam._session import Session

    tuned = copy.copy(lite_model)
    tuned.weights_path = "/data/rounds/ft_decoder.pt"
    statuses = []
    for order in ((0, 1), (1, 0)):
        runner = _HeldRunner()
        s = Session(ViewerModel(), runner, on_status=statuses.append)
        s.load_model_async("lite_medsam", "/data/rounds/ft_decoder.pt")
        s.load_model_async("lite_medsam", None)  # the person changes their mind
        results = (tuned, lite_model)
        for k in order:
            runner.jobs[k][1](results[k])
        assert s.model is lite_model, order
    assert "lite_medsam on cpu" in statuses[-1]
    runner = _HeldRunner()
    s = Session(ViewerModel(), runner, on_status=statuses.append)
    s.load_model_async("lite_medsam", "/data/rounds/ft_decoder.pt")
    asked = []
    monkeypatch.setattr(medsam_core, "load_model", lambda name, checkpoint=None, device=None:
                        asked.append(checkpoint) or tuned)
    assert s.model_ready(blocking=True)  # e.g. "Segment in 3D" pressed while the checkpoint loads
    assert asked == ["/data/rounds/ft_decoder.pt"] and s.model is tuned
    runner.jobs[0][1](lite_model)  # the worker's copy arrives late: not swapped in
    assert s.model is tuned and "lite_medsam (ft_decoder.pt) on cpu" in statuses[-1]
    runner = _HeldRunner()  # a load that fails after a model was set meanwhile (e.g. a fine-tune round)
    s = Session(ViewerModel(), runner, on_status=statuses.append)
    s.load_model_async("lite_medsam", "/data/missing.pt")
    s.set_model(tuned)
    runner.jobs[0][2](FileNotFoundError("checkpoint file not found"))
    assert statuses[-1].endswith("lite_medsam (ft_decoder.pt) serves"), statuses[-1]
