"""Box CSV parsing, the overlap rule, slice grouping and the overlay, with a fake predictor."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.errors import ImageError, PromptError
from medsam_core.overlay import draw_box, label_colours, render_overlay, save_png
from medsam_core.preprocess import Intensity
from medsam_core.samples import nuclei, nuclei_paths
from medsam_core.segment import (
    check_boxes_for_image,
    parse_channel,
    parse_intensity,
    paste_masks,
    read_boxes_csv,
    segment_boxes,
)

from .roi_fakes import BoxFillPredictor as _BoxFill


def BoxFillPredictor():  # noqa: N802 - a fake class with recorded images
    """The ROI tests' box-filling fake, keeping a copy of every image it was given."""
    return _BoxFill(keep_images=True)


def write_csv(path, text):
    path.write_text(text)
    return path


def test_read_boxes_csv_with_and_without_z(tmp_path):
    boxes, z = read_boxes_csv(write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n1,2,10,12\n3.5,4,8,9\n"))
    np.testing.assert_array_equal(boxes, [[1, 2, 10, 12], [3.5, 4, 8, 9]])
    assert z is None
    boxes, z = read_boxes_csv(write_csv(tmp_path / "c.csv", "z,x_min,y_min,x_max,y_max,name\n2,1,2,10,12,a\n"))
    np.testing.assert_array_equal(z, [2])
    np.testing.assert_array_equal(boxes, [[1, 2, 10, 12]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("x0,y0,x1,y1\n1,2,3,4\n", "missing: x_min"),
        ("x_min,y_min,x_max,y_max\n", "no boxes"),
        ("x_min,y_min,x_max,y_max\n1,2,three,4\n", "line 2"),
        ("x_min,y_min,x_max,y_max\n1,2,3\n", "line 2"),
        ("z,x_min,y_min,x_max,y_max\n1.5,1,2,3,4\n", "whole slice"),
        ("x_min,y_min,x_max,y_max\nnan,2,3,4\n", "NaN"),
    ],
)
def test_bad_csv_raises_prompt_error(tmp_path, text, message):
    with pytest.raises(PromptError, match=message):
        read_boxes_csv(write_csv(tmp_path / "b.csv", text))


def test_missing_csv(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        read_boxes_csv(tmp_path / "none.csv")


def test_boxes_checked_against_image():
    boxes = np.array([[1.0, 1, 5, 5]])
    check_boxes_for_image(boxes, None, (10, 10))
    with pytest.raises(PromptError, match="z column"):
        check_boxes_for_image(boxes, None, (3, 10, 10))
    with pytest.raises(PromptError, match="outside the 3 slices"):
        check_boxes_for_image(boxes, np.array([3]), (3, 10, 10))
    with pytest.raises(PromptError, match="2D"):
        check_boxes_for_image(boxes, np.array([0]), (10, 10))
    with pytest.raises(PromptError, match="outside"):
        check_boxes_for_image(np.array([[20.0, 20, 30, 30]]), None, (10, 10))


def test_later_box_only_fills_background():
    labels = np.zeros((6, 6), np.uint32)
    a = np.zeros((6, 6), bool)
    a[0:4, 0:4] = True
    b = np.zeros((6, 6), bool)
    b[2:6, 2:6] = True
    paste_masks(labels, np.stack([a, b]), [1, 2])
    assert labels[3, 3] == 1  # overlap stays with the earlier box
    assert labels[5, 5] == 2 and labels[0, 0] == 1
    assert (labels == 2).sum() == 16 - 4


def test_segment_boxes_2d_ids_follow_box_order_in_batches():
    pred = BoxFillPredictor()
    img = np.arange(400, dtype=np.uint16).reshape(20, 20)
    boxes = np.array([[0, 0, 4, 4], [10, 10, 15, 15], [2, 2, 12, 12]], float)
    calls = []
    labels = segment_boxes(pred, img, boxes, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert labels[1, 1] == 1 and labels[12, 12] == 2 and labels[7, 7] == 3
    assert labels[3, 3] == 1  # box 3 overlaps box 1: background only
    assert calls == [(1, 1)]  # one encode: a 20 px image is never cropped
    assert len(pred.images) == 1  # one image, encoded once


def test_segment_boxes_3d_groups_by_slice_with_one_intensity_window():
    pred = BoxFillPredictor()
    vol = np.stack([np.full((12, 12), v, np.uint16) for v in (10, 20, 30)])
    vol[:, 0, 0] = 1000
    boxes = np.array([[0, 0, 3, 3], [5, 5, 9, 9], [1, 1, 4, 4]], float)
    z = np.array([2, 0, 2])
    labels = segment_boxes(pred, vol, boxes, z, intensity=Intensity())
    assert labels.shape == (3, 12, 12)
    assert labels[2, 2, 2] == 1 and labels[0, 7, 7] == 2 and labels[2, 4, 4] == 3
    assert not labels[1].any()
    seen = [int(img[5, 5]) for img, _ in pred.images]
    assert seen == [10, 30]  # slices 0 and 2 only, each once
    windows = {it for _, it in pred.images}
    assert len(windows) == 1 and next(iter(windows)).mode == "range"


def test_parse_intensity_and_channel():
    assert parse_intensity("auto") == Intensity()
    assert parse_intensity("ct:lung") == Intensity.ct("lung")
    assert parse_intensity("minmax").mode == "minmax"
    with pytest.raises(ImageError, match="CT window"):
        parse_intensity("ct:elbow")
    with pytest.raises(ImageError, match="unknown intensity"):
        parse_intensity("gamma")
    assert parse_channel("2") == 2 and parse_channel("max") == "max"
    with pytest.raises(ImageError, match="channel"):
        parse_channel("red")


def test_overlay_draws_outlines_in_label_colours_and_boxes(tmp_path):
    img = np.zeros((10, 10), np.uint16)
    img[2:6, 2:6] = 500
    labels = np.zeros((10, 10), np.uint8)
    labels[2:6, 2:6] = 1
    pic = render_overlay(img, labels, np.array([[1, 1, 7, 7]]), upscale=1)
    assert pic.shape == (10, 10, 3) and pic.dtype == np.uint8
    np.testing.assert_array_equal(pic[2, 3], label_colours(1)[1])  # outline pixel
    np.testing.assert_array_equal(pic[1, 4], [255, 255, 0])  # box edge
    assert pic[4, 4].tolist() == [255, 255, 255]  # interior keeps the image
    out = save_png(tmp_path / "o.png", pic)
    assert out.exists()
    with pytest.raises(ImageError, match=".png"):
        save_png(tmp_path / "o.jpg", pic)


def test_draw_box_clips_to_the_picture():
    rgb = np.zeros((5, 5, 3), np.uint8)
    draw_box(rgb, (-3, 1, 10, 3))
    assert rgb[1, :, 0].all() and rgb[3, :, 0].all() and not rgb[0].any() and not rgb[2, 1:4].any()


def test_shipped_sample_is_consistent():
    s = nuclei()
    assert s.image.shape == (256, 256) and s.image.dtype == np.uint16
    n = len(s.boxes)
    assert 15 <= n <= 25 and s.labels.max() == n
    assert set(np.unique(s.labels)) == set(range(n + 1))
    for i, (x0, y0, x1, y1) in enumerate(s.boxes.astype(int), start=1):
        ys, xs = np.nonzero(s.labels == i)
        # box = bounding box pushed out by 2 px (clipped), object not touching the border
        assert (x0, y0) == (max(xs.min() - 2, 0), max(ys.min() - 2, 0))
        assert (x1, y1) == (min(xs.max() + 2, 255), min(ys.max() + 2, 255))
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < 255 and xs.max() < 255
    assert all(p.stat().st_size < 200_000 for p in nuclei_paths().values())


# -- medsam segment --roi ---------------------------------------------------------------------------
def disks_image(size=4096, centres=((1000, 1200), (3000, 700), (2500, 3900)), r=12, seed=0):
    """(size, size) uint16: dim noisy background with bright disks of radius r; and the disk masks."""
    rng = np.random.default_rng(seed)
    img = rng.normal(300, 40, (size, size)).clip(0, None).astype(np.uint16)
    yy, xx = np.ogrid[:size, :size]
    masks = []
    for cy, cx in centres:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[m] = 2000
        masks.append(m)
    boxes = np.array([[cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3] for cy, cx in centres], float)
    return img, masks, boxes


def run_cli_segment(tmp_path, img, boxes, *extra):
    import tifffile

    from medsam_core import cli

    tifffile.imwrite(tmp_path / "big.tif", img)
    csv = tmp_path / "boxes.csv"
    csv.write_text("x_min,y_min,x_max,y_max\n" + "".join(",".join(str(int(v)) for v in b) + "\n" for b in boxes))
    out = tmp_path / "labels.tif"
    code = cli.main(["segment", str(tmp_path / "big.tif"), "--boxes", str(csv), "--out", str(out), *extra])
    return code, tifffile.imread(out) if out.exists() else None


def test_cli_segment_roi_option_routes_through_predict_boxes(tmp_path, monkeypatch):
    from medsam_core import cli

    made = []
    monkeypatch.setattr(cli, "load_from_args", lambda args: None)
    monkeypatch.setattr("medsam_core.predictor.Predictor", lambda model: made.append(_BoxFill(bleed=40)) or made[-1])
    img, _, boxes = disks_image(2048, ((500, 600), (1500, 300)))
    code, labels = run_cli_segment(tmp_path, img, boxes)  # default --roi auto
    assert code == 0 and made[-1].shapes == [(128, 128)] * 2  # two small boxes: two zoomed crops
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):  # the 40 px bleed is clipped at box + 2.5 px
        ys, xs = np.nonzero(labels == k + 1)
        assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2 and ys.min() >= y0 - 2 and ys.max() <= y1 + 2
    code, labels = run_cli_segment(tmp_path, img, boxes, "--roi", "whole", "--no-clip-to-box")
    assert code == 0 and made[-1].shapes == [(2048, 2048)]
    assert (labels == 1).sum() == (31 + 80) ** 2  # the raw mask, kept on request


@pytest.mark.slow
def test_cli_segment_on_4096_image_puts_real_masks_inside_their_boxes(tmp_path, monkeypatch, lite_model):
    from medsam_core import cli
    from medsam_core.metrics import dice

    monkeypatch.setattr(cli, "load_from_args", lambda args: lite_model)
    img, masks, boxes = disks_image()
    code, labels = run_cli_segment(tmp_path, img, boxes)  # defaults: --roi auto, clip to box
    assert code == 0
    for k, (m, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes.astype(int), strict=True)):
        ys, xs = np.nonzero(labels == k + 1)
        assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2 and ys.min() >= y0 - 2 and ys.max() <= y1 + 2
        assert dice(labels == k + 1, m) > 0.85
