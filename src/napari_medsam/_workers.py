"""The only place work leaves the GUI thread: one runner for progress, cancel and errors.

``Runner.run(func, *args, on_done=..., on_error=..., desc=...)`` runs ``func(*args)`` in a napari
``create_worker`` thread with a napari progress bar labelled ``desc``; ``run_steps`` does the same
for a generator function (long core jobs: ``embed_volume``, ``propagate``, a fine-tune round),
handing each yielded value to ``on_step``. The callbacks run back on the GUI thread.

A cancel is a normal outcome: a job that raises ``CancelledError`` (``check_cancel`` on the
task's ``cancel`` event) ends in ``on_cancel(exc)`` (or, when none is given, ``on_error(exc)``,
whose handlers test ``isinstance(exc, CancelledError)``). No exception ever goes back to napari:
the worker's ``errored`` signal is always connected here, so napari's "re-raise in the main
thread" default (a red traceback in the GUI, exit 134 in a script without ``napari.run()``) is
never installed. An error inside one of our own callbacks is reported through ``on_error`` too.

With ``Runner(synchronous=True)`` (or the environment variable MEDSAM_SYNC_WORKERS=1) the same
calls run inline, for scripts and tests without a Qt event loop.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Iterator

from medsam_core.errors import CancelledError

_CANCELLED = object()  # returned by a cancelled job in place of its result (never an exception)

# Every running task, whatever became of its Runner or widget (``task.worker`` keeps the worker
# alive): a worker whose Python object is collected while its thread runs (the viewer closed, the
# script ended) has its signals deleted under it, and its last emit aborts the interpreter (exit
# 134). At exit, ``_stop_all`` cancels them and waits for their threads.
_LIVE: dict[int, Task] = {}  # id(task) -> task
_EXIT_WAIT_MS = 30_000


def _stop_all() -> None:
    """atexit: cancel every running task and wait (bounded) for the worker threads to end."""
    if not _LIVE:
        return
    for task in list(_LIVE.values()):
        try:
            task.cancel()
        except RuntimeError:  # its Qt object is already gone
            pass
    try:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(_EXIT_WAIT_MS)
    except Exception:  # noqa: BLE001 - Qt already torn down: nothing left to wait for
        pass


atexit.register(_stop_all)


class Task:
    """One background job: ``cancel()`` asks it to stop at its next check; ``cancelled`` tells."""

    def __init__(self, desc: str):
        self.desc = desc
        self.cancel_event = threading.Event()
        self.worker = None
        self.exception: BaseException | None = None

    def cancel(self) -> None:
        self.cancel_event.set()
        quit_ = getattr(self.worker, "quit", None)
        if quit_ is not None:  # a generator worker also stops between two yields
            quit_()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


def _guarded(func: Callable, task: Task) -> Callable:
    """``func`` with CancelledError turned into the _CANCELLED result (so ``errored`` never sees it)."""

    def call(*args):
        try:
            return func(*args)
        except CancelledError as exc:
            task.exception = exc
            return _CANCELLED

    return call


def _guarded_steps(func: Callable, task: Task) -> Callable:
    def steps(*args) -> Iterator:
        try:
            return (yield from func(*args))
        except CancelledError as exc:
            task.exception = exc
            return _CANCELLED

    return steps


class Runner:
    """Start background tasks; remembers which are running (``busy``, ``tasks``)."""

    def __init__(self, synchronous: bool | None = None):
        if synchronous is None:
            synchronous = os.environ.get("MEDSAM_SYNC_WORKERS", "") == "1"
        self.synchronous = synchronous
        self._running: set = set()
        self.tasks: list[Task] = []  # running tasks, oldest first

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def run(self, func: Callable, *args, on_done: Callable, on_error: Callable, desc: str = "MedSAM",
            on_cancel: Callable | None = None) -> Task:
        """Run ``func(*args)``; then ``on_done(result)``, ``on_cancel(exc)`` or ``on_error(exc)`` on the GUI thread."""
        task = Task(desc)
        call = _guarded(func, task)
        if self.synchronous:
            self._inline(task, lambda: call(*args), on_done, on_error, on_cancel)
            return task
        from napari.qt.threading import create_worker

        worker = create_worker(call, *args, _progress={"desc": desc}, _ignore_errors=True)
        return self._start(task, worker, on_done, on_error, on_cancel)

    def run_steps(self, func: Callable, *args, on_step: Callable, on_done: Callable, on_error: Callable,
                  desc: str = "MedSAM", total: int = 0, on_cancel: Callable | None = None) -> Task:
        """Run generator function ``func(*args)`` with a napari progress bar of ``total`` steps:
        each yielded value goes to ``on_step`` and the generator's return value to ``on_done``, on
        the GUI thread. The generator cancels itself (it raises CancelledError; see module doc)."""
        task = Task(desc)
        steps = _guarded_steps(func, task)
        if self.synchronous:
            def drive():
                gen = steps(*args)
                while True:
                    try:
                        step = next(gen)
                    except StopIteration as stop:
                        return stop.value
                    on_step(step)

            self._inline(task, drive, on_done, on_error, on_cancel)
            return task
        from napari.qt.threading import create_worker

        worker = create_worker(steps, *args, _progress={"desc": desc, "total": int(total)}, _ignore_errors=True)
        worker.yielded.connect(lambda step: self._call(on_step, step, on_error))
        return self._start(task, worker, on_done, on_error, on_cancel)

    # -- internals --------------------------------------------------------------------------------
    def _inline(self, task: Task, body: Callable, on_done, on_error, on_cancel) -> None:
        try:
            result = body()
        except Exception as exc:  # handed to on_error, as a worker's errored signal would
            on_error(exc)
            return
        self._finish(task, result, on_done, on_error, on_cancel)

    def _finish(self, task: Task, result, on_done, on_error, on_cancel) -> None:
        if result is _CANCELLED:
            (on_cancel or on_error)(task.exception)
        else:
            on_done(result)

    @staticmethod
    def _call(callback: Callable, value, on_error: Callable) -> None:
        """Run one of our GUI-thread callbacks; its own failure is reported, never raised into Qt."""
        try:
            callback(value)
        except Exception as exc:  # noqa: BLE001 - shown through on_error like a worker's error
            if callback is on_error:
                import warnings

                warnings.warn(f"MedSAM: {exc}", stacklevel=2)
            else:
                on_error(exc)

    def _start(self, task: Task, worker, on_done, on_error, on_cancel) -> Task:
        """Keep a reference until it finishes, connect the result signals, start it."""
        task.worker = worker
        self._running.add(worker)
        self.tasks.append(task)
        _LIVE[id(task)] = task

        def returned(result):
            self._call(lambda r: self._finish(task, r, on_done, on_error, on_cancel), result, on_error)

        def finished():
            _LIVE.pop(id(task), None)
            self._running.discard(worker)
            if task in self.tasks:
                self.tasks.remove(task)
            if not answered:  # Task.cancel() -> worker.quit(): no result, no error came back
                self._call(on_cancel or on_error, task.exception or CancelledError(
                    "cancelled by the user; nothing was changed"), on_error)

        answered = []

        def errored(exc):
            answered.append(exc)
            self._call(on_error, exc, on_error)

        worker.returned.connect(lambda result: answered.append(result))
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        worker.start()
        return task

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
