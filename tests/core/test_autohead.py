"""The learned automatic head: targets, training, inference, guard, checkpoint extras."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medsam_core.auto import match
from medsam_core.autoguard import (
    HeadSession,
    head_from_model,
    save_with_model,
    split_objects,
    train_and_guard,
)
from medsam_core.autohead import (
    AutoHead,
    HeadConfig,
    PostParams,
    dihedral,
    distance_target,
    from_map,
    known_region,
    to_map,
    train_head,
)
from medsam_core.autoseg import head_instances, match_in_region, segment_everything
from medsam_core.embeddings import EmbeddingCache
from medsam_core.errors import CancelledError, ImageError, PromptError, TrainingError
from medsam_core.preprocess import Intensity, prepare_image
from medsam_core.registry import get_spec


def _disks(seed=0, shape=(128, 128), n=9, dark=False):
    """Disks of radius 7-9 on noise (bright, or dark on a bright background) -> (image, labels)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(30, 4, shape)
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for j in range(n):
        cy, cx = 20 + 40 * (j // 3) + rng.integers(-3, 4), 20 + 40 * (j % 3) + rng.integers(-3, 4)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(7, 10) ** 2
        k += 1
        lab[disk] = k
        img[disk] += 120
    if dark:
        img = 300 - img
    return img.astype(np.float32), lab


class FakeModel:
    encoder_id = "fake-encoder"
    spec = get_spec("lite_medsam")


class FakePredictor:
    """Embedding = the prepared image pooled to 64 x 64, tiled over 8 channels (a real encoder is
    what the slow test checks); predict(boxes) fills each box (a 'decoder' that leaks)."""

    def __init__(self):
        self.model, self.spec = FakeModel(), FakeModel.spec
        self.cache, self.intensity, self.channel = EmbeddingCache(), Intensity(), "auto"
        self.image_key, self.encoded = None, 0

    def set_image(self, image):
        from medsam_core.embeddings import EmbeddingKey, content_hash

        self.image = np.asarray(image)
        self.image_key = EmbeddingKey(content_hash(self.image), "fake", "fake")
        if self.cache.get(self.image_key) is None:
            self.cache.put(self.image_key, self.encode(prepare_image(image, self.spec.preprocessing).tensor[None])[0], {})

    def encode(self, batch):
        self.encoded += 1
        pooled = batch[:, :1].reshape(len(batch), 1, 64, 4, 64, 4).mean((3, 5))
        return np.repeat(pooled, 8, axis=1).astype(np.float32)

    def predict(self, boxes):
        h, w = self.image.shape[:2]
        masks = np.zeros((len(boxes), h, w), bool)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).astype(int)):
            masks[i, y0: y1 + 1, x0: x1 + 1] = True
        return masks, np.full(len(boxes), 0.9, np.float32)


FAST = {"channels": 8, "fine": 8, "lr": 1e-2}  # a small head that learns the fake embeddings quickly


def _train(pred, pairs, epochs=40, **kw):
    gen = train_head(pred, [p[0] for p in pairs], [p[1] for p in pairs], config=HeadConfig(epochs=epochs, **FAST, **kw),
                     post=PostParams(refine="head", seed_threshold=0.3))
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return stop.value, steps


@pytest.fixture(scope="module")
def trained():
    pred = FakePredictor()
    fit, steps = _train(pred, [_disks(0, dark=True), _disks(1, dark=True)], epochs=20, views=4, batch_size=8)
    return pred, fit, steps


def test_known_region_grows_boxes():
    lab = np.zeros((50, 50), np.int32)
    lab[20:30, 20:30] = 1
    known = known_region(lab, context=0.5, min_context=2)
    assert known[15:35, 15:35].all() and known.sum() == 20 * 20
    assert not known_region(np.zeros((5, 5), np.int32)).any()


def test_distance_target_peaks_at_centres_of_touching_objects():
    lab = np.zeros((20, 40), np.int32)
    lab[5:15, 5:20], lab[5:15, 20:35] = 1, 2  # touching
    d = distance_target(lab)
    assert d.max() == pytest.approx(1.0) and d[lab == 0].max() == 0
    assert d[10, 19] < 0.3 and d[10, 20] < 0.3  # the shared border is low: the two separate
    assert d[9:11, 11:14].max() == pytest.approx(1.0)


def test_dihedral_views_are_distinct_and_invertible():
    a = np.arange(12).reshape(3, 4)
    views = [dihedral(a, k) for k in range(8)]
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == 8
    assert dihedral(np.zeros((3, 4, 2)), 1).shape == (4, 3, 2)


def test_map_round_trip_keeps_objects():
    prep = prepare_image(np.arange(20000.0).reshape(100, 200), get_spec("lite_medsam").preprocessing)
    lab = np.zeros((100, 200), np.int32)
    lab[40:60, 50:90] = 3
    m = to_map(lab, prep)
    assert m.shape == (128, 128) and m[64:].max() == 0  # padding below the image
    back = from_map(m, prep)
    assert back.shape == lab.shape and ((back == 3) == (lab == 3)).mean() > 0.98


