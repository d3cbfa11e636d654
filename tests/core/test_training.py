"""Fine-tuning: training samples, LoRA, train_step/fit, the guard, checkpoints, ``medsam train``.

Unit tests use synthetic disks and a randomly initialised model of LiteMedSAM's architecture
(cheap, no real weights); behaviour tests with the real bundled weights are marked slow.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from medsam_core import EmbeddingCache, Predictor, load_model
from medsam_core.checkpoint import finish_model, read_state_dict, state_dict_sha256
from medsam_core.data import (
    bounding_box,
    flip_image_and_boxes,
    jitter_boxes,
    make_training_data,
    prepare_variant,
    split_holdout,
)
from medsam_core.errors import CancelledError, TrainingError
from medsam_core.guard import FineTuneSession
from medsam_core.lora import LoRALinear, add_lora, merge_lora
from medsam_core.losses import DiceCELoss
from medsam_core.preprocess import lowres_to_masks
from medsam_core.registry import get_spec
from medsam_core.training import Batch, FitResult, TrainConfig, fit, lr_at, train_step


def disks(shape=(96, 128), centers=((30, 30), (60, 90), (30, 100)), radius=10):
    """(image uint8, labels int32): bright disks, label i+1 for centre i (row, col)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 20, np.uint8)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centers):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[m] = 200
        labels[m] = i + 1
    return image, labels


@pytest.fixture(scope="module")
def tiny_model():
    """LiteMedSAM's architecture with random weights (seeded), on CPU."""
    from medsam_core.modeling import build_model

    torch.manual_seed(0)
    return finish_model(build_model("tinyvit_256"), get_spec("lite_medsam"), device="cpu")


def weights_hash(model) -> str:
    return state_dict_sha256(model.state_dict())


# -- data ----------------------------------------------------------------------------------------
def test_objects_use_drawn_boxes_or_bounding_boxes():
    image, labels = disks()
    data = make_training_data([(image, labels)], boxes=[{2: (45, 45, 105, 75)}])
    assert [o.label for o in data.objects] == [1, 2, 3]
    assert data.objects[0].box == (20.0, 20.0, 40.0, 40.0) and not data.objects[0].drawn
    assert data.objects[1].box == (45.0, 45.0, 105.0, 75.0) and data.objects[1].drawn
    assert data.mask(2).sum() == (labels == 3).sum()


def test_a_stack_of_masks_is_accepted_as_labels():
    image, labels = disks()
    stack = np.stack([labels == i for i in (1, 2, 3)])
    data = make_training_data([(image, stack)])
    assert len(data) == 3 and np.array_equal(data.mask(1), labels == 2)


@pytest.mark.parametrize(
    "pairs, boxes, match",
    [
        ([], None, "no .image, labels. pairs"),
        ([(disks()[0], np.zeros((96, 128), np.int32))], None, "no objects"),
        ([disks(centers=((30, 30),))], None, "only 1 labelled object"),
        ([(disks()[0], disks()[1][:50])], None, "shape"),
        ([(np.where(disks()[1] > 0, np.nan, 1.0), disks()[1])], None, "NaN"),
        ([(disks()[0], np.where(disks()[1] > 0, np.nan, 0.0))], None, "NaN"),
        ([(disks()[0], np.stack([disks()[1] == 1, np.zeros((96, 128), bool)]))], None, "empty"),
        ([disks()], [{7: (1, 1, 20, 20)}], "empty"),
        ([disks()], [{1: (1, 1, 1, 20)}], "thinner"),
        ([disks()], [None, None], "2 box mappings"),
    ],
)
def test_bad_training_inputs_raise_training_error(pairs, boxes, match):
    with pytest.raises(TrainingError, match=match):
        make_training_data(pairs, boxes=boxes)


