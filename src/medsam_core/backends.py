"""Image-encoder backends: PyTorch eager (any device) and an exported CPU engine (OpenVINO).

The encoder decides how interactive the tool feels on a laptop: every new image or slice waits
for it. ``make_encoder_backend(model, "auto")`` picks, for a model on the CPU, an OpenVINO
engine exported from *this* model's weights (cached on disk under the encoder's weight hash,
verified against PyTorch when it is made), and PyTorch eager everywhere else. The first export
runs in a separate process while eager serves (``_engine_build.py``), so nobody waits for it. Whatever goes
wrong with the engine (not installed, export, compile or inference failing, verification
refused) ends in a warning and PyTorch eager, never in a crash.

Settings (environment, read when a backend is made):

* ``MEDSAM_ENCODER_BACKEND``: ``auto`` (default), ``openvino`` or ``torch``.
* ``MEDSAM_ENCODER_PRECISION``: ``auto`` (default: f32; bf16 only if ``BF16_BY_DEFAULT`` is
  switched on by a passing mask check), ``f32``, ``bf16`` or ``f16`` (OpenVINO engine only).
* ``MEDSAM_NUM_THREADS``: intra-op threads for the encoder (both engines); unset = the engine's
  own default (all physical cores).
* ``MEDSAM_CACHE_DIR``: root of the on-disk cache (default: the user cache dir,
  e.g. ``~/.cache/napari-medsam``); engines live under ``<root>/engines/``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import MedSAMError

BACKENDS = ("auto", "openvino", "torch")
# Architectures for which "auto" tries the exported engine. ViT-B (1024) would export too, but
# its export and verification take minutes: ask for it explicitly with backend="openvino".
AUTO_ENGINE_ARCHS = frozenset({"tinyvit_256"})
# bf16 inference where the CPU has it: set from the mask accuracy measured on every 2D sample
# case (benchmarks/bench_encoder.py --precision; docs/engines.md, "Precision").
BF16_BY_DEFAULT = False
_warned_missing = False


class EngineError(MedSAMError):
    """An inference engine could not be exported, compiled, verified or run."""


class BackendChoiceError(EngineError, ValueError):
    """An encoder backend name that is not one (the argument or $MEDSAM_ENCODER_BACKEND): the CLI
    prints it as any other MedSAM error, exit 2, instead of a traceback after the model loaded."""


def default_cache_dir() -> Path:
    """``$MEDSAM_CACHE_DIR``, else the platform's user cache dir for napari-medsam."""
    env = os.environ.get("MEDSAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("napari-medsam", appauthor=False))
    except ImportError:  # platformdirs comes with napari; the core must not need it
        return Path.home() / ".cache" / "napari-medsam"


def num_threads_setting(num_threads: int | None = None) -> int | None:
    """``num_threads`` if given, else ``$MEDSAM_NUM_THREADS``, else None (engine default)."""
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        return int(num_threads)
    env = os.environ.get("MEDSAM_NUM_THREADS", "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise EngineError(
            f"MEDSAM_NUM_THREADS={env!r} is not a whole number: set e.g. 2, or unset it"
        ) from None
    if value < 1:
        raise EngineError(f"MEDSAM_NUM_THREADS={env!r} must be >= 1, or unset for the engine default")
    return value


class EncoderBackend:
    """Runs a model's image encoder: (B, 3, S, S) float32 -> (B, 256, 64, 64) float32 NumPy.

    ``name`` says which engine actually runs ("torch", "openvino"); ``info`` holds how it was
    made (export/verification report for engines).
    """

    name = "base"

    def __init__(self) -> None:
        self.info: dict = {}

    def encode(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Encode each (B, 3, S, S) batch in turn, yielding its (B, 256, 64, 64) embeddings.

        A generator, so a caller (volume encoding) can show progress and use finished slices
        while later ones encode.
        """
        for batch in batches:
            yield self.encode(batch)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` intra-op threads and restore the caller's setting afterwards."""
    import torch

    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchEncoder(EncoderBackend):
    """PyTorch eager on the model's device.

    On CUDA the encoder runs under autocast: ``autocast="auto"`` picks bfloat16 where the GPU
    supports it, else float16; ``"float16"``, ``"bfloat16"`` force one, ``"off"`` keeps float32.
    Outputs are always float32.
    """

    name = "torch"

    def __init__(self, model, num_threads: int | None = None, autocast: str = "auto"):
        super().__init__()
        if autocast not in ("auto", "off", "float16", "bfloat16"):
            raise ValueError("autocast must be 'auto', 'off', 'float16' or 'bfloat16'")
        self.model = model
        self.num_threads = num_threads_setting(num_threads)
        self.autocast = autocast

    def autocast_dtype(self):
        """The torch dtype used under autocast on this device, or None (float32)."""
        import torch

        device = next(self.model.parameters()).device
        if device.type != "cuda" or self.autocast == "off":
            return None
        if self.autocast == "float16":
            return torch.float16
        if self.autocast == "bfloat16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        dtype = self.autocast_dtype()
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        amp = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), _torch_threads(self.num_threads), amp:
            out = self.model.encode(x)
        return out.float().cpu().numpy()


class EngineEncoder(EncoderBackend):
    """Wraps an exported engine; if inference fails, warns once and runs PyTorch eager instead."""

    def __init__(self, engine, fallback: TorchEncoder, info: dict):
        super().__init__()
        self._engine = engine
        self._fallback = fallback
        self._lock = threading.Lock()  # one infer request: one call at a time
        self._token = _weights_token(fallback.model)
        self.info = info
        self.name = info.get("engine", "engine")
        self.failed: str | None = None

    def _weights_changed(self) -> bool:
        """True when the encoder's weights were changed in place since the export was chosen
        (version counters are cheap; the hash is recomputed only when they moved)."""
        token = _weights_token(self._fallback.model)
        if token == self._token:
            return False
        self._token = token
        return encoder_hash(self._fallback.model) != self.info.get("encoder_id")

    def encode(self, batch: np.ndarray) -> np.ndarray:
        if self.failed is None and self._weights_changed():
            self.failed = "the encoder weights changed after the export"
            self.name = "torch"
            warnings.warn("the image-encoder weights changed in place, so the exported engine is stale; "
                          "using PyTorch eager (after checkpoint.finish_model(...) a new Predictor "
                          "exports the new weights)",
                          RuntimeWarning, stacklevel=2)
        if self.failed is None:
            try:
                with self._lock:
                    out = self._engine(np.ascontiguousarray(batch, dtype=np.float32))
                if out.shape[0] != len(batch) or not np.isfinite(out).all():
                    raise EngineError(f"engine returned {out.shape} with non-finite values or wrong batch")
                return out
            except Exception as exc:  # any engine error: the user still gets masks
                self.failed = f"{type(exc).__name__}: {exc}"
                self.name = "torch"
                warnings.warn(
                    f"the {self.info.get('engine')} encoder failed at inference ({self.failed}); "
                    "using PyTorch eager from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self._fallback.encode(batch)


def _weights_token(model) -> tuple:
    enc = model.image_encoder
    return tuple((id(t), t._version) for t in (*enc.parameters(), *enc.buffers()))


def encoder_hash(model) -> str:
    """sha256 of the image-encoder weights as they are now (same value as ``model.encoder_id``
    right after loading; ~0.1 s for LiteMedSAM)."""
    from .checkpoint import state_dict_sha256

    return state_dict_sha256(model.state_dict(), prefix="image_encoder.")


def import_openvino():
    """``import openvino``, with OpenVINO's own telemetry stub in place of ``openvino-telemetry``.

    ``import openvino`` loads its converter, which sends anonymous usage events unless the user
    opted out; OpenVINO ships a no-op stub for installs without ``openvino-telemetry`` and we
    make it use that, because the engine is built without the user asking. If the application
    imported openvino before us, its own setting stands.
    """
    import sys

    # One thread at a time: a second thread that found "openvino" in sys.modules while the first
    # was still importing it got a half-initialised module ("no attribute 'get_version'", seen when
    # the 3D worker and the background encode started together). The import statement below
    # also waits for an import that another thread (not through this function) has under way.
    with _IMPORT_LOCK:
        if "openvino" not in sys.modules:
            saved = sys.modules.get("openvino_telemetry", _MISSING)
            sys.modules["openvino_telemetry"] = None  # "import openvino_telemetry" -> ImportError -> stub
            try:
                import openvino  # noqa: F401
            finally:
                if saved is _MISSING:
                    sys.modules.pop("openvino_telemetry", None)
                else:
                    sys.modules["openvino_telemetry"] = saved
        import openvino

    return openvino


_MISSING = object()
_IMPORT_LOCK = threading.Lock()


def openvino_available() -> bool:
    """True when the ``openvino`` package can be found (not imported: it is heavy)."""
    import importlib.util
    import sys

    if "openvino" in sys.modules:
        return sys.modules["openvino"] is not None  # None: import blocked (tests do this)
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def make_encoder_backend(model, backend: str | EncoderBackend | None = "auto", *,
                         cache_dir: str | os.PathLike | None = None, num_threads: int | None = None,
                         precision: str | None = None) -> EncoderBackend:
    """Choose and build the encoder backend for ``model``.

    backend: "auto" (OpenVINO for a registered small model on the CPU when installed and
    verified, else PyTorch eager), "openvino", "torch", an EncoderBackend instance (returned
    as is), or None (``$MEDSAM_ENCODER_BACKEND``, default "auto").
    cache_dir: root of the engine cache (default ``default_cache_dir()``).
    num_threads: intra-op threads (default ``$MEDSAM_NUM_THREADS`` or the engine's own default).
    precision: OpenVINO inference precision: "f32", "bf16", "f16" or "auto" (f32: bf16 and f16
    fail the mask check, docs/engines.md "Precision"; ``BF16_BY_DEFAULT`` would make it bf16
    where the CPU computes bf16 natively); None reads
    ``$MEDSAM_ENCODER_PRECISION`` (default "auto").
    Never raises for engine trouble: it warns and returns a TorchEncoder (for "auto" without an
    export yet: an ``_engine_build.BackgroundEngineEncoder`` that runs eager until a separate process has
    exported the engine).
    """
    global _warned_missing
    if isinstance(backend, EncoderBackend):
        return backend
    choice = (backend or os.environ.get("MEDSAM_ENCODER_BACKEND") or "auto").lower()
    if choice not in BACKENDS:
        where = f"MEDSAM_ENCODER_BACKEND={choice!r}: " if not backend else ""
        raise BackendChoiceError(f"{where}unknown encoder backend {choice!r}: use one of {', '.join(BACKENDS)}"
                                 + (", or unset it" if where else ""))
    eager = TorchEncoder(model, num_threads=num_threads)
    if choice == "torch":
        return eager
    device = next(model.parameters()).device
    arch = getattr(getattr(model, "spec", None), "arch", None)
    if device.type != "cpu":
        if choice == "openvino":
            warnings.warn(f"the OpenVINO encoder runs on the CPU only; the model is on {device}: "
                          "using PyTorch", RuntimeWarning, stacklevel=2)
        return eager
    if choice == "auto" and arch not in AUTO_ENGINE_ARCHS:
        return eager
    if getattr(model, "image_encoder", None) is None:  # not a SamModel (a test double): nothing to export
        return eager
    if not openvino_available():
        if choice == "openvino" or not _warned_missing:
            _warned_missing = True
            warnings.warn("OpenVINO is not installed, so the image encoder runs in PyTorch eager (about "
                          "3x slower on a CPU): pip install openvino",
                          RuntimeWarning, stacklevel=2)
        return eager
    from . import _openvino_engine

    actual = encoder_hash(model)
    if actual != getattr(model, "encoder_id", None):
        # The weights were changed after load_model/finish_model computed encoder_id: an export
        # keyed on the old id would be stale (and so would cached embeddings).
        warnings.warn("model.encoder_id does not match the image-encoder weights (changed in place?): "
                      "using PyTorch eager; call checkpoint.finish_model(...) after changing weights",
                      RuntimeWarning, stacklevel=2)
        return eager
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    precision = _native_or_f32(_precision_setting(precision))
    if choice == "auto" and not _openvino_engine.has_export(model, root, precision):
        # A first export takes ~20-40 s: "auto" never makes the user wait for it. Eager serves
        # while a separate process exports; later images use the engine once it is ready.
        return _background(model, eager, root, precision)
    try:
        engine, info = _openvino_engine.load_or_export(model, root, eager.num_threads, precision)
    except Exception as exc:  # export, compile or verification: fall back, say why
        warnings.warn(f"the OpenVINO encoder is not used ({type(exc).__name__}: {exc}); "
                      "using PyTorch eager", RuntimeWarning, stacklevel=2)
        return eager
    return EngineEncoder(engine, eager, info)


PRECISIONS = ("auto", "f32", "bf16", "f16")


def _cpu_has(capability: str) -> bool:
    """True when OpenVINO lists ``capability`` ("BF16", "FP16") among the CPU's optimisation capabilities."""
    try:
        ov = import_openvino()
        return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, or a plugin without the property
        return False


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX), as OpenVINO reports it."""
    return _cpu_has("BF16")


def cpu_has_f16() -> bool:
    """True when the CPU computes float16 natively (AVX512_FP16 or AMX_FP16), as OpenVINO reports it."""
    return _cpu_has("FP16")


def _is_native(precision: str) -> bool:
    """False for a low precision this CPU does not compute natively (f32 is always native)."""
    if precision == "bf16":
        return cpu_has_bf16()
    if precision == "f16":
        return cpu_has_f16()
    return True


def _precision_setting(precision: str | None) -> str:
    """"f32", "bf16" or "f16" from the argument, else ``$MEDSAM_ENCODER_PRECISION``, else "auto"."""
    value = (precision or os.environ.get("MEDSAM_ENCODER_PRECISION") or "auto").strip().lower()
    if value not in PRECISIONS:
        raise EngineError(f"encoder precision {value!r} is not one of {', '.join(PRECISIONS)}: "
                          "set MEDSAM_ENCODER_PRECISION to one of them, or unset it")
    if value == "auto":
        return "bf16" if BF16_BY_DEFAULT and cpu_has_bf16() else "f32"
    return value


def requested_precision() -> str:
    """The precision ``make_encoder_backend`` would ask the OpenVINO engine for now:
    $MEDSAM_ENCODER_PRECISION resolved ("auto": f32 unless ``BF16_BY_DEFAULT``), f32 where the CPU
    lacks the low precision natively. No warning (``make_encoder_backend`` gives it). Part of every
    embedding key (``Predictor.encoder_precision``)."""
    precision = _precision_setting(None)
    return precision if _is_native(precision) else "f32"


def _native_or_f32(precision: str) -> str:
    """``precision``, or "f32" with a warning where the CPU lacks it natively: OpenVINO then
    computes in float32 anyway (measured for bf16 on an AVX2-only EPYC: the same numbers and time
    as f32), and a second export under the low precision's name would only cost disk and a build."""
    if _is_native(precision):
        return precision
    warnings.warn(f"encoder precision {precision!r} was asked for (MEDSAM_ENCODER_PRECISION or precision=), "
                  f"but this CPU does not compute {precision} natively: using f32", RuntimeWarning, stacklevel=3)
    return "f32"


def _background(model, eager: TorchEncoder, root: Path, precision: str) -> EncoderBackend:
    """Start the export in a separate process (or join a running one); eager serves meanwhile."""
    from . import _engine_build, _openvino_engine
    from .registry import get_spec

    try:
        get_spec(model.spec.name)  # the child rebuilds the model from the registry
        folder = _openvino_engine.engine_dir(root, model.encoder_id, int(model.input_size), precision)
        job = _engine_build.start(model, root, folder, precision)
    except Exception as exc:  # unregistered model, unwritable cache, no process: eager only
        warnings.warn(f"the OpenVINO encoder cannot be built in the background ({type(exc).__name__}: "
                      f"{exc}); using PyTorch eager ('medsam export' builds it in the foreground)",
                      RuntimeWarning, stacklevel=3)
        return eager
    return _engine_build.BackgroundEngineEncoder(model, eager, root, precision, job)
