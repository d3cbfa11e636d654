"""Whole-slide images: lazy pyramids (TIFF, OME-Zarr), NGFF labels written/read by us and by ome-zarr,
ROI segmentation on a slide too large to load, import and refinement of a foreign label image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from medsam_core import ImageError, io, ngff, roi, wsi
from medsam_core.imported import import_labels, mask_to_logits, refine_object

from .roi_fakes import BoxFillPredictor


def _tissue(h=512, w=768):
    from skimage.data import immunohistochemistry

    tile = immunohistochemistry()  # (512, 512, 3) uint8, real IHC tissue
    reps = (-(-h // 512), -(-w // 512), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:h, :w])


def _pyramid_tiff(path, data, mpp=0.5):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=(128, 128), photometric="rgb", compression="zlib")
        tw.write(data, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}, **kw)
        tw.write(data[::2, ::2], subfiletype=1, **kw)
        tw.write(data[::4, ::4], subfiletype=1, **kw)


class Counting:
    """Wraps a level; records the pixel count of every read."""

    def __init__(self, level):
        self.level, self.shape, self.dtype, self.ndim = level, level.shape, level.dtype, level.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.level[key]
        self.reads.append(int(np.prod(out.shape[:2])))
        return out


def test_pyramidal_ome_tiff_opens_lazily_with_pixel_size_and_rgb(tmp_path):
    data = _tissue()
    _pyramid_tiff(tmp_path / "slide.ome.tif", data)
    assert wsi.is_pyramid_path(tmp_path / "slide.ome.tif")
    with wsi.open_pyramid(tmp_path / "slide.ome.tif") as pyr:
        assert pyr.rgb and pyr.kind == "tiff" and pyr.spacing == (0.5, 0.5) and pyr.unit == "um"
        assert pyr.level_shapes() == [(512, 768, 3), (256, 384, 3), (128, 192, 3)]
        assert np.array_equal(pyr.read_region((100, 164, 300, 420)), data[100:164, 300:420])
        assert np.array_equal(np.asarray(pyr.levels[2][:]), data[::4, ::4])
        with pytest.raises(ImageError, match="outside"):
            pyr.read_region((0, 600, 0, 10))


def test_intensity_window_reads_only_the_coarsest_level(tmp_path):
    data = _tissue()
    _pyramid_tiff(tmp_path / "s.tif", data)
    pyr = wsi.open_pyramid(tmp_path / "s.tif")
    levels = [Counting(lv) for lv in pyr.levels]
    win = wsi.intensity_window(levels)
    assert win.mode == "range" and levels[0].reads == [] and levels[1].reads == []
    assert sum(levels[2].reads) == 128 * 192
    pyr.close()


def test_ome_zarr_channels_move_last_and_labels_round_trip_through_ome_zarr(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (300, 200, 2), dtype=np.uint16)  # (y, x, c): two fluorescence channels
    ngff.write_ngff_image(tmp_path / "img.ome.zarr", [img, img[::2, ::2]], axes="yxc", spacing=(0.3, 0.3),
                          channel_names=["DAPI", "CD3"], chunk=64)
    pyr = wsi.open_pyramid(tmp_path / "img.ome.zarr")
    assert not pyr.rgb and pyr.channel_names == ["DAPI", "CD3"] and pyr.spacing == (0.3, 0.3)
    assert np.array_equal(pyr.read_region((10, 70, 20, 90)), img[10:70, 20:90])
    assert np.array_equal(np.asarray(wsi.channel_view(pyr.levels[1], 1)[:]), img[::2, ::2, 1])
    labels = np.zeros((300, 200), np.uint32)
    labels[20:80, 30:90], labels[150:160, 5:15], labels[200:290, 100:199] = 3, 70000, 9
    out = ngff.write_ngff_labels(tmp_path / "img.ome.zarr", labels, name="cells", chunk=64)
    assert out == tmp_path / "img.ome.zarr" / "labels" / "cells"
    assert ngff.label_names(tmp_path / "img.ome.zarr") == ["cells"]
    ours = ngff.open_ngff(tmp_path / "img.ome.zarr", label="cells")
    assert ours.is_label and ours.spacing == (0.3, 0.3) and len(ours.levels) == 4  # 300 -> 38 <= 64
    assert np.array_equal(np.asarray(ours.levels[0][:]), labels)
    assert np.array_equal(np.asarray(ours.levels[1][:]), labels[::2, ::2])  # nearest: no new ids
    nodes = list(Reader(parse_url(str(tmp_path / "img.ome.zarr")))())
    label_node = next(n for n in nodes if n.metadata.get("name") == "cells")
    theirs = np.asarray(label_node.data[0])
    assert np.array_equal(theirs, labels)
    assert set(np.unique(np.asarray(label_node.data[2]))) <= set(np.unique(labels))


def test_labels_written_chunk_wise_from_a_lazy_source_and_atomically(tmp_path):
    import zarr

    src = zarr.open_array(str(tmp_path / "src.zarr"), mode="w", shape=(1000, 1300), chunks=(256, 256), dtype="u2")
    src[100:400, 200:900] = 5
    counting = Counting(src)
    out = ngff.write_ngff_labels(tmp_path / "lab.zarr", counting, chunk=256, spacing=(0.25, 0.25), unit="micrometer")
    assert max(counting.reads) <= 256 * 1024  # one band of 256 rows x 4 chunks at a time, never the whole
    got = ngff.open_ngff(out)
    assert got.is_label and np.array_equal(np.asarray(got.levels[0][:]), src[:])
    with pytest.raises(ImageError, match="overwrite=True"):
        ngff.write_ngff_labels(out, np.zeros((1000, 1300), np.uint8))
    # a failed write leaves the old labels as they were (the new array is built aside, then renamed)

    class Broken(Counting):
        def __getitem__(self, key):
            raise OSError("disk gone")

    with pytest.raises(OSError):
        ngff.write_ngff_labels(out, Broken(src), overwrite=True, chunk=256)
    assert np.array_equal(np.asarray(ngff.open_ngff(out).levels[0][:]), src[:])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ImageError, match="2D"):
        ngff.write_ngff_labels(tmp_path / "x.zarr", np.zeros((2, 3, 4), np.uint8))
    assert not (tmp_path / "x.zarr").exists()


def test_io_write_labels_dispatches_to_ome_zarr_and_geojson(tmp_path):
    labels = np.zeros((64, 80), np.uint16)
    labels[5:20, 5:30] = 1
    meta = io.ImageMeta(spacing=(0.5, 0.5), axes="YX", unit="um")
    z = io.write_labels(tmp_path / "l.ome.zarr", labels, meta)
    assert ngff.open_ngff(z).spacing == (0.5, 0.5) and ngff.open_ngff(z).units == ("micrometer", "micrometer")
    g = io.write_labels(tmp_path / "l.geojson", labels)
    assert json.loads(g.read_text())["features"][0]["properties"]["medsam_label"] == 1


class HugeTissue:
    """A 100,000 x 100,000 RGB level made of tissue tiles; refuses any read larger than 4096^2."""

    def __init__(self, side=100_000):
        self.tile = _tissue(512, 512)
        self.shape, self.dtype, self.ndim = (side, side, 3), np.dtype(np.uint8), 3
        self.largest = 0

    def __array__(self, *a, **k):
        raise AssertionError("the whole slide was materialised")

    def __getitem__(self, key):
        ys, xs = key[0], key[1]
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        ny, nx = len(range(y0, y1, ystep)), len(range(x0, x1, xstep))
        assert ny * nx <= 4096 * 4096, f"read of {ny} x {nx} pixels"
        self.largest = max(self.largest, ny * nx)
        rows = np.arange(y0, y1, ystep) % 512
        cols = np.arange(x0, x1, xstep) % 512
        return self.tile[rows][:, cols]


def test_auto_mode_segments_a_100k_slide_by_crops_only():
    level0 = HugeTissue()
    coarse = HugeTissue(100_000 // 64)
    boxes = np.array([[50_000, 60_000, 50_030, 60_025], [99_950, 10, 99_990, 40], [10, 99_960, 300, 99_999]], float)
    assert roi.choose_roi(boxes, (100_000, 100_000)).all()
    pred = BoxFillPredictor()
    res = roi.predict_boxes(pred, [level0, coarse], boxes)
    assert [r.roi for r in res] == [True] * 3 and level0.largest <= 600 * 600
    assert all(s[0] * s[1] <= 600 * 600 for s in pred.shapes)
    y0, y1, x0, x1 = res[0].window
    assert res[0].mask.sum() == 31 * 26 and x0 <= 50_000 and y0 <= 60_000


def test_mask_to_logits_places_the_mask_in_the_low_res_grid():
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True
    lg = mask_to_logits(mask, 256)
    assert lg.shape == (1, 1, 256, 256)
    assert (lg[0, 0, :128, :120] > 0).all() and (lg[0, 0, :128, 136:] < 0).all() and (lg[0, 0, 128:] < 0).all()


def test_import_labels_gives_boxes_and_imported_provenance():
    labels = np.zeros((50, 60), np.int32)
    labels[5:10, 7:20], labels[30:45, 40:59] = 4, 11
    imp = import_labels(labels, "cellpose_masks.tif", classes={11: "Tumor"})
    assert imp.ids.tolist() == [4, 11]
    assert imp.boxes.tolist() == [[7, 5, 19, 9], [40, 30, 58, 44]]
    assert imp.provenance[4].model == "imported from cellpose_masks.tif"
    assert imp.provenance.classes.names[imp.provenance[11].class_id] == "Tumor"


@pytest.mark.slow
def test_refining_one_imported_object_changes_only_that_object(lite_model, dsb2018):
    from scipy import ndimage

    from medsam_core import Predictor

    image, ref = dsb2018
    ref = ref.astype(np.uint32)
    imported = ref.copy()
    lid = 40  # a Cellpose-like label image whose object 40 bled 4 px into the background
    imported[ndimage.binary_dilation(ref == lid, iterations=4) & (ref == 0)] = lid
    before = imported.copy()
    box = import_labels(ref, "reference").boxes[list(np.unique(ref)[1:]).index(lid)]
    window, changed = refine_object(Predictor(lite_model), image, imported, lid, box=box)
    assert changed > 0
    diff = imported != before
    assert set(np.unique(before[diff])) <= {0, lid} and set(np.unique(imported[diff])) <= {0, lid}
    assert np.array_equal(imported != lid, (before != lid) | diff & (before == lid))  # others untouched

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(imported == lid, ref == lid) > dice(before == lid, ref == lid) + 0.1


def test_a_huge_single_plane_tiff_opens_lazily_and_a_stack_does_not(tmp_path, monkeypatch):
    monkeypatch.setattr(wsi, "LAZY_PIXELS", 100 * 100)
    plane = np.zeros((300, 200), np.uint16)
    plane[10:20, 30:50] = 7
    tifffile.imwrite(tmp_path / "strips.tif", plane)  # stripped, not tiled, one level
    tifffile.imwrite(tmp_path / "small.tif", plane[:50, :50])
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane] * 3), photometric="minisblack")
    assert wsi.is_pyramid_path(tmp_path / "strips.tif")
    assert not wsi.is_pyramid_path(tmp_path / "small.tif") and not wsi.is_pyramid_path(tmp_path / "stack.tif")
    with wsi.open_pyramid(tmp_path / "strips.tif") as pyr:
        assert pyr.level_shapes() == [(300, 200)] and not pyr.rgb
        assert np.array_equal(pyr.read_region((0, 40, 0, 60)), plane[:40, :60])
    with pytest.raises(ImageError, match="Z axis|stack|plane"):
        wsi.open_pyramid(tmp_path / "stack.tif")
