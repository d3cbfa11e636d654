"""Qt-free state and actions of the fine-tune panel, over ``medsam_core.guard.FineTuneSession``.

``TrainActions`` keeps the image/labels layer pairs, one ``FineTuneSession`` (the guard: base
model, active model, rounds, rollback) and the losses of the running round. ``start`` validates
and snapshots the layers on the GUI thread (bad input raises ``MedSAMError`` before anything
runs), then runs one guarded round through the session's ``Runner`` (``run_steps``: progress,
and a synchronous switch for tests). The model the widget serves changes only on the GUI thread,
in ``_on_done`` / ``use_anyway`` / ``rollback``: a cancel or an error leaves it untouched.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from medsam_core import MedSAMError
from medsam_core.errors import CancelledError, TrainingError
from medsam_core.guard import START_CHOICES, FineTuneSession, Round
from medsam_core.training import MODES, TrainConfig


def _round_steps(guard: FineTuneSession, data, config: TrainConfig, start: str, force: bool, intensity,
                 channel, cancel: threading.Event):
    """Generator for ``Runner.run_steps``: yields (step, total, loss) after each optimizer step and
    returns the guard's ``Round``.

    ``fit`` reports through a callback, so the round runs in a helper thread that hands each step
    over and waits until the consumer has taken it (lockstep: a cancel set while handling step k
    is seen before step k + 1, also in the synchronous runner).
    """
    steps: queue.Queue = queue.Queue()
    taken = threading.Semaphore(0)

    def on_step(step, total, loss, info):
        steps.put(("step", (int(step), int(total), float(loss))))
        taken.acquire()

    def work():
        try:
            steps.put(("done", guard.run_round(data, config, start=start, force=force, on_step=on_step,
                                               cancel=cancel, intensity=intensity, channel=channel)))
        except BaseException as exc:  # re-raised in the consumer below
            steps.put(("error", exc))

    thread = threading.Thread(target=work, name="medsam-finetune")
    thread.start()
    kind = "step"
    try:
        while True:
            kind, value = steps.get()
            if kind == "error":
                raise value
            if kind == "done":
                return value
            yield value
            taken.release()
    finally:
        if kind == "step":  # the consumer stopped early (its own error): stop the round too
            cancel.set()
            taken.release()
        thread.join()  # never leave a thread inside torch behind (it aborts the process at exit)


class TrainActions:
    """Fine-tuning for one widget ``Session``: pairs, guarded rounds, accept/rollback, save.

    Callbacks (GUI thread; the panel sets them): ``on_progress(step, total, loss)``,
    ``on_finished(what)`` with what in {"accepted", "refused", "cancelled", "error"},
    ``on_model(model)`` to make a model the one that serves boxes (default: ``session.set_model``).
    """

    def __init__(self, session, on_model: Callable | None = None):
        self.s = session
        self.pairs: list[tuple] = []  # (image layer, labels layer)
        self.guard: FineTuneSession | None = None
        # Every round's checkpoint (with its metadata) is kept, as issue 5 asks; a script may
        # point this elsewhere or set it to None.
        self.rounds_dir = _default_rounds_dir()
        self.cancel_event: threading.Event | None = None
        self.losses: list[float] = []
        self.last_round: Round | None = None
        self.summary = "no fine-tuning yet"
        self._serving = None  # the model served when the running round started
        self.on_progress: Callable = lambda step, total, loss: None
        self.on_finished: Callable = lambda what: None
        self.on_model = on_model or session.set_model

    # -- pairs ----------------------------------------------------------------------------------
    def _layer(self, layer, kind: str):
        layers = self.s.viewer.layers
        if isinstance(layer, str):
            if layer not in layers:
                raise MedSAMError(f"no layer named {layer!r}: pick an existing {kind} layer")
            return layers[layer]
        if layer not in layers:
            raise MedSAMError(f"the {kind} layer {getattr(layer, 'name', layer)!r} is not in the viewer")
        return layer

    def add_pair(self, image, labels) -> int:
        """Add an (image layer, labels layer) pair (layers or names); returns how many pairs there are."""
        from napari.layers import Image, Labels

        image, labels = self._layer(image, "image"), self._layer(labels, "labels")
        if not isinstance(image, Image) or not isinstance(labels, Labels):
            raise MedSAMError("a training pair is an Image layer and a Labels layer")
        if any(i is image and lab is labels for i, lab in self.pairs):
            raise MedSAMError(f"the pair {image.name!r} + {labels.name!r} is already in the list")
        self.pairs.append((image, labels))
        return len(self.pairs)

    def remove_pair(self, index: int) -> None:
        if not 0 <= index < len(self.pairs):
            raise MedSAMError(f"no training pair {index}: there are {len(self.pairs)}")
        del self.pairs[index]

    def _snapshot(self, pairs) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of the layers' data (GUI thread), so edits during training change nothing."""
        out = []
        for image, labels in pairs:
            image, labels = self._layer(image, "image"), self._layer(labels, "labels")
            spatial = image.ndim - (1 if image.rgb else 0)
            if spatial != 2 or labels.ndim != 2:
                raise TrainingError(
                    f"fine-tuning takes 2D images and labels; {image.name!r} has {image.ndim} dimensions and "
                    f"{labels.name!r} {labels.ndim}: add the slices to train on as 2D layers"
                )
            out.append((np.array(image.data), np.array(labels.data)))
        return out

    # -- guard ----------------------------------------------------------------------------------
    def _guard(self) -> FineTuneSession:
        """The guard for the model the widget serves now; a model loaded from elsewhere starts a new one."""
        model = self.s.model
        if model is None:
            raise MedSAMError("no model loaded: load one (Model > Load) before fine-tuning")
        if self.guard is None or self.guard.active_model is not model:
            self.guard = FineTuneSession(model, out_dir=self.rounds_dir, cache=self.s.cache)
        return self.guard

    @property
    def running(self) -> bool:
        return self.cancel_event is not None

    def start(self, pairs=None, mode: str = "decoder", epochs: int = 20, holdout: float = 0.25,
              start: str = "base", force: bool = False) -> None:
        """Validate, then run one guarded round in the background (``Runner.run_steps``)."""
        if self.running:
            raise MedSAMError("a fine-tuning round is running: wait for it or cancel it first")
        if mode not in MODES:
            raise TrainingError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if start not in START_CHOICES:
            raise TrainingError(f"start must be one of {', '.join(START_CHOICES)}; got {start!r}")
        from medsam_core.data import make_training_data

        pairs = list(pairs if pairs is not None else self.pairs)
        if not pairs:
            raise TrainingError("no image/labels pairs: add at least one image with its labels layer")
        data = make_training_data(self._snapshot(pairs))
        guard = self._guard()
        config = TrainConfig(mode=mode, epochs=int(epochs), holdout=float(holdout),
                             base_model=guard.base_model.spec.name,
                             base_checkpoint=getattr(guard.base_model, "weights_path", None)).validate()
        try:
            intensity = self.s.intensity() if self.s.image_layer is not None else None
        except MedSAMError:
            intensity = None
        self.cancel_event, self.losses, self._serving = threading.Event(), [], self.s.model
        self.s.on_status(f"MedSAM: fine-tuning ({mode}, {len(data)} objects, {config.epochs} epochs)...")
        # the widget's intensity and channel: decoder mode then reuses the embeddings it cached
        self.s.runner.run_steps(_round_steps, guard, data, config, start, force, intensity, self.s.settings.channel,
                                self.cancel_event, on_step=self._on_step, on_done=self._on_done,
                                on_error=self._on_error, desc="MedSAM: fine-tuning")

    def cancel(self) -> None:
        """Stop the running round between steps; the active model stays as it is."""
        if self.cancel_event is not None:
            self.cancel_event.set()

    def _on_step(self, value) -> None:
        step, total, loss = value
        self.losses.append(loss)
        self.on_progress(step, total, loss)

    def _on_done(self, rnd: Round) -> None:
        self.cancel_event, self.last_round = None, rnd
        self.summary = self.describe(rnd)
        if rnd.accepted and self.s.model is self._serving:
            self.on_model(self.guard.active_model)
        elif rnd.accepted:  # another model was loaded meanwhile: the user's choice wins
            self.summary += "; not served: another model was loaded during the round (save it from the guard)"
        self.s.on_status(f"MedSAM: {self.summary}")
        self.on_finished("accepted" if rnd.accepted else "refused")

    def _on_error(self, exc: Exception) -> None:
        self.cancel_event = None
        if isinstance(exc, CancelledError):
            self.summary = "fine-tuning cancelled; the active model is unchanged"
            self.s.on_status(f"MedSAM: {self.summary}")
            self.on_finished("cancelled")
            return
        self.summary = f"fine-tuning failed: {exc}; the active model is unchanged"
        self.on_finished("error")
        self.s.on_error(exc if isinstance(exc, MedSAMError) else MedSAMError(f"fine-tuning failed: {exc}"))

    @staticmethod
    def describe(rnd: Round) -> str:
        r = rnd.result
        verdict = ("accepted (forced)" if rnd.forced else "accepted") if rnd.accepted else \
            "refused: not better than the active model (use anyway to force)"
        where = f"; checkpoint written to {rnd.checkpoint}" if rnd.checkpoint is not None else ""
        return (f"round {rnd.number} ({r.config.mode}, {r.n_train} objects trained, {r.n_heldout} held out): "
                f"held-out Dice {rnd.dice_active:.3f} -> {r.dice_after:.3f}, {verdict}{where}")

    # -- decisions ------------------------------------------------------------------------------
    def use_anyway(self):
        """Make the last (refused) round's model active all the same; ``rollback`` undoes it."""
        rnd = self.last_round
        if rnd is None or self.guard is None:
            raise MedSAMError("no fine-tuning round to use: fine-tune first")
        if self.guard.active_model is not self.s.model:
            raise MedSAMError("another model was loaded since that round: fine-tune again")
        self.guard.accept(rnd)
        self.on_model(rnd.model)
        self.summary = self.describe(rnd)
        return rnd.model

    @property
    def can_rollback(self) -> bool:
        return self.guard is not None and self.guard.can_rollback and self.guard.active_model is self.s.model

    def rollback(self):
        """Serve the model that was active before the last accepted round again; returns it."""
        if not self.can_rollback:
            raise MedSAMError("nothing to roll back: no fine-tuned model of this session is active")
        model = self.guard.rollback()
        if self.last_round is not None and self.last_round.model is not model:
            self.last_round.accepted = False
        self.on_model(model)
        self.summary = f"rolled back to {model.spec.name} ({model.weights_sha256[:12]})"
        self.s.on_status(f"MedSAM: {self.summary}")
        return model

    def save(self, path):
        """Write the active model as a checkpoint with its metadata (atomic); returns the path."""
        from medsam_core.checkpoint import save_checkpoint

        model = self.s.model
        if model is None:
            raise MedSAMError("no model loaded: nothing to save")
        if not str(path).strip():
            raise MedSAMError("give a file name for the checkpoint")
        if self.guard is not None and self.guard.active_model is model:
            return self.guard.save_active(path)
        meta = dict(getattr(model, "meta", {}) or {})
        meta.setdefault("base_model", model.spec.name)
        return save_checkpoint(path, model, meta)


def _default_rounds_dir():
    """<MEDSAM_CACHE_DIR or ~/.cache/napari-medsam>/finetune-rounds/<start time>."""
    import time

    from medsam_core.backends import default_cache_dir

    return default_cache_dir() / "finetune-rounds" / time.strftime("%Y%m%d-%H%M%S")
