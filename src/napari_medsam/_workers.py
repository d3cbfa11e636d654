"""The only place work leaves the GUI thread: napari workers, with progress and a sync switch.

``Runner.run(func, *args, on_done=..., on_error=..., desc=...)`` runs ``func(*args)`` in a napari
``create_worker`` thread with an indeterminate napari progress bar labelled ``desc``; the
callbacks run back on the GUI thread. With ``Runner(synchronous=True)`` (or the environment
variable MEDSAM_SYNC_WORKERS=1) the same call runs inline, for scripts and tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


class Runner:
    """Start background tasks; remembers which are running (``busy``)."""

    def __init__(self, synchronous: bool | None = None):
        if synchronous is None:
            synchronous = os.environ.get("MEDSAM_SYNC_WORKERS", "") == "1"
        self.synchronous = synchronous
        self._running: set = set()

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def run(self, func: Callable, *args, on_done: Callable, on_error: Callable, desc: str = "MedSAM"):
        """Run ``func(*args)``; then ``on_done(result)`` or ``on_error(exception)`` on the GUI thread."""
        if self.synchronous:
            try:
                result = func(*args)
            except Exception as exc:  # handed to on_error, as a worker's errored signal would
                on_error(exc)
                return None
            on_done(result)
            return None
        from napari.qt.threading import create_worker

        return self._start(create_worker(func, *args, _progress={"desc": desc}), on_done, on_error)

    def run_steps(self, func: Callable, *args, on_step: Callable, on_done: Callable, on_error: Callable,
                  desc: str = "MedSAM", total: int = 0):
        """Run generator function ``func(*args)`` with a napari progress bar of ``total`` steps:
        each yielded value goes to ``on_step`` and the generator's return value to ``on_done``, on
        the GUI thread. Cancelling is the generator's business (it raises, e.g. CancelledError)."""
        if self.synchronous:
            try:
                gen = func(*args)
                while True:
                    try:
                        step = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    on_step(step)
            except Exception as exc:  # handed to on_error, as a worker's errored signal would
                on_error(exc)
                return None
            on_done(result)
            return None
        from napari.qt.threading import create_worker

        worker = create_worker(func, *args, _progress={"desc": desc, "total": int(total)})
        worker.yielded.connect(on_step)
        return self._start(worker, on_done, on_error)

    def _start(self, worker, on_done: Callable, on_error: Callable):
        """Keep a reference until it finishes, connect the result signals, start it."""
        self._running.add(worker)
        worker.returned.connect(on_done)
        worker.errored.connect(on_error)
        worker.finished.connect(lambda: self._running.discard(worker))
        worker.start()
        return worker

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block (processing Qt events) until no task runs: for scripts that need a result now."""
        if not self._running:
            return
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self._running and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            time.sleep(0.005)  # do not spin a core the worker needs
