"""train/finetune.py under torchrun: 2 CPU processes (gloo), a tiny synthetic folder, 2 steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def write_folder(root: Path) -> tuple[Path, Path]:
    """Two 96x128 images with three disks each, and their label images (same file names)."""
    import tifffile

    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    yy, xx = np.mgrid[:96, :128]
    for k, shift in enumerate((0, 7)):
        img = np.full((96, 128), 20, np.uint8)
        lab = np.zeros((96, 128), np.uint16)
        for i, (cy, cx) in enumerate(((30, 30 + shift), (60, 90), (25, 100 - shift))):
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2
            img[m], lab[m] = 200, i + 1
        tifffile.imwrite(images / f"img{k}.tif", img)
        tifffile.imwrite(labels / f"img{k}.tif", lab)
    return images, labels


@pytest.mark.slow
def test_two_process_gloo_run_saves_a_strict_checkpoint_with_identical_ranks(tmp_path):
    import torch

    from medsam_core import load_model

    images, labels = write_folder(tmp_path)
    out, hashes = tmp_path / "ft.pt", tmp_path / "hashes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "train" / "finetune.py"), "--images", str(images), "--labels", str(labels),
        "--out", str(out), "--mode", "decoder", "--epochs", "1", "--max-steps", "2", "--batch-size", "2",
        "--lr", "1e-3", "--device", "cpu", "--log-every", "1", "--hash-dir", str(hashes),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout and "step 2/2" in proc.stdout
    assert proc.stdout.count("world size 2") == 1  # only rank 0 logs

    rank0, rank1 = (hashes / "rank0.sha256").read_text(), (hashes / "rank1.sha256").read_text()
    assert rank0 == rank1  # DDP kept the replicas identical

    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["mode"] == "decoder" and ckpt["spec"]["name"] == "lite_medsam"
    assert "optimizer" in ckpt and ckpt["meta"]["world_size"] == 2
    model = load_model("lite_medsam", checkpoint=out, device="cpu")  # strict
    base = load_model("lite_medsam", device="cpu")
    from medsam_core.checkpoint import state_dict_sha256

    assert state_dict_sha256(model.state_dict()) == rank0  # rank 0 saved what both ranks had
    assert model.encoder_id == base.encoder_id and model.weights_sha256 != base.weights_sha256
