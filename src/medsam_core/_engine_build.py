"""Build the OpenVINO engine in a separate process while the caller keeps encoding eagerly.

The first export of an encoder takes ~10 s to 2 minutes. ``make_encoder_backend(model, "auto")``
calls :func:`start` and returns a :class:`BackgroundEngineEncoder` at once (eager until ready); the
child process (``python -m medsam_core._engine_build``) rebuilds the model from the registry and
the caller's weights, exports, verifies against PyTorch and writes the engine into the cache
(``_openvino_engine.ensure_export``: atomic rename, file lock), then exits. A process, not a
thread: a thread inside OpenVINO's converter cannot be stopped, and the interpreter aborts if it
exits while such a thread runs.

The child outlives its parent: a ``medsam segment`` run that ends after 7 s, or a napari window
closed during the first minute, leaves the export to finish, so the next run finds the engine in
the cache instead of starting the export again (and never getting it). It runs in its own session
(a Ctrl+C in the terminal does not reach it), niced, on one thread, and gives up after
``CHILD_TIME_LIMIT_S``. :func:`stop_all` stops running children on request (tests, tools).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from . import backends

_jobs: dict[str, Job] = {}
_jobs_lock = threading.Lock()
CHILD_TIME_LIMIT_S = 1800  # an export that has not finished by then is abandoned (exit 1)


class Job:
    """One export child process: ``state()`` is "running", "ready" or "failed"."""

    def __init__(self, proc: subprocess.Popen, folder: Path, log: Path, weights: Path):
        self.proc, self.folder, self.log, self.weights = proc, folder, log, weights

    def state(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "running"
        self.weights.unlink(missing_ok=True)
        return "ready" if rc == 0 else "failed"

    def reason(self) -> str:
        """The last line the child wrote (why it failed)."""
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def wait(self, timeout: float | None = None) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.state()

    def stop(self, grace_s: float = 3.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.weights.unlink(missing_ok=True)


def start(model, cache_root: Path, folder: Path, precision: str) -> Job:
    """Start (or join) the export of ``model``'s encoder into ``folder``; returns its Job."""
    import torch

    key = str(folder)
    with _jobs_lock:
        job = _jobs.get(key)
        if job is not None and job.state() != "failed":
            return job
        folder.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".weights-", suffix=".pt", dir=folder.parent)
        os.close(fd)
        weights = Path(name)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, weights)
        log = folder.parent / f".export-{precision}.log"
        cmd = [sys.executable, "-m", "medsam_core._engine_build", model.spec.name, str(weights),
               str(cache_root), precision, model.encoder_id]
        env = dict(os.environ, OMP_NUM_THREADS="1")  # leave the other cores to the user
        try:
            with open(log, "w") as fh:
                # Its own session: not stopped by the terminal's Ctrl+C or by the parent's exit.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        env=env, close_fds=True, start_new_session=True)
        except BaseException:
            weights.unlink(missing_ok=True)
            raise
        _jobs[key] = job = Job(proc, folder, log, weights)
        return job


class BackgroundEngineEncoder(backends.EncoderBackend):
    """PyTorch eager until the engine exported by a separate process is ready, then the engine.

    ``name`` is "torch" while the export runs and the engine's name afterwards; ``job`` is the
    export process (``_engine_build.Job``), None once it has been collected.
    """

    def __init__(self, model, eager: backends.TorchEncoder, root: Path, precision: str, job: Job):
        super().__init__()
        self.model, self._eager, self._root, self.precision, self.job = model, eager, root, precision, job
        self._engine: backends.EncoderBackend | None = None
        self._lock = threading.Lock()
        self.name = "torch"
        self.info = {"pending": True, "precision": precision}

    def _collect(self, wait_s: float | None = 0.0) -> None:
        job = self.job
        if job is None:
            return
        state = job.state() if wait_s == 0.0 else job.wait(wait_s)
        if state == "running":
            return
        self.job = None
        try:
            if state == "failed":
                raise backends.EngineError(f"the export process failed: {job.reason()}")
            if backends.encoder_hash(self.model) != self.model.encoder_id:
                raise backends.EngineError("the encoder weights changed while the engine was exported")
            from . import _openvino_engine

            engine, info = _openvino_engine.load_or_export(
                self.model, self._root, self._eager.num_threads, self.precision)
            self._engine = backends.EngineEncoder(engine, self._eager, info)
            self.name, self.info = self._engine.name, info
        except Exception as exc:  # the user keeps eager
            self.info = {"pending": False, "failed": f"{type(exc).__name__}: {exc}"}
            warnings.warn(f"the OpenVINO encoder is not used ({type(exc).__name__}: {exc}); "
                          "using PyTorch eager", RuntimeWarning, stacklevel=3)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` s for the export; True when the engine now serves."""
        with self._lock:
            self._collect(timeout)
        return self._engine is not None

    def encode(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._collect()
            engine = self._engine
        return (engine or self._eager).encode(batch)


def stop_all() -> None:
    """Stop this process's running export children (not called at exit: they finish on their own)."""
    with _jobs_lock:
        jobs = list(_jobs.values())
    for job in jobs:
        job.stop()


def _give_up(*_) -> None:
    print(f"TimeoutError: the export did not finish within {CHILD_TIME_LIMIT_S} s", flush=True)
    sys.exit(1)


def main(argv: list[str]) -> int:
    """Child: ``spec_name weights cache_root precision encoder_id`` -> exit 0 when the export is
    in the cache and accepted, 1 (with the reason as the last line) otherwise."""
    spec_name, weights, cache_root, precision, encoder_id = argv
    # SIGTERM unwinds (temp folders are removed); SIGALRM ends an export that hangs.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, getattr(signal, "SIGALRM", None)) if sig}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _give_up)
        signal.alarm(CHILD_TIME_LIMIT_S)
    try:
        return _export(spec_name, weights, cache_root, precision, encoder_id)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _export(spec_name: str, weights: str, cache_root: str, precision: str, encoder_id: str) -> int:
    import torch

    from . import _openvino_engine
    from .checkpoint import finish_model, load_state_strict
    from .modeling import build_model
    from .registry import get_spec

    torch.set_num_threads(1)
    try:
        spec = get_spec(spec_name)
        model = build_model(spec.arch)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        Path(weights).unlink(missing_ok=True)  # read: not left behind if the child is stopped
        load_state_strict(model, state, weights)
        model = finish_model(model, spec, device="cpu")
        if model.encoder_id != encoder_id:
            raise RuntimeError("the weights handed to the export changed on the way")
        meta, folder, _ = _openvino_engine.ensure_export(model, Path(cache_root), 1, precision)
    except Exception as exc:  # noqa: BLE001 - the parent shows this line in its warning
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        Path(weights).unlink(missing_ok=True)  # whatever happened, no copy of the weights is left
    print(f"exported {folder} in {meta.get('export_s', 0):.1f} s via {meta.get('route')}", flush=True)
    return 0


def _lower_priority() -> None:
    """The child only: leave the cores to the user. Its own session is its own scheduling group on
    Linux with autogroup, where a process's nice value counts only inside the group: without the
    group's nice too, the export took half the CPU from the user's run (demo 21 s instead of 7 s)."""
    try:
        os.nice(10)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/autogroup", "w") as fh:
            fh.write("10")
    except OSError:  # not Linux, or no autogroup
        pass


if __name__ == "__main__":
    _lower_priority()
    sys.exit(main(sys.argv[1:]))
