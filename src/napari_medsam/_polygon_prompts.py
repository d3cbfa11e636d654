"""A polygon (lasso) drawn around an object -> the decoder's prompts, and decoding them.

Qt- and napari-free (NumPy, scikit-image, ``medsam_core.roi``), so the benchmark
(benchmarks/bench_polygon_prompt.py) measures exactly what the widget runs. Conventions:
``xy`` is a (V, 2) polygon in plane pixels, XY (x along the columns); masks are (H, W) bool.

Which prompts a polygon becomes was chosen by measurement (docs/napari.md, "Polygon prompt"):
``VARIANTS`` names the candidates, ``DEFAULT_VARIANT`` the one the widget uses.
"""

from __future__ import annotations

import numpy as np

from medsam_core import PromptError, roi
from medsam_core.preprocess import check_boxes

#: how a polygon is prompted: box only, box + mask_input (logit magnitude), box + points, the polygon itself,
#: or the box mask clipped to the polygon grown by 3 px
VARIANTS = ("box", "box_pad3", "box_mask4", "box_mask16", "box_pos", "box_pos_neg", "polygon", "box_clip3")
DEFAULT_VARIANT = "box_clip3"


def check_polygon(xy, shape: tuple[int, int]) -> np.ndarray:
    """(V, 2) XY polygon -> float array; PromptError for fewer than 3 vertices, NaNs, no area, or
    a polygon entirely outside the (H, W) plane."""
    arr = np.asarray(xy, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 3:
        raise PromptError(f"a polygon needs at least 3 (x, y) vertices, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError("the polygon has NaN or infinite vertices: draw it again")
    x, y = arr[:, 0], arr[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    if area < 1.0:
        raise PromptError(f"the polygon encloses {area:.1f} pixels: draw around the object")
    check_boxes(polygon_box(arr)[None], shape)  # outside the image -> the box rule's message
    return arr


def polygon_box(xy: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """(4,) XYXY extent of the polygon's vertices, pushed out by ``pad`` pixels."""
    xy = np.asarray(xy, float)
    return np.array([xy[:, 0].min() - pad, xy[:, 1].min() - pad, xy[:, 0].max() + pad, xy[:, 1].max() + pad])


def polygon_mask(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the polygon."""
    from skimage.draw import polygon2mask

    return polygon2mask(shape, np.asarray(xy, float)[:, ::-1])


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated by a disk of radius ``px`` pixels."""
    from scipy import ndimage

    if px <= 0:
        return mask
    yy, xx = np.mgrid[-px : px + 1, -px : px + 1]
    return ndimage.binary_dilation(mask, structure=(yy**2 + xx**2) <= px * px)


def inside_outside_points(mask: np.ndarray, box: np.ndarray, n_negative: int = 2):
    """(P, 2) XY points and (P,) 1/0 labels: the most interior pixel of ``mask`` (positive) and up to
    ``n_negative`` pixels of the box farthest from the polygon grown by 2 px (negative), one per box
    corner region, so the decoder is told where the box's corners hold background."""
    from scipy import ndimage

    inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(inner)), mask.shape)
    pts, labels = [(x, y)], [1]
    h, w = mask.shape
    x0, y0 = max(int(np.ceil(box[0])), 0), max(int(np.ceil(box[1])), 0)
    x1, y1 = min(int(np.floor(box[2])), w - 1), min(int(np.floor(box[3])), h - 1)
    outside = ~grow(mask, 2)[y0 : y1 + 1, x0 : x1 + 1]
    if outside.any() and n_negative:
        dist = ndimage.distance_transform_edt(outside)
        cy, cx = (y1 - y0) / 2, (x1 - x0) / 2
        yy, xx = np.nonzero(outside)
        quadrant = (yy > cy) * 2 + (xx > cx)
        best = []
        for q in range(4):
            sel = quadrant == q
            if sel.any():
                k = np.flatnonzero(sel)[int(np.argmax(dist[yy[sel], xx[sel]]))]
                best.append((float(dist[yy[k], xx[k]]), xx[k] + x0, yy[k] + y0))
        for _, px, py in sorted(best, reverse=True)[:n_negative]:
            pts.append((px, py))
            labels.append(0)
    return np.array(pts, float), np.array(labels, int)


def polygon_logits(xy: np.ndarray, encoded_shape: tuple[int, int], pre, magnitude: float) -> np.ndarray:
    """(1, 1, 256, 256) ``mask_input`` logits: +magnitude inside the polygon, -magnitude outside, on
    the decoder's low-res grid of an encoded (H, W) image with preprocessing ``pre``."""
    h, w = encoded_shape
    size = pre.input_size
    if getattr(pre, "resize", "longest_side") == "longest_side":
        sx = sy = size / max(h, w)
    else:
        sx, sy = size / w, size / h
    grid = 256 / size  # low-res logits cover the padded model input
    scaled = (np.asarray(xy, float) + 0.5) * [sx * grid, sy * grid] - 0.5
    inside = polygon_mask(scaled, (256, 256))
    return np.where(inside, magnitude, -magnitude).astype(np.float32)[None, None]


def decode_polygon(predictor, image2d, xy, mode: str, intensity, channel, variant: str = DEFAULT_VARIANT):
    """(H, W) bool mask and predicted IoU for polygon ``xy`` on ``image2d``, prompted as ``variant``.

    The box (the polygon's extent) goes through ``roi.predict_boxes`` like any box (``mode``:
    auto / roi / whole, the widget's ROI zoom); variants with points or a mask prompt decode on the
    same embedding (whole image or the box's crop) with those prompts added. Never encodes what
    ``predictor.cache`` lacks for the box unless the predictor does so itself (set_image).
    """
    if variant not in VARIANTS:
        raise PromptError(f"unknown polygon variant {variant!r}: use one of {', '.join(VARIANTS)}")
    shape = image2d.shape[:2]
    xy = check_polygon(xy, shape)
    box = check_boxes(polygon_box(xy, 3.0 if variant == "box_pad3" else 0.0)[None], shape)[0]
    poly = polygon_mask(xy, shape)
    if variant == "polygon":
        return poly, float("nan")
    if variant in ("box", "box_pad3", "box_clip3"):
        (res,) = roi.predict_boxes(predictor, image2d, box[None], mode=mode, intensity=intensity, channel=channel)
        mask = res.full(shape)
        return (mask & grow(poly, 3) if variant == "box_clip3" else mask), res.score
    use_roi = roi.choose_roi(box[None], shape, mode, predictor.spec.preprocessing.input_size)[0]
    y0, y1, x0, x1 = roi.plan_rois(box[None], shape)[0].window if use_roi else (0, shape[0], 0, shape[1])
    predictor.set_image(roi.read_crop(image2d, (y0, y1, x0, x1)), intensity=intensity, channel=channel)
    local_box = box - [x0, y0, x0, y0]
    kw = {}
    if variant.startswith("box_mask"):
        kw["mask_input"] = polygon_logits(xy - [x0, y0], (y1 - y0, x1 - x0), predictor.spec.preprocessing,
                                          float(variant[len("box_mask"):]))
    else:
        pts, labels = inside_outside_points(poly, box, 0 if variant == "box_pos" else 2)
        kw.update(points=(pts - [x0, y0])[None], point_labels=labels[None])
    pred = predictor.predict(boxes=local_box[None], **kw)
    mx, my = roi.box_margin(predictor.spec.preprocessing, (y1 - y0, x1 - x0))  # as predict_boxes clips
    keep = np.zeros(shape, bool)
    keep[max(int(np.ceil(box[1] - my)), 0): int(np.floor(box[3] + my)) + 1,
         max(int(np.ceil(box[0] - mx)), 0): int(np.floor(box[2] + mx)) + 1] = True
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = pred.masks[0]
    return mask & keep, float(pred.scores[0])
