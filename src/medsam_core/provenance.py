"""Provenance per object: how each label id was made, kept beside the labels as JSON.

For every label id an ``ObjectRecord`` keeps its class (``ClassTable``: id -> class name, with a
default class), the prompts (boxes / points / key boxes, with their slice), the model name, its
weights sha256 and fine-tuning round, created/modified timestamps (ISO 8601 UTC), whether a person
edited the object afterwards, its area, and the model's own mask (run-length encoded inside its
bounding box) so that later edits are detected exactly and the model's mask can be compared with
the one the person kept (``effort.py``).

File: ``labels.tif`` -> ``labels.provenance.json`` (``sidecar_path``), written atomically. On load,
records whose id is missing from the labels are dropped with a warning; a file that is not ours or
is corrupt raises ``ProvenanceError`` saying what to do.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import write_text_atomic
from ._paths import split_suffix
from .errors import MedSAMError

FORMAT = "napari-medsam-provenance"
VERSION = 1
PROMPT_KINDS = ("box", "point", "key_box", "recist", "polygon")


class ProvenanceError(MedSAMError, ValueError):
    """A provenance file is corrupt, foreign, or does not fit the labels."""


def now_iso() -> str:
    """Current time, ISO 8601 UTC with seconds (e.g. ``2024-05-01T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sidecar_path(labels_path: str | os.PathLike) -> Path:
    """``dir/labels.tif`` (or ``.nii.gz``, ``.ome.tif``, ...) -> ``dir/labels.provenance.json``."""
    p = Path(labels_path)
    return p.with_name(split_suffix(p)[0] + ".provenance.json")


def _labels_file_of(sidecar: Path) -> str | None:
    """The labels file name a sidecar says it belongs to (None: older sidecars, or unreadable)."""
    try:
        d = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d.get("labels_file") if isinstance(d, dict) and isinstance(d.get("labels_file"), str) else None


# -- masks inside their bounding box, run-length encoded ------------------------------------------
def encode_mask(mask: np.ndarray) -> dict | None:
    """(H, W) or (Z, H, W) bool -> {"shape", "bbox" [start..., stop...], "runs"}; None if empty.
    runs: alternating run lengths of the C-order flattened crop, starting with a run of zeros."""
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    idx = np.nonzero(m)
    start = [int(i.min()) for i in idx]
    stop = [int(i.max()) + 1 for i in idx]
    crop = m[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))].ravel()
    change = np.flatnonzero(np.diff(crop.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [crop.size]])
    runs = np.diff(bounds).tolist()
    if crop[0]:
        runs = [0, *runs]
    return {"shape": list(m.shape), "bbox": start + stop, "runs": [int(r) for r in runs]}


