"""CUDA path (``pytest -m gpu``; benchmarks/gpu_check.sh runs these on a GPU machine): the encoder
and decoder on the GPU give the CPU's masks, and a fine-tuning step runs there. Skipped without
CUDA (none on the development machines so far)."""

from __future__ import annotations

import copy

import numpy as np
import pytest


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (none on this machine)")]


def _largest_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    out = []
    for i in ids[np.argsort(counts)[::-1][:n]]:
        ys, xs = np.nonzero(labels == i)
        out.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.asarray(out, np.float64)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


@pytest.fixture(scope="module")
def cuda_model():
    import medsam_core

    return medsam_core.load_model("lite_medsam", device="cuda")


def test_encoder_and_decoder_on_cuda_give_the_cpu_masks(cuda_model, lite_model, dsb2018):
    from medsam_core import EmbeddingCache, Predictor
    from medsam_core.backends import TorchEncoder

    image, labels = dsb2018
    boxes = _largest_boxes(labels, 16)
    runs = {"cpu": (lite_model, TorchEncoder(lite_model)),
            "cuda fp32": (cuda_model, TorchEncoder(cuda_model, autocast="off")),
            "cuda autocast": (cuda_model, TorchEncoder(cuda_model))}
    masks, scores = {}, {}
    for name, (model, backend) in runs.items():
        p = Predictor(model, cache=EmbeddingCache(), encoder_backend=backend)
        p.set_image(image)
        masks[name], scores[name] = p.predict(boxes=boxes)
    for name, min_mean in (("cuda fp32", 0.999), ("cuda autocast", 0.99)):
        d = [_dice(a, b) for a, b in zip(masks[name], masks["cpu"], strict=True)]
        assert np.mean(d) >= min_mean, (name, d)
        assert np.abs(scores[name] - scores["cpu"]).max() < 0.02, name


def test_a_finetune_step_on_cuda_matches_the_cpu_step(cuda_model, lite_model, dsb2018):
    import torch

    from medsam_core import EmbeddingCache, Predictor
    from medsam_core.data import make_training_data
    from medsam_core.losses import DiceCELoss, IoURegressionLoss
    from medsam_core.training import TrainConfig, _Source, set_trainable, train_step

    image, labels = dsb2018
    data = make_training_data([(image, labels)]).subset(list(range(8)))
    cache = EmbeddingCache()
    Predictor(lite_model, cache, encoder_backend="torch").set_image(image)
    config = TrainConfig(mode="decoder", seed=0).validate()
    source = _Source(lite_model, data, config, cache, None, "auto")
    key, local = source.plan(np.random.default_rng(0))[0]
    losses, params = {}, {}
    for device, base in (("cpu", lite_model), ("cuda", cuda_model)):
        work = copy.deepcopy(base)
        batch = source.batch(key, local, np.random.default_rng(0), torch.device(device))
        opt = torch.optim.AdamW(set_trainable(work, config), lr=1e-4)
        losses[device] = [train_step(work, opt, batch, DiceCELoss(), IoURegressionLoss())[0] for _ in range(3)]
        params[device] = torch.nn.utils.parameters_to_vector(work.mask_decoder.parameters()).detach().cpu()
    assert all(np.isfinite(losses["cuda"])) and losses["cuda"][-1] < losses["cuda"][0]
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-2)
    assert float((params["cuda"] - params["cpu"]).abs().max()) < 1e-3
