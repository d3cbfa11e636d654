"""Cancel is a normal outcome (issue 15, bug 1): a plain script that never calls ``napari.run()``
(the docs' scripting flow) cancels "Segment in 3D", "Precompute all slices" and "Fine-tune" in
real workers; Python must not abort, no error notification may appear, nothing may change."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    r"""
    import sys, time
    import numpy as np
    import napari
    from napari.utils.notifications import notification_manager, ErrorNotification
    from qtpy.QtCore import QCoreApplication
    import medsam_core
    from medsam_core.samples import nuclei

    notification_manager.install_hooks()  # what napari.run() does: worker errors reach the user here
    model = medsam_core.load_model("lite_medsam", device="cpu")
    with np.load(sys.argv[1]) as d:
        vol = np.ascontiguousarray(d["image"][29:37, 10:106, 60:156])
    viewer = napari.Viewer(show=False)
    viewer.add_image(vol, name="cells")
    _, w = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    w.set_model(model)
    w.wait(300_000)  # the background encode of the slice on screen
    before = np.array(w.labels_layer.data)

    def pump(seconds):
        t0 = time.time()
        while time.time() - t0 < seconds:
            QCoreApplication.processEvents()
            time.sleep(0.01)

    def cancel_on_first_step(actions, cancel):
        show = actions.on_progress
        def hook(*step):
            show(*step)
            cancel()
        actions.on_progress = hook
        return show

    outcome = []
    show = cancel_on_first_step(w.volume, w.cancel_3d)
    w.precompute_volume()
    w.wait(300_000); pump(0.2)
    outcome.append(("precompute", w.status_label.text()))
    w.segment_3d([30, 30, 60, 60], z=4)
    w.wait(300_000); pump(0.2)
    outcome.append(("3d", w.status_label.text()))
    w.volume.on_progress = show

    sample = nuclei()
    viewer.add_image(sample.image, name="nuclei")
    viewer.add_labels(sample.labels.astype(np.int32), name="reference")
    w.wait(300_000)
    cancel_on_first_step(w.train, w.cancel_finetune)
    w.finetune([("nuclei", "reference")], "decoder", epochs=2, holdout=0.35)
    w.wait(300_000); pump(0.2)
    outcome.append(("finetune", w.train_panel.result_label.text()))

    errors = [n.message for n in notification_manager.records if isinstance(n, ErrorNotification)]
    print("OUTCOME", outcome)
    print("ERRORS", errors)
    assert not errors, errors
    assert all("cancelled" in text for _, text in outcome), outcome
    assert w.session.history == [], "a cancelled job committed something"
    np.testing.assert_array_equal(w.labels_layer.data if w.labels_layer.data.shape == before.shape else before, before)
    assert w.session.model is model
    viewer.close()
    print("CLEAN EXIT")
    """
)


def test_cancel_in_a_plain_script_is_not_an_error(tmp_path):
    from tests.conftest import SHARED_DATA

    script = tmp_path / "cancel_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MEDSAM_SYNC_WORKERS="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(SHARED_DATA / "confocal3d_nuclei_cells3d.npz")],
                          capture_output=True, text=True, env=env, timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, tail  # was 134 (abort) or a traceback for a user's Cancel
    assert "CLEAN EXIT" in proc.stdout, tail
    assert "Traceback" not in proc.stderr, tail


ENDS_WHILE_ENCODING = textwrap.dedent(
    r"""
    import sys
    import numpy as np
    import napari

    viewer = napari.Viewer(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM")
    widget.wait(300_000)  # the model
    viewer.add_image(np.random.default_rng(0).random((300, 300)).astype(np.float32), name="a")
    assert widget.runner.busy, "the widget should be encoding the new image in a worker"
    if sys.argv[1] == "close":
        viewer.close()
    print("SCRIPT END", flush=True)
    """
)


@pytest.mark.parametrize("ending", ["close", "exit"])
def test_a_script_that_ends_while_the_widget_encodes_exits_cleanly(tmp_path, ending):
    """A batch script that adds an image and then closes the viewer (or just ends) while the widget
    still encodes in a worker: the worker's signals were deleted under it and Python aborted (exit
    134, "wrapped C/C++ object of type WorkerBaseSignals has been deleted"). Now the running tasks
    are cancelled and their threads waited for at exit."""
    script = tmp_path / "ends_while_encoding.py"
    script.write_text(ENDS_WHILE_ENCODING)
    env = dict(os.environ, MEDSAM_SYNC_WORKERS="0", MEDSAM_ENCODER_BACKEND="torch", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), ending], capture_output=True, text=True, env=env,
                          timeout=600)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert "SCRIPT END" in proc.stdout, tail
    assert "WorkerBaseSignals" not in proc.stderr and "Traceback" not in proc.stderr, tail
