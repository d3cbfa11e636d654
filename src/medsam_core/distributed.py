"""``segment_folder`` on Dask distributed: a LocalCluster on this machine, or an existing scheduler.

    from medsam_core.batch import segment_folder
    from medsam_core.distributed import local_client, submit_folder

    with local_client(workers=2) as client:          # or dask.distributed.Client("tcp://host:8786")
        report = segment_folder("images/", "labels/", boxes="boxes.csv", client=client)   # blocks

    handle = submit_folder(client, "images/", "labels/", boxes="boxes.csv")   # returns at once
    handle.done(); handle.cancel(); report = handle.report()                   # report() blocks

One unit of work is one image file; a 3D volume is one unit, so its slices share the worker's
encoder and embedding cache. Each worker loads the model once (``ModelPlugin``, a Dask WorkerPlugin)
after checking that the weights file it sees has the sha256 the client computed. A unit writes its
own output atomically and skips a verified existing one (``batch._run_one``: the resume rule), so
a batch stopped anywhere resumes. A worker that dies mid-unit: the scheduler runs the unit again
on another worker, at most ``distributed.scheduler.allowed-failures`` times; the report counts that
in ``ImageResult.retries`` and says why. The report (``batch_report.json``) has the in-process format.
Dask is imported only by this module, which is imported only when a client is used.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import dask
from dask.distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, get_worker, wait

from ._atomic import is_our_tmp
from .batch import REPORT_NAME, BatchReport, ImageResult, _atomic_json, _run_one, prepare_folder
from .checkpoint import file_sha256
from .errors import CheckpointError, ModelNotFoundError, PromptError
from .registry import bundled_weights_path, get_spec

#: The scheduler runs a unit whose worker died at most this many times in our LocalCluster.
ALLOWED_FAILURES = 2
_FATAL = (CheckpointError, ModelNotFoundError)  # every unit would fail the same way: stop the batch


@contextmanager
def local_client(workers: int = 1, dashboard: bool = True, allowed_failures: int = ALLOWED_FAILURES,
                 torch_threads: int | None = None):
    """A ``Client`` on a new LocalCluster bound to 127.0.0.1: ``workers`` processes, 1 Dask thread each.

    torch_threads: intra-op threads per worker (OMP_NUM_THREADS); default this machine's cores
    divided among the workers, so 1 worker computes like the in-process path. dashboard: serve
    Dask's dashboard on a free loopback port (needs bokeh; ``dashboard_link``). Closed when the block ends.
    """
    if int(workers) < 1:
        raise PromptError(f"--workers {workers}: give 1 or more worker processes")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = str(torch_threads or max(1, cores // int(workers)))
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}
    # One unit in flight per worker thread (the default 1.1 queues a second unit on the same worker,
    # which then counts as "involved" when that worker dies), and a bounded rerun budget.
    # No MALLOC_TRIM_THRESHOLD_ (Dask's pre-spawn default): setting it freezes glibc's mmap threshold,
    # so every large tensor/array temporary is a fresh mmap; encodes measured ~15-30% slower with it.
    with dask.config.set({"distributed.scheduler.allowed-failures": int(allowed_failures),
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                               scheduler_port=0, dashboard_address="127.0.0.1:0",  # never the default :8787
                               scheduler_kwargs={"dashboard": bool(dashboard)}, worker_dashboard_address=None,
                               env=env)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def dashboard_available() -> bool:
    """Dask serves its dashboard only with bokeh installed (else a page saying so)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker, after verifying the weights by sha256; keeps its Predictor
    (and so its embedding cache) for every unit that worker runs.

    factory: a picklable zero-argument callable returning a predictor, used instead of the
    model/weights (scripts, tests). Torch threads: the worker's OMP_NUM_THREADS (local_client sets it).
    """

    def __init__(self, model: str = "lite_medsam", checkpoint: str | None = None, sha256: str | None = None,
                 device=None, encoder_backend=None, factory=None):
        self.model, self.checkpoint, self.sha256 = model, checkpoint, sha256
        self.device, self.encoder_backend, self.factory = device, encoder_backend, factory
        key = sha256[:16] if sha256 else uuid.uuid4().hex[:16]
        self.name = f"medsam-model-{model}-{key}-{device}-{encoder_backend}"
        self._predictor = None

    def setup(self, worker) -> None:
        self._lock = threading.Lock()
        self._where = worker.address  # the model loads at the first unit that needs it, not here

    def teardown(self, worker) -> None:
        self._predictor = None

    def predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = self.factory() if self.factory is not None else self._load()
            return self._predictor

    def _load(self):
        from .checkpoint import load_model
        from .predictor import Predictor

        path = Path(self.checkpoint) if self.checkpoint else bundled_weights_path(get_spec(self.model))
        if not path.is_file():
            raise CheckpointError(f"worker {self._where}: the weights {path} do not exist there; put them on a "
                                  "filesystem every worker sees, at the same path")
        digest = file_sha256(path)
        if digest != self.sha256:
            raise CheckpointError(
                f"worker {self._where}: the weights {path} have sha256 {digest[:12]}..., the client's "
                f"{self.sha256[:12]}...: the worker sees another file; copy the same weights there")
        model = load_model(self.model, checkpoint=path if self.checkpoint else None, device=self.device)
        return Predictor(model, encoder_backend=self.encoder_backend)


def model_plugin(model="lite_medsam", checkpoint=None, device=None, encoder_backend=None,
                 factory=None) -> ModelPlugin:
    """The plugin for this client: weights located and hashed here, verified again on each worker."""
    if factory is not None:
        return ModelPlugin(model, factory=factory)
    if checkpoint is None:
        spec = get_spec(model)
        if not spec.bundled:
            raise CheckpointError(f"model {spec.name!r} has no bundled weights: pass a checkpoint file")
        path = bundled_weights_path(spec)
    else:
        path = Path(checkpoint).expanduser().absolute()
    if not path.is_file():
        raise CheckpointError(f"the weights file {path} does not exist (check the path)")
    return ModelPlugin(model, str(path) if checkpoint is not None else None, file_sha256(path), device,
                       encoder_backend)


def _segment_unit(plugin_name: str, path: str, out_path: str, source, roi, intensity, channel, overwrite):
    """One unit on a worker -> (ImageResult, encoder calls it made)."""
    plugin = get_worker().plugins[plugin_name]
    holder: dict = {}

    def get_predictor():
        holder["p"] = plugin.predictor()
        holder["calls0"] = getattr(holder["p"], "encoder_calls", 0)
        return holder["p"]

    result = _run_one(get_predictor, Path(path), Path(out_path), source, roi, intensity, channel, overwrite, None)
    calls = getattr(holder.get("p"), "encoder_calls", 0) - holder.get("calls0", 0)
    return result, calls


def _has_plugin(name: str, dask_worker=None) -> bool:
    return name in dask_worker.plugins


def _involved_in_deaths(dask_scheduler, keys) -> dict:
    """Scheduler side: how many worker deaths each task saw while assigned to the dead worker."""
    return {k: dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks}


class DistributedBatch:
    """A submitted batch: ``futures`` {image name: Future} in folder order; ``report()`` collects them."""

    def __init__(self, client: Client, futures: dict, out: Path, outputs: dict, on_progress=None):
        self.client, self.futures, self.out, self._outputs = client, futures, out, outputs
        self.on_progress = on_progress
        self._report = BatchReport(planned=list(futures))
        self._seen: dict[str, ImageResult] = {}

    def done(self) -> bool:
        return all(f.done() for f in self.futures.values())

    def cancel(self) -> BatchReport:
        """Cancel the units not finished; write and return the honest partial report."""
        self.client.cancel([f for n, f in self.futures.items() if n not in self._seen])
        self._report.cancelled = True
        return self._finish()

    def report(self, cancel=None) -> BatchReport:
        """Wait for every unit (cancel: a callable or threading.Event checked every 0.5 s) -> BatchReport,
        also written to ``out/batch_report.json``. Ctrl-C cancels the rest, writes the report, re-raises."""
        pending = {f: n for n, f in self.futures.items() if n not in self._seen}
        try:
            while pending:
                if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
                    return self.cancel()
                try:
                    done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                for fut in done:
                    self._collect(pending.pop(fut), fut)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self._finish()

    def _collect(self, name: str, fut) -> None:
        if fut.status == "cancelled":
            return
        deaths = self._deaths(fut.key)
        if fut.status == "finished":
            result, calls = fut.result()
            self._report.encoder_calls += calls
        else:
            exc = fut.exception()
            if isinstance(exc, _FATAL):
                self.cancel()
                raise exc
            if isinstance(exc, KilledWorker):
                msg = f"its worker died each of the {deaths} times it ran it (out of memory? killed?)"
            else:
                msg = f"{type(exc).__name__}: {exc}"
            result = ImageResult(name, "failed", message=msg)
        if deaths and result.status != "failed":
            note = f"run again on another worker after its worker died ({deaths}x)"
            result.message = "; ".join(m for m in (note, result.message) if m)
        result.retries = deaths
        self._seen[name] = result
        if self.on_progress:
            self.on_progress(len(self._seen), len(self.futures), name)

    def _deaths(self, key) -> int:
        try:
            return int(self.client.run_on_scheduler(_involved_in_deaths, keys=[key]).get(key, 0))
        except Exception:  # a scheduler refusing to run our function: the count is unknown, not an error
            return 0

    def _finish(self) -> BatchReport:
        rep = self._report
        rep.results = [self._seen[n] for n in rep.planned if n in self._seen]
        if not rep.cancelled and len(self._seen) == len(self.futures):
            _remove_orphan_tmp(self.out, [Path(p).name for p in self._outputs.values()])
        _atomic_json(self.out / REPORT_NAME, rep.to_dict())
        return rep


def _remove_orphan_tmp(out: Path, names: list[str]) -> None:
    """After every unit finished: temp files of our outputs left by a worker killed mid-write."""
    prefixes = tuple(f".{n}." for n in names)
    for entry in os.scandir(out):
        if entry.name.startswith(prefixes) and is_our_tmp(entry.name):
            Path(entry.path).unlink(missing_ok=True)


def submit_folder(client: Client, images, out, boxes=None, boxes_from_labels=None, margin: float = 0.0,
                  roi: str = "auto", model: str = "lite_medsam", checkpoint=None, device=None, predictor=None,
                  encoder_backend=None, intensity=None, channel=None, overwrite: bool = False,
                  patterns=None, on_progress=None, retries: int = 1) -> DistributedBatch:
    """Check the arguments (as ``segment_folder``), submit one unit per image -> DistributedBatch at once.

    predictor: None (the model from model/checkpoint/device) or a picklable zero-argument factory,
    called once per worker. retries: Dask reruns of a unit that raised (worker deaths are counted
    by the scheduler's allowed-failures instead). Non-blocking: safe to call from napari's GUI thread.
    """
    if predictor is not None and hasattr(predictor, "set_image"):
        raise PromptError("with a Dask client, give model/checkpoint (the weights travel by path and sha256) "
                          "or a picklable factory of a predictor, not a loaded Predictor")
    files, out, outputs, source = prepare_folder(images, out, boxes, boxes_from_labels, margin, roi, patterns)
    plugin = model_plugin(model, checkpoint, device, encoder_backend, factory=predictor)
    present = client.run(_has_plugin, plugin.name)
    if not present or not all(present.values()):  # a second batch keeps the workers' loaded models
        client.register_plugin(plugin, name=plugin.name)
    tag = uuid.uuid4().hex[:8]
    futures = {}
    for path in files:
        futures[path.name] = client.submit(
            _segment_unit, plugin.name, str(path), str(outputs[path]), source.for_image(path), roi, intensity,
            channel, overwrite, key=f"medsam-{path.name}-{tag}", retries=retries, pure=False)
    return DistributedBatch(client, futures, out, outputs, on_progress)
