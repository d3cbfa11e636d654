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

#: how a polygon is prompted: box only (or + 3 px), box + mask_input (logit magnitude), box + points, the
#: polygon itself, the box's mask clipped to the polygon grown by 3 px, or the band rule: inside the polygon
#: shrunk by 3 px is object, outside it grown by 3 px background, the model's box mask decides in between
VARIANTS = ("box", "box_pad3", "box_mask4", "box_mask16", "box_pos", "box_pos_neg", "polygon", "box_clip3",
            "box_band3")
DEFAULT_VARIANT = "box_band3"  # best mean Dice of the measured variants (docs/napari.md)


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
    """``mask`` dilated (``px`` > 0) or eroded (``px`` < 0) by a disk of radius ``|px|`` pixels."""
    from scipy import ndimage

    if px == 0:
        return mask
    r = abs(px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2) <= r * r
    return ndimage.binary_dilation(mask, disk) if px > 0 else ndimage.binary_erosion(mask, disk)


def combine(box_mask: np.ndarray, poly: np.ndarray, variant: str) -> np.ndarray:
    """The polygon rules applied to the box's mask: ``box_clip3`` (mask within 3 px of the polygon),
    ``box_band3`` (shrunk polygon | mask within the 3 px band around its edge); others: the mask."""
    if variant == "box_clip3":
        return box_mask & grow(poly, 3)
    if variant == "box_band3":
        return grow(poly, -3) | (box_mask & grow(poly, 3))
    return box_mask


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


def _local_polygon(xy: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The polygon's mask inside ``window`` (y0, y1, x0, x1): (y1 - y0, x1 - x0) bool."""
    y0, y1, x0, x1 = window
    return polygon_mask(np.asarray(xy, float) - [x0, y0], (y1 - y0, x1 - x0))


def decode_polygon(predictor, image2d, xy, mode: str, intensity, channel,
                   variant: str = DEFAULT_VARIANT) -> roi.BoxMask:
    """Segment polygon ``xy`` ((V, 2) XY pixels) on ``image2d`` prompted as ``variant``: a
    ``medsam_core.roi.BoxMask`` (window (y0, y1, x0, x1), the mask inside it, predicted IoU).

    The box (the polygon's extent) goes through ``roi.predict_boxes`` like any box (``mode``:
    auto / roi / whole, the widget's ROI zoom); variants with points or a mask prompt decode on the
    same embedding (whole image or the box's crop) with those prompts added, clipped to the box plus
    the training margin as predict_boxes clips. Only the window around the polygon is rasterised and
    returned, so a polygon on a large (lazy) image never makes an image-sized array (whole-image
    mode aside). Encodes through ``predictor.set_image`` (its cache serves what is encoded already).
    """
    if variant not in VARIANTS:
        raise PromptError(f"unknown polygon variant {variant!r}: use one of {', '.join(VARIANTS)}")
    shape = roi.image_shape(image2d)
    xy = check_polygon(xy, shape)
    box = check_boxes(polygon_box(xy, 3.0 if variant == "box_pad3" else 0.0)[None], shape)[0]
    if variant == "polygon":
        win = (int(box[1]), int(np.floor(box[3])) + 1, int(box[0]), int(np.floor(box[2])) + 1)
        return roi.BoxMask(win, _local_polygon(xy, win), float("nan"), False)
    if variant in ("box", "box_pad3", "box_clip3", "box_band3"):
        (res,) = roi.predict_boxes(predictor, image2d, box[None], mode=mode, intensity=intensity, channel=channel)
        mask = combine(res.mask, _local_polygon(xy, res.window), variant)
        return roi.BoxMask(res.window, mask, res.score, res.roi, res.clipped)
    use_roi = roi.choose_roi(box[None], shape, mode, predictor.spec.preprocessing.input_size)[0]
    y0, y1, x0, x1 = roi.plan_rois(box[None], shape)[0].window if use_roi else (0, shape[0], 0, shape[1])
    predictor.set_image(roi.read_crop(image2d, (y0, y1, x0, x1)), intensity=intensity, channel=channel)
    kw = {}
    if variant.startswith("box_mask"):
        kw["mask_input"] = polygon_logits(xy - [x0, y0], (y1 - y0, x1 - x0), predictor.spec.preprocessing,
                                          float(variant[len("box_mask"):]))
    else:
        bw = (int(box[1]), int(np.floor(box[3])) + 1, int(box[0]), int(np.floor(box[2])) + 1)
        pts, labels = inside_outside_points(_local_polygon(xy, bw), box - [bw[2], bw[0]] * 2,
                                            0 if variant == "box_pos" else 2)
        kw.update(points=(pts + [bw[2] - x0, bw[0] - y0])[None], point_labels=labels[None])
    pred = predictor.predict(boxes=(box - [x0, y0, x0, y0])[None], **kw)
    mx, my = roi.box_margin(predictor.spec.preprocessing, (y1 - y0, x1 - x0))  # as predict_boxes clips
    win = (max(int(np.ceil(box[1] - my)), y0), min(int(np.floor(box[3] + my)) + 1, y1),
           max(int(np.ceil(box[0] - mx)), x0), min(int(np.floor(box[2] + mx)) + 1, x1))
    mask = pred.masks[0][win[0] - y0 : win[1] - y0, win[2] - x0 : win[3] - x0]
    return roi.BoxMask(win, np.ascontiguousarray(mask), float(pred.scores[0]), bool(use_roi))
