"""Shared pieces of the fault catalogue: tiny real files, hostile checkpoints, a model-load tripwire.

Every case in tests/faults/ is one row of a table: what a user (or a crash, or an attacker) does,
and what must happen. Rows marked "bug" failed before their fix (issue 14); the others record
behaviour that already held and must keep holding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

BOX_HEADER = "x_min,y_min,x_max,y_max"


def tiny_image(shape=(64, 64), seed=0, dtype=np.uint16) -> np.ndarray:
    """A bright disk on a noisy background: small, fast, and not constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disk = (yy - shape[0] // 2) ** 2 + (xx - shape[1] // 2) ** 2 <= (min(shape) // 4) ** 2
    return (rng.integers(10, 60, size=shape) + 400 * disk).astype(dtype)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Evil:
    """Unpickling this creates ``path``: the proof that a load ran code from the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def files(tmp_path):
    """A small working set: image.tif (64 x 64), boxes.csv (one box), and a marker path for pickles."""
    img = tmp_path / "image.tif"
    tifffile.imwrite(img, tiny_image())
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"{BOX_HEADER}\n16,16,47,47\n")
    ns = type("Files", (), {})()
    ns.dir, ns.image, ns.boxes, ns.marker = tmp_path, img, boxes, tmp_path / "PWNED"
    return ns


@pytest.fixture
def evil_checkpoint(tmp_path):
    """A .pt file whose unpickling would create tmp_path/PWNED (a real torch.save of a hostile object)."""
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "meta": {"x": Evil(tmp_path / "PWNED")}}, path)
    return path


@pytest.fixture(scope="session")
def bundled_state():
    """The bundled LiteMedSAM state dict (read once; tensors on CPU)."""
    from medsam_core.checkpoint import read_state_dict
    from medsam_core.registry import bundled_weights_path, get_spec

    state, _ = read_state_dict(bundled_weights_path(get_spec("lite_medsam")))
    return state


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model: refusals must come before model work."""

    import medsam_core.cli_batch  # noqa: F401  (binds load_from_args at import: import it unpatched)

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr("medsam_core.checkpoint.load_model", tripwire)
    monkeypatch.setattr("medsam_core.cli.load_from_args", tripwire)
    monkeypatch.setattr("medsam_core.cli_batch.load_from_args", tripwire)


def run_cli(argv, capsys) -> tuple[int, str]:
    """``medsam ARGV`` in-process -> (exit code, stderr)."""
    from medsam_core import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def age(path: Path, seconds: float = 7200.0) -> Path:
    """Make ``path`` look ``seconds`` old (as if left by a run killed long ago)."""
    t = os.path.getmtime(path) - seconds
    os.utime(path, (t, t))
    return path