def test_holdout_split_keeps_one_object_on_each_side():
    data = make_training_data([disks()])
    train, held = split_holdout(data, 0.01, seed=1)
    assert (len(train), len(held)) == (2, 1)
    train, held = split_holdout(data, 0.99, seed=1)
    assert (len(train), len(held)) == (1, 2)
    assert sorted(o.label for o in train.objects + held.objects) == [1, 2, 3]
    with pytest.raises(TrainingError, match="between 0 and 1"):
        split_holdout(data, 1.0)


def _grid_disks(n, seed, shape=(128, 160)):
    """(image, labels) with n disks on a grid, ids shuffled."""
    centers = [(16 + 32 * (k // 5), 16 + 32 * (k % 5)) for k in range(n)]
    image, labels = disks(shape, centers, radius=8)
    perm = np.concatenate([[0], np.random.default_rng(seed).permutation(n) + 1])
    return image, perm[labels].astype(np.int32)


def test_a_later_round_keeps_each_object_on_its_side_of_the_split():
    """Round 2 adds a second image and relabels the first: objects held out in round 1 stay held
    out, round-1 training objects stay in training (the active model is never measured on objects
    it learned), only new objects are drawn, and the held-out share stays at the fraction. The
    first use gives exactly the plain random split."""
    first = _grid_disks(10, 0)
    data1 = make_training_data([first])
    sides = {}
    train1, held1 = split_holdout(data1, 0.3, seed=0, sides=sides)
    plain_train, plain_held = split_holdout(data1, 0.3, seed=0)
    assert [o.label for o in held1.objects] == [o.label for o in plain_held.objects]
    assert len(held1) == 3 and len(sides) == 10
    pixels = {o.label: tuple(np.flatnonzero(data1.mask(i))[:3]) for i, o in enumerate(data1.objects)}
    held_px = {pixels[o.label] for o in held1.objects}
    relabel = np.concatenate([[0], np.arange(10)[::-1] + 1])  # the same objects under new ids
    data2 = make_training_data([_grid_disks(10, 5, shape=(128, 192)), (first[0], relabel[first[1]].astype(np.int32))])
    for seed in (0, 1, 2):  # whatever the draw among the new objects
        s2 = dict(sides)
        train2, held2 = split_holdout(data2, 0.3, seed=seed, sides=s2)
        assert len(held2) == 6 and len(train2) == 14
        old_img = data2.images[1]
        held_old = {tuple(np.flatnonzero(held2.labels[1] == o.label)[:3])
                    for o in held2.objects if held2.images[o.image_index] is old_img}
        assert held_old == held_px  # the same three objects, found by their pixels
        assert len(s2) == 20
    # without the earlier sides the round-2 split mixes round-1 training objects into held-out
    mixed = [len({tuple(np.flatnonzero(h.labels[1] == o.label)[:3]) for o in h.objects
                  if h.images[o.image_index] is data2.images[1]} - held_px)
             for _, h in (split_holdout(data2, 0.3, seed=k) for k in range(5))]
    assert max(mixed) > 0


@pytest.mark.parametrize("shape", [(96, 128), (128, 64), (300, 200)])
def test_lowres_targets_map_back_onto_the_object(shape):
    # The target on the 256 grid, read back like a perfect prediction, must be the object.
    image, labels = disks(shape, centers=((40, 40), (70, 50)), radius=15)
    v = prepare_variant(make_training_data([(image, labels)]), 0, [0, 1], get_spec("lite_medsam").preprocessing)
    assert v.targets.shape == (2, 256, 256)
    logits = np.where(v.targets > 0, 10.0, -10.0).astype(np.float32)[:, None]
    masks = lowres_to_masks(logits, v.prepared, get_spec("lite_medsam").preprocessing)[:, 0]
    for k, label in enumerate((1, 2)):
        ref = labels == label
        assert 2 * (masks[k] & ref).sum() / (masks[k].sum() + ref.sum()) > 0.93


def test_flip_moves_image_labels_and_boxes_together():
    image, labels = disks()
    boxes = np.array([bounding_box(labels == i) for i in (1, 2, 3)])
    for h, v in ((True, False), (False, True), (True, True)):
        fi, fl, fb = flip_image_and_boxes(image, labels, boxes, h, v)
        assert np.array_equal(fi > 100, fl > 0)
        for i in (1, 2, 3):
            assert tuple(fb[i - 1]) == bounding_box(fl == i)


def test_box_jitter_is_outward_clipped_and_seeded():
    boxes = np.array([[20.0, 20.0, 40.0, 40.0], [0.0, 0.0, 127.0, 95.0]])
    a = jitter_boxes(boxes, np.random.default_rng(3), 5.0, (96, 128))
    b = jitter_boxes(boxes, np.random.default_rng(3), 5.0, (96, 128))
    assert np.array_equal(a, b) and not np.array_equal(a[0], boxes[0])
    assert (a[:, :2] <= boxes[:, :2]).all() and (a[:, 2:] >= boxes[:, 2:]).all()
    assert (a[:, 2] - boxes[:, 2] <= 5).all() and np.array_equal(a[1], boxes[1])  # already at the border
    inward = jitter_boxes(boxes[:1], np.random.default_rng(0), 5.0, (96, 128), inward=True)
    assert (inward[:, 2] - inward[:, 0] >= 1).all()


# -- config, schedule, LoRA ------------------------------------------------------------------------
def test_lr_schedule_warms_up_then_decays_to_the_floor():
    total = 100
    assert lr_at(0, total, 1.0, 0.05) == pytest.approx(0.2)
    assert lr_at(4, total, 1.0, 0.05) == pytest.approx(1.0)
    assert lr_at(99, total, 1.0, 0.05, 0.1) == pytest.approx(0.1, abs=2e-3)
    assert all(lr_at(s, total, 1.0) >= lr_at(s + 1, total, 1.0) for s in range(5, 99))


@pytest.mark.parametrize(
    "kwargs", [{"mode": "adapter"}, {"epochs": 0}, {"lr": -1}, {"holdout": 0}, {"batch_size": 0}]
)
def test_bad_config_raises(kwargs):
    with pytest.raises(TrainingError):
        TrainConfig(**kwargs).validate()


def test_lora_starts_at_the_base_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 24)
    lora = LoRALinear(copy.deepcopy(base), rank=2, alpha=4.0)
    x = torch.randn(5, 8)
    assert torch.allclose(lora(x), base(x))  # B = 0 at the start
    with torch.no_grad():
        lora.lora_b.normal_()
    merged = lora.merged()
    assert isinstance(merged, torch.nn.Linear) and torch.allclose(merged(x), lora(x), atol=1e-5)
    assert not torch.allclose(merged(x), base(x))


def test_lora_on_tinyvit_exports_the_original_keys(tiny_model):
    model = copy.deepcopy(tiny_model)
    keys = set(model.state_dict())
    n = add_lora(model, rank=2)
    assert n == 10  # qkv of the 2 + 6 + 2 attention blocks (stage 1 is convolutional)
    assert any("lora_a" in k for k in model.state_dict())
    assert merge_lora(model) == n and set(model.state_dict()) == keys


# -- train_step and fit ----------------------------------------------------------------------------
def fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(2, 1, 256, 256)
    targets[0, 0, 40:80, 40:80] = 1
    targets[1, 0, 150:200, 100:140] = 1
    boxes = torch.tensor([[40.0, 40.0, 80.0, 80.0], [100.0, 150.0, 140.0, 200.0]])
    return Batch(boxes, targets, embedding=torch.randn(1, 256, 64, 64, generator=g))


def test_train_step_reduces_the_loss(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    opt = torch.optim.AdamW(model.mask_decoder.parameters(), lr=1e-3)
    batch = fixed_batch()
    losses = [train_step(model, opt, batch, DiceCELoss(), None)[0] for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]


def test_nan_in_a_batch_raises_and_leaves_the_weights(tiny_model):
    model = copy.deepcopy(tiny_model)
    opt = torch.optim.AdamW(model.mask_decoder.parameters(), lr=1e-3)
    batch = fixed_batch()
    batch.embedding[0, 0, 0, 0] = float("nan")
    before = weights_hash(model)
    with pytest.raises(TrainingError, match="NaN"):
        train_step(model, opt, batch, DiceCELoss(), None)
    assert weights_hash(model) == before


def count_encoder_calls(model) -> list[int]:
    calls = [0]
    model.image_encoder.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.slow  # seconds: real training steps
def test_decoder_fit_uses_cached_embeddings_and_leaves_the_input_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    image, labels = disks()
    data = make_training_data([(image, labels)])
    cache = EmbeddingCache()
    Predictor(model, cache).set_image(image)  # what the widget has done before fine-tuning
    calls = count_encoder_calls(model)
    before = weights_hash(model)
    steps = []
    config = TrainConfig(mode="decoder", epochs=2, batch_size=2, lr=1e-3, holdout=0.34)
    result = fit(model, data, config, cache=cache, on_step=lambda s, t, loss, info: steps.append((s, t, loss)))
    assert calls[0] == 0 and result.encoder_calls == 0
    assert weights_hash(model) == before
    assert [s for s, _, _ in steps] == [1, 2] and steps[0][1] == 2 and result.losses == [x for _, _, x in steps]
    assert (result.n_train, result.n_heldout) == (2, 1)
    new = result.model
    assert new.encoder_id == model.encoder_id and new.weights_sha256 != model.weights_sha256
    assert not any(p.requires_grad for p in new.parameters()) and not new.training
    assert result.meta["mode"] == "decoder" and result.meta["dice_after"] == result.dice_after


def test_cancel_raises_and_leaves_the_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    data = make_training_data([disks()])
    cache = EmbeddingCache()
    stop = threading.Event()
    before = weights_hash(model)
    with pytest.raises(CancelledError, match="unchanged"):
        fit(model, data, TrainConfig(epochs=5, batch_size=1), cache=cache,
            on_step=lambda *a: stop.set(), cancel=stop)
    assert weights_hash(model) == before
    with pytest.raises(CancelledError):
        fit(model, data, TrainConfig(epochs=1), cache=cache, cancel=lambda: True)


@pytest.mark.slow  # seconds: real training steps
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_encoder_modes_change_the_encoder_id_and_save_strictly(tiny_model, mode, tmp_path):
    from medsam_core import save_checkpoint

    model = copy.deepcopy(tiny_model)
    data = make_training_data([disks(centers=((30, 30), (60, 90)))])
    result = fit(model, data, TrainConfig(mode=mode, epochs=1, lr=1e-3, flips=True))
    new = result.model
    assert result.steps == 1 and new.encoder_id != model.encoder_id
    assert set(new.state_dict()) == set(model.state_dict())
    path = save_checkpoint(tmp_path / f"{mode}.pt", new, result.meta)
    loaded = load_model("lite_medsam", checkpoint=path, device="cpu")
    assert loaded.encoder_id == new.encoder_id
    assert state_dict_sha256(loaded.state_dict()) == state_dict_sha256(new.state_dict())
    assert loaded.meta["mode"] == mode


# -- the guard -------------------------------------------------------------------------------------
def fake_fit(dice_after: float):
    """A stand-in for training.fit whose new model scores ``dice_after``; it perturbs one weight."""

    def run(model, data, config, **kwargs):
        new = copy.deepcopy(model)
        with torch.no_grad():
            new.mask_decoder.iou_token.weight.add_(dice_after)
        new = finish_model(new, model.spec, device="cpu")
        meta = {"mode": config.mode, "dice_before": 0.5, "dice_after": dice_after, "base_model": "lite_medsam"}
        return FitResult(new, config, [1.0], 0.5, dice_after, [0.5], [dice_after], len(data), 1, 1, 0.0, 0, meta)

    return run


def test_guard_accepts_better_refuses_worse_and_rolls_back(tiny_model, tmp_path, monkeypatch):
    import medsam_core.guard as guard

    data = make_training_data([disks()])
    session = FineTuneSession(tiny_model, out_dir=tmp_path)
    monkeypatch.setattr(guard, "fit", fake_fit(0.7))
    r1 = session.run_round(data)
    assert r1.accepted and session.active_model is r1.model
    monkeypatch.setattr(guard, "evaluate", lambda model, *a, **k: type("E", (), {"mean": 0.7})())
    monkeypatch.setattr(guard, "fit", fake_fit(0.6))
    r2 = session.run_round(data)  # starts from the base; compared with the active round-1 model
    assert not r2.accepted and r2.dice_active == 0.7 and session.active_model is r1.model
    r3 = session.run_round(data, force=True)
    assert r3.accepted and r3.forced and session.active_model is r3.model
    assert session.previous_model is r1.model
    assert session.rollback() is r1.model
    assert session.previous_model is tiny_model
    assert session.rollback() is tiny_model
    assert session.previous_model is None
    with pytest.raises(TrainingError, match="nothing to roll back"):
        session.rollback()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["round_001.pt", "round_002.pt", "round_003.pt"]  # no temp files left
    _, meta = read_state_dict(tmp_path / "round_002.pt")
    assert meta["round"] == 2 and meta["accepted"] is False and meta["start"] == "base"
    assert meta["base_sha256"] == tiny_model.weights_sha256
    assert len(session.sides) == len(data)  # the split the rounds keep (data.split_holdout)
    # The user insists on the refused round 2: it becomes active, its file says so, rollback undoes it.
    session.accept(r2)
    assert session.active_model is r2.model and r2.forced
    assert read_state_dict(tmp_path / "round_002.pt")[1]["accepted"] is True
    with pytest.raises(TrainingError, match="already active"):
        session.accept(r2)
    assert session.rollback() is tiny_model


def test_guard_bad_input_writes_nothing_and_keeps_the_model(tiny_model, tmp_path):
    session = FineTuneSession(tiny_model, out_dir=tmp_path / "rounds")
    single = disks(centers=((30, 30),))
    with pytest.raises(TrainingError):
        session.run_round(make_training_data([single], min_objects=1))
    with pytest.raises(TrainingError):
        session.run_round(make_training_data([disks()]), start="elsewhere")
    assert session.active_model is tiny_model and not session.rounds
    assert not (tmp_path / "rounds").exists()


def test_a_binary_mask_of_many_objects_gets_a_hint():
    """A 0/255 mask of five nuclei is one "object" to the trainer: the refusal says how to fix it."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    for cx in (8, 20, 32, 44, 56):
        mask[28:36, cx - 3:cx + 3] = 255
    with pytest.warns(UserWarning, match="look like a binary mask"), \
            pytest.raises(TrainingError, match=r"only 1 labelled object.*skimage.measure.label"):
        make_training_data([(image, mask)])
    from skimage.measure import label

    assert len(make_training_data([(image, label(mask > 0))])) == 5  # with ids: five objects, no warning


def test_a_stack_of_three_masks_read_as_channels_is_still_three_objects():
    image = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    stack = np.zeros((3, 64, 64), np.uint8)
    for k, cx in enumerate((12, 32, 52)):
        stack[k, 28:36, cx - 3:cx + 3] = 1
    for labels in (stack, np.moveaxis(stack, 0, -1)):  # (K, H, W), and (H, W, K) as a TIFF reader gives it
        data = make_training_data([(image, labels)])
        assert len(data) == 3 and sorted(np.unique(data.labels[0]).tolist()) == [0, 1, 2, 3]