def decode_mask(rle: dict | None, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``encode_mask`` onto an array of ``shape`` (an empty mask for None)."""
    out = np.zeros(shape, bool)
    if rle is None:
        return out
    try:
        nd = len(shape)
        start, stop = rle["bbox"][:nd], rle["bbox"][nd:]
        if list(rle["shape"]) != list(shape):
            raise ProvenanceError(f"a stored mask has shape {rle['shape']} but the labels are {list(shape)}")
        size = int(np.prod([b - a for a, b in zip(start, stop, strict=True)]))
        runs = np.asarray(rle["runs"], np.int64)
        if runs.sum() != size or (runs < 0).any():
            raise ProvenanceError("a stored mask is corrupt (run lengths do not fill its box)")
        values = np.arange(len(runs)) % 2 == 1
        crop = np.repeat(values, runs).reshape([b - a for a, b in zip(start, stop, strict=True)])
        out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = crop
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProvenanceError):
            raise
        raise ProvenanceError(f"a stored mask is corrupt ({exc}); delete the provenance file to start over") from None
    return out


# -- records ---------------------------------------------------------------------------------------
@dataclass
class Prompt:
    """One prompt: kind "box" (data [x0, y0, x1, y1]), "point" (data [x, y], ``positive``),
    "key_box" (a 3D key slice box), "recist" (a line [x0, y0, x1, y1], or long + short axis: 8
    numbers) or "polygon" ([x0, y0, x1, y1, ...], at least 3 vertices); ``z`` the slice (None in 2D)."""

    kind: str
    data: list[float]
    z: int | None = None
    positive: bool = True

    def __post_init__(self):
        if self.kind not in PROMPT_KINDS:
            raise ProvenanceError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}; got {self.kind!r}")
        self.data = [float(v) for v in self.data]
        n = len(self.data)
        ok = {"point": n == 2, "recist": n in (4, 8), "polygon": n >= 6 and n % 2 == 0}.get(self.kind, n == 4)
        if not ok:
            need = {"point": "2", "recist": "4 or 8", "polygon": "an even number (at least 6) of"}.get(self.kind, "4")
            raise ProvenanceError(f"a {self.kind} prompt needs {need} numbers, got {n}")


@dataclass
class ObjectRecord:
    """How label id ``label`` was made (see the module docstring)."""

    label: int
    class_id: int
    prompts: list[Prompt] = field(default_factory=list)
    model: str | None = None
    weights_sha256: str | None = None
    round: int | None = None  # fine-tuning round of the model (0 = base model)
    created: str = field(default_factory=now_iso)
    modified: str = field(default_factory=now_iso)
    edited_by_person: bool = False
    area: int = 0
    model_mask: dict | None = None  # encode_mask of the mask the model made

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassTable:
    """Class id -> class name, with the id new objects get by default."""

    names: dict[int, str] = field(default_factory=lambda: {1: "object"})
    default: int = 1

    def __post_init__(self):
        self.names = {int(k): str(v) for k, v in self.names.items()}
        if self.default not in self.names:
            raise ProvenanceError(f"default class {self.default} is not in the class table {self.names}")

    def add(self, name: str) -> int:
        """Add a class (or return the id it already has)."""
        for k, v in self.names.items():
            if v == name:
                return k
        new = max(self.names, default=0) + 1
        self.names[new] = name
        return new


class Provenance:
    """Records of the objects of one label image (2D or 3D) plus its class table."""

    def __init__(self, classes: ClassTable | None = None):
        self.classes = classes or ClassTable()
        self.records: dict[int, ObjectRecord] = {}
        # The annotation event log (time s, "prompt" | "commit", label id), saved with the records so
        # that effort per round (effort.py, which reads these as effort.Event) survives a restart.
        self.events: list[tuple[float, str, int]] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, label: int) -> ObjectRecord:
        return self.records[int(label)]

    def __contains__(self, label) -> bool:
        return int(label) in self.records

    def record_model_mask(self, label: int, mask: np.ndarray, prompts=(), model=None, round: int | None = None,
                          class_id: int | None = None, when: str | None = None) -> ObjectRecord:
        """Record that the model made ``mask`` ((H, W) or (Z, H, W) bool) for ``label``, from
        ``prompts`` (Prompt list). model: a loaded model (its spec name and weights_sha256 are
        kept) or a name. Re-recording an id keeps ``created`` and its class; resets the edit flag."""
        label = int(label)
        if label <= 0:
            raise ProvenanceError(f"label ids start at 1 (0 is background); got {label}")
        cls = self.classes.default if class_id is None else int(class_id)
        if cls not in self.classes.names:
            raise ProvenanceError(f"class {cls} is not in the class table; add it first (classes.add(name))")
        mask = np.asarray(mask, bool)
        when = when or now_iso()
        old = self.records.get(label)
        name = model if isinstance(model, str) or model is None else model.spec.name
        sha = None if isinstance(model, str) or model is None else getattr(model, "weights_sha256", None)
        rec = ObjectRecord(
            label, old.class_id if old is not None and class_id is None else cls, list(prompts), name, sha, round,
            old.created if old is not None else when, when, False, int(mask.sum()), encode_mask(mask),
        )
        self.records[label] = rec
        return rec

    def set_class(self, label: int, class_id: int) -> None:
        if class_id not in self.classes.names:
            raise ProvenanceError(f"class {class_id} is not in the class table; add it first (classes.add(name))")
        self.records[int(label)].class_id = int(class_id)

    def model_mask(self, label: int, shape: tuple[int, ...]) -> np.ndarray:
        """The mask the model made for ``label`` (empty if the person painted it)."""
        return decode_mask(self.records[int(label)].model_mask, tuple(shape))

    def sync_with_labels(self, labels: np.ndarray, when: str | None = None) -> dict[str, list[int]]:
        """Compare every record with the current ``labels`` ((H, W) or (Z, H, W) int) and update.

        An id whose mask differs from the model's mask is flagged ``edited_by_person`` (modified
        time and area updated); an id with no record was painted by hand (a record with no
        prompts and no model, flagged edited); records whose id left the labels are removed.
        Returns {"edited": [...], "painted": [...], "removed": [...]} (newly changed ids only).
        """
        from scipy import ndimage

        lab = np.asarray(labels)
        if lab.dtype.kind not in "biu" or lab.ndim not in (2, 3):
            raise ProvenanceError(f"labels must be an integer (H, W) or (Z, H, W) array; got {lab.dtype} {lab.shape}")
        when = when or now_iso()
        objects = ndimage.find_objects(lab.astype(np.int64, copy=False))
        present = {i + 1: sl for i, sl in enumerate(objects) if sl is not None}
        report: dict[str, list[int]] = {"edited": [], "painted": [], "removed": []}
        for label in sorted(set(self.records) - set(present)):
            del self.records[label]
            report["removed"].append(label)
        for label, sl in present.items():
            current = lab[sl] == label
            rec = self.records.get(label)
            if rec is None:
                self.records[label] = ObjectRecord(label, self.classes.default, created=when, modified=when,
                                                   edited_by_person=True, area=int(current.sum()))
                report["painted"].append(label)
                continue
            if not np.array_equal(current, self.model_mask(label, lab.shape)[sl]) and not rec.edited_by_person:
                rec.edited_by_person = True
                rec.modified = when
                report["edited"].append(label)
            rec.area = int(current.sum())
        return report

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "classes": {str(k): v for k, v in self.classes.names.items()},
            "default_class": self.classes.default,
            "objects": [r.to_dict() for r in sorted(self.records.values(), key=lambda r: r.label)],
            "events": [[float(t), str(k), int(label)] for t, k, label in self.events],
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "provenance") -> Provenance:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProvenanceError(f"{source} is not a napari-medsam provenance file (no \"format\": \"{FORMAT}\")")
        if d.get("version") != VERSION:
            raise ProvenanceError(f"{source} has version {d.get('version')!r}; this napari-medsam reads {VERSION}")
        try:
            out = cls(ClassTable({int(k): v for k, v in d["classes"].items()}, int(d["default_class"])))
            for o in d["objects"]:
                prompts = [Prompt(**p) for p in o.get("prompts", [])]
                rec = ObjectRecord(**{**o, "prompts": prompts})
                rec.label, rec.class_id = int(rec.label), int(rec.class_id)
                if rec.class_id not in out.classes.names:
                    raise ProvenanceError(f"object {rec.label} has class {rec.class_id}, missing from the table")
                out.records[rec.label] = rec
            out.events = [(float(t), str(k), int(label)) for t, k, label in d.get("events", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ProvenanceError):
                raise
            raise ProvenanceError(f"{source} is corrupt ({type(exc).__name__}: {exc}); "
                                  "delete it or restore a backup") from None
        return out

    def save(self, labels_path: str | os.PathLike) -> Path:
        """Write beside the labels file (``sidecar_path``), atomically; returns the JSON path."""
        path = sidecar_path(labels_path)
        if not path.parent.is_dir():
            raise ProvenanceError(f"folder {path.parent} does not exist; create it first")
        name = Path(labels_path).name
        other = _labels_file_of(path)
        if other is not None and other != name and (path.parent / other).exists():
            raise ProvenanceError(
                f"{path.name} holds the provenance of {other}, which shares this name; it was kept and the "
                f"provenance of {name} was not written: save these labels under another name to keep both")
        text = json.dumps({**self.to_dict(), "labels_file": name}, indent=1)
        return write_text_atomic(path, text)

    @classmethod
    def load(cls, labels_path: str | os.PathLike, labels: np.ndarray | None = None) -> Provenance:
        """Read the provenance beside ``labels_path``; with ``labels``, drop (with a warning)
        records whose id is not in them. A missing file gives an empty Provenance."""
        path = sidecar_path(labels_path)
        if not path.exists():
            return cls()
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProvenanceError(f"cannot read {path}: {exc}; delete it or restore a backup") from None
        out = cls.from_dict(d, str(path))
        owner = d.get("labels_file") if isinstance(d, dict) else None
        if owner is not None and owner != Path(labels_path).name:  # e.g. case.nii.gz's beside case.tif
            warnings.warn(f"{path.name} is the provenance of {owner}, not of {Path(labels_path).name}: not used",
                          stacklevel=2)
            return cls()
        if labels is not None:
            present = set(np.unique(np.asarray(labels)).tolist()) - {0}
            gone = sorted(set(out.records) - present)
            if gone:
                warnings.warn(f"{path.name}: label ids {gone[:20]} are not in the labels; their records were dropped",
                              stacklevel=2)
                for label in gone:
                    del out.records[label]
        return out