def test_training_yields_progress_and_segments_dark_objects(trained):
    pred, fit, steps = trained
    assert [s.stage for s in steps].count("encode") == 8 and steps[-1].stage == "train"
    assert fit.losses[-1] < fit.losses[0]
    img, lab = _disks(5, dark=True)  # unseen image; a threshold on brightness finds the background
    inst = head_instances(pred, fit.head, img)
    masks = np.stack([inst == k for k in range(1, inst.max() + 1)])
    r = match(masks, lab)
    assert r.f1 >= 0.8 and r.mean_dice > 0.7, r


def test_segment_everything_decoder_refine_and_cancel(trained):
    pred, fit, _ = trained
    img, lab = _disks(6, dark=True)
    props = segment_everything(pred, fit.head, img, PostParams(refine="decoder", margin=0))
    assert len(props.masks) >= 7  # the fake decoder fills boxes: masks are the instances' boxes
    x0, y0, x1, y1 = props.boxes[0].astype(int)
    assert props.masks[0].sum() == (x1 - x0 + 1) * (y1 - y0 + 1)
    done = []
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        segment_everything(pred, fit.head, img, PostParams(refine="decoder"), cancel=ev, on_progress=done.append)
    assert done == []
    steps = []
    segment_everything(pred, fit.head, img, PostParams(refine="decoder"), chunk=4,
                       on_progress=lambda d, t: steps.append((d, t)))
    assert steps[0][0] == 1 and steps[-1][0] == steps[-1][1] >= 3 and len(steps) == steps[-1][1]


def test_partial_labels_only_learn_inside_the_known_region():
    img, lab = _disks(2)
    partial = np.where(np.isin(lab, (1, 2, 3)), lab, 0)  # the top row of disks only
    known = known_region(partial)
    assert not known[100:].any()
    r = match_in_region(np.stack([lab == 5, lab == 1]), partial, known)
    assert r.n_pred == 1 and r.n_ref == 3 and r.matched == 1  # disk 5 is outside: not a false positive


def test_cancel_during_training_raises_and_bad_input_refused():
    pred = FakePredictor()
    img, lab = _disks(0)
    with pytest.raises(CancelledError):
        list(train_head(pred, [img], [lab], config=HeadConfig(epochs=2), cancel=lambda: True))
    with pytest.raises(ImageError):
        list(train_head(pred, [img], [lab[:10]]))
    with pytest.raises(PromptError):
        list(train_head(pred, [img], []))
    with pytest.raises(TrainingError):
        HeadConfig(views=3).validate()
    with pytest.raises(TrainingError):
        split_objects([lab[:30, :30]], 0.2)


def test_dict_round_trip_and_encoder_check(trained):
    pred, fit, _ = trained
    d = fit.head.to_dict()
    back = AutoHead.from_dict(d)
    img, _ = _disks(7, dark=True)
    assert np.array_equal(head_instances(pred, back, img), head_instances(pred, fit.head, img))
    other = type("M", (), {"encoder_id": "another"})()
    with pytest.raises(PromptError, match="retrain"):
        back.check_model(other)
    with pytest.raises(PromptError):
        AutoHead.from_dict({"kind": "something else"})


def test_guard_accepts_better_refuses_worse_and_rolls_back():
    pred = FakePredictor()
    pairs = [_disks(0, dark=True), _disks(1, dark=True)]
    cfg = HeadConfig(epochs=20, views=4, batch_size=8, holdout=0.3, **FAST)
    session, rnd = train_and_guard(pred, [p[0] for p in pairs], [p[1] for p in pairs], config=cfg)
    # the threshold detector finds the bright background on dark objects: the head beats it
    assert rnd.accepted and rnd.f1 > rnd.f1_active and session.active is rnd.head
    bad = HeadConfig(epochs=1, views=1, channels=8, fine=8, holdout=0.3, lr=1e-6)
    gen = session.run_round(pred, [p[0] for p in pairs], [p[1] for p in pairs], config=bad)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            worse = stop.value
            break
    assert not worse.accepted and session.active is rnd.head
    session.accept(worse)
    assert session.active is worse.head and session.can_rollback
    assert session.rollback() is rnd.head
    assert HeadSession().active_proposer(pred) is not None


@pytest.mark.slow
def test_real_weights_head_in_checkpoint_extras(tmp_path):
    """Bundled LiteMedSAM: train on the left half of the shipped nuclei crop, segment the right half;
    the head travels inside the checkpoint and load_model gives it back."""
    from medsam_core import Predictor, load_model
    from medsam_core.samples import nuclei

    s = nuclei()
    img, lab = np.asarray(s.image), np.asarray(s.labels).astype(np.int32)
    model = load_model("lite_medsam")
    pred = Predictor(model)
    left, right = (img[:, :128], lab[:, :128]), (img[:, 128:], lab[:, 128:])
    session, rnd = train_and_guard(pred, [left[0]], [left[1]], known=[np.ones_like(left[1], bool)],
                                   config=HeadConfig(epochs=60, views=4), force=True)
    head = session.active
    props = segment_everything(pred, head, right[0])
    r = match(props.masks, right[1])
    assert r.f1 > 0.5, r
    path = save_with_model(tmp_path / "ft.pt", model, head)
    loaded = load_model("lite_medsam", checkpoint=path)
    again = head_from_model(loaded)
    assert again is not None and again.post == head.post
    assert np.array_equal(head_instances(Predictor(loaded), again, right[0]), head_instances(pred, head, right[0]))
    assert head_from_model(model) is None
