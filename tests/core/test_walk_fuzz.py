"""Random synthetic walks never end in an error about a box the user did not draw.

Each case: an ellipsoid (cut by the volume's edges, sometimes with holes), a random slicing axis,
spacing and start slice, the user's box padded by 0-8 px, sometimes a key box and then a
correction (``previous=``). The predictor refuses boxes exactly as the real one does
(``check_boxes``), so any box the walk makes itself (blended, carried on, the cross-check's, an
extent plane's) that is not a valid prompt fails the test. This found two such crashes (docs/3d.md,
"Robustness")."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import walk_volume
from medsam_core.preprocess import check_boxes

from .volume_fakes import FakePredictor, bbox, render


class Checking(FakePredictor):
    def predict(self, boxes, **kw):
        check_boxes(boxes, self.image.shape)
        return super().predict(boxes, **kw)


def _user_box(mask2d, pad):
    h, w = mask2d.shape
    box = np.clip(bbox(mask2d, pad), 0, [w - 1, h - 1, w - 1, h - 1])
    return box if box[2] - box[0] >= 1 and box[3] - box[1] >= 1 else None  # a box a user can draw


@pytest.mark.parametrize("seed", range(4))
def test_random_walks_and_corrections_make_only_valid_prompts(seed):
    rng = np.random.default_rng(seed)
    walked = 0
    for _ in range(15):
        shape = tuple(int(v) for v in rng.integers(12, 40, 3))
        grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
        centre = [rng.uniform(-3, s + 3) for s in shape]
        radii = [rng.uniform(1, s / 2 + 2) for s in shape]
        truth = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        if rng.random() < 0.3:
            truth &= rng.random(shape) > 0.2
        axis = int(rng.integers(0, 3))
        t = np.moveaxis(truth, axis, 0)
        zs = np.flatnonzero(t.any(axis=(1, 2)))
        if not zs.size:
            continue
        z, kz = (int(v) for v in rng.choice(zs, 2))
        box = _user_box(t[z], float(rng.choice([0, 0.5, 1, 3, 8])))
        if box is None:
            continue
        spacing = tuple(float(v) for v in rng.choice([0.5, 1.0, 2.5], 3))
        vol = render(truth)
        res = walk_volume(Checking(), vol, box, z, axis=axis, spacing=spacing)
        assert res.volume().shape == truth.shape
        key = _user_box(t[kz], float(rng.choice([0, 1, 3])))
        if key is not None and kz != z:
            fixed = walk_volume(Checking(), vol, box, z, axis=axis, spacing=spacing, key_boxes={kz: key},
                                previous=res, bound_by_keys=bool(rng.random() < 0.5),
                                key_past=str(rng.choice(["hold", "taper"])))
            assert fixed.volume().shape == truth.shape
            assert kz in fixed.masks and fixed.keys[kz] is not None  # the key slice was decoded with its box
        walked += 1
    assert walked >= 8  # most cases are walks, not skipped
