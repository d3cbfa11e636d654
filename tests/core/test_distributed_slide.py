"""One slide on a Dask LocalCluster (127.0.0.1): units of ROI crops own disjoint label chunks; the labels
equal the in-process ``segment_slide`` byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core import ngff
from medsam_core.distributed_slide import _chunks_of, plan_units

pytest.importorskip("distributed")


def _boxes(rng, n, shape):
    xy = rng.integers(20, np.array([shape[1] - 80, shape[0] - 80]), (n, 2))
    side = rng.integers(12, 60, (n, 1))
    return np.hstack([xy, xy + side]).astype(float)


def test_units_own_disjoint_chunks_and_cover_every_box():
    rng = np.random.default_rng(0)
    shape = (20000, 20000)
    boxes = _boxes(rng, 300, shape)
    units = plan_units(boxes, shape, chunk=512, boxes_per_unit=16)
    seen_chunks: dict = {}
    seen_boxes = []
    for u, unit in enumerate(units):
        for group in unit:
            seen_boxes += group.indices.tolist()
            for c in _chunks_of(group.window, 512):
                assert seen_chunks.setdefault(c, u) == u, f"chunk {c} written by units {seen_chunks[c]} and {u}"
    assert sorted(seen_boxes) == list(range(len(boxes)))
    assert len(units) > 5


@pytest.mark.slow
def test_two_workers_give_the_in_process_labels(tmp_path, lite_model):
    from skimage.data import immunohistochemistry

    from medsam_core import Predictor
    from medsam_core.distributed import local_client
    from medsam_core.distributed_slide import segment_slide_distributed
    from medsam_core.slide import segment_slide

    data = np.ascontiguousarray(np.tile(immunohistochemistry(), (2, 3, 1)))
    slide = ngff.write_ngff_image(tmp_path / "s.ome.zarr", [data, data[::4, ::4]], axes="yxc", chunk=256)
    boxes = _boxes(np.random.default_rng(1), 10, data.shape[:2])
    segment_slide(Predictor(lite_model, encoder_backend="torch"), slide, boxes, out=tmp_path / "inproc.zarr",
                  roi_mode="roi")
    with local_client(workers=2, dashboard=False, torch_threads=1) as client:
        res = segment_slide_distributed(client, slide, boxes, tmp_path / "dist.zarr", chunk=256, boxes_per_unit=2,
                                        encoder_backend="torch")
    assert res["units"] >= 3
    a = ngff.open_ngff(tmp_path / "inproc.zarr")
    b = ngff.open_ngff(tmp_path / "dist.zarr")
    level0 = np.asarray(b.levels[0][:])
    np.testing.assert_array_equal(np.asarray(a.levels[0][:]), level0)  # byte-identical labels
    np.testing.assert_array_equal(np.asarray(b.levels[1][:]), level0[::2, ::2])  # levels rebuilt after the units
    assert len(np.unique(level0)) == 11


@pytest.mark.slow
def test_medsam_slide_on_one_local_worker(tmp_path, monkeypatch, capsys):
    """The command line: ``medsam slide --workers 1`` writes the labels that the in-process command
    writes (byte for byte), and a GeoJSON."""
    from medsam_core.cli import main

    monkeypatch.setenv("MEDSAM_ENCODER_BACKEND", "torch")
    data = np.zeros((600, 700), np.uint8)
    data[100:160, 200:280] = 200
    data[400:450, 500:540] = 180
    slide = ngff.write_ngff_image(tmp_path / "s.ome.zarr", [data, data[::2, ::2]], axes="yx", chunk=256)
    (tmp_path / "b.csv").write_text("x_min,y_min,x_max,y_max\n195,95,285,165\n495,395,545,455\n")
    common = ["slide", "--image", str(slide), "--boxes", str(tmp_path / "b.csv"), "--roi", "roi"]
    assert main(common + ["--out", str(tmp_path / "inproc.zarr")]) == 0
    rc = main(common + ["--out", str(tmp_path / "dask.zarr"), "--workers", "1", "--no-dashboard",
                        "--geojson", str(tmp_path / "o.geojson")])
    assert rc == 0 and "Dask unit" in capsys.readouterr().out
    a = np.asarray(ngff.open_ngff(tmp_path / "inproc.zarr").levels[0][:])
    b = np.asarray(ngff.open_ngff(tmp_path / "dask.zarr").levels[0][:])
    assert set(np.unique(b)) == {0, 1, 2} and (b == 1)[100:160, 200:280].mean() > 0.5
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "o.geojson").is_file()
    unit = ngff.open_ngff(tmp_path / "inproc.zarr").units
    assert ngff.open_ngff(tmp_path / "dask.zarr").units == unit  # the slide's unit, as in-process


def test_distributed_slide_refuses_no_boxes_and_an_existing_geojson_before_any_work(tmp_path, capsys):
    from medsam_core import PromptError
    from medsam_core.cli import main
    from medsam_core.distributed_slide import segment_slide_distributed

    data = np.zeros((300, 300), np.uint8)
    slide = ngff.write_ngff_image(tmp_path / "s.ome.zarr", [data, data[::2, ::2]], axes="yx", chunk=128)
    with pytest.raises(PromptError, match="no boxes given"):  # an empty FeatureCollection: nothing written
        segment_slide_distributed(object(), slide, np.zeros((0, 4)), tmp_path / "l.zarr")
    assert not (tmp_path / "l.zarr").exists()
    (tmp_path / "b.csv").write_text("x_min,y_min,x_max,y_max\n10,10,40,40\n")
    (tmp_path / "o.geojson").write_text("{}")
    rc = main(["slide", "--image", str(slide), "--boxes", str(tmp_path / "b.csv"), "--out", str(tmp_path / "l.zarr"),
               "--workers", "1", "--geojson", str(tmp_path / "o.geojson")])
    assert rc == 2 and "exists: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "o.geojson").read_text() == "{}" and not (tmp_path / "l.zarr").exists()


def test_distributed_slide_refuses_a_bad_destination_before_any_work(tmp_path):
    """The same output rules as in-process: a .zarr store, never the slide file itself; no client is touched."""
    from medsam_core import ImageError
    from medsam_core.distributed_slide import segment_slide_distributed

    data = np.zeros((300, 300), np.uint8)
    slide = ngff.write_ngff_image(tmp_path / "s.ome.zarr", [data, data[::2, ::2]], axes="yx", chunk=128)
    for bad in (tmp_path / "labels.tif", tmp_path / "s.ome.zarr" / ".." / "s.ome.zarr"):
        with pytest.raises(ImageError):
            segment_slide_distributed(object(), slide, [[10, 10, 40, 40]], bad)
    assert ngff.label_names(slide) == [] and not (tmp_path / "labels.tif").exists()
