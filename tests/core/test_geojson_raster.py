"""Whole-slide GeoJSON import (issue 17): polygons rasterised tile by tile into an on-disk label store
give the pixels, ids and classes of the in-memory reader, and write back to the same GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsam_core import ImageError
from medsam_core.geojson import rasterise_geojson_to_store, read_geojson, write_geojson


def _cells():
    from skimage.draw import disk, ellipse

    labels = np.zeros((150, 170), np.uint32)
    labels[disk((30, 30), 12)] = 1
    labels[ellipse(80, 100, 15, 50, rotation=0.4)] = 2  # crosses tile borders
    labels[10:70, 100:150] = 3
    labels[20:30, 115:130] = 0  # a hole
    labels[100:110, 5:15] = 7  # object 7 in two parts (a MultiPolygon)
    labels[112:140, 60:75] = 7
    return labels


def test_tiled_store_equals_the_in_memory_reader_and_round_trips(tmp_path):
    labels = _cells()
    classes = {1: "Tumor", 2: "Stroma", 3: "Tumor", 7: "Immune cells"}
    path = write_geojson(tmp_path / "cells.geojson", labels, classes)
    got = rasterise_geojson_to_store(path, tmp_path / "store.ome.zarr", labels.shape, tile=64, chunk=32)
    store = got.labels
    level0 = np.asarray(store.levels[0][:])
    np.testing.assert_array_equal(level0, labels)
    np.testing.assert_array_equal(level0, read_geojson(path, labels.shape).labels)
    assert got.classes == classes and got.skipped == []
    for lid, (y0, y1, x0, x1) in got.extents.items():  # each extent holds its whole object
        assert (level0[y0:y1, x0:x1] == lid).sum() == (level0 == lid).sum() > 0
    np.testing.assert_array_equal(np.asarray(store.levels[1][:]), labels[::2, ::2])  # pyramid built
    # written back (regions: never scanning the store whole) -> the same polygons and classes
    back = write_geojson(tmp_path / "back.geojson", store.levels[0], got.classes, regions=list(got.extents.values()))
    again = read_geojson(back, labels.shape)
    np.testing.assert_array_equal(again.labels, labels)
    assert again.classes == classes


def test_overlaps_outside_features_and_bad_input(tmp_path):
    sq = lambda x0, y0, s: [[[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]]  # noqa: E731
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(10, 10, 40)}, "properties": {}},
             {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(30, 30, 40)},
              "properties": {"classification": {"name": "B"}}},
             {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
             {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(500, 500, 9)}, "properties": {}}]
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    got = rasterise_geojson_to_store(path, tmp_path / "s.zarr", (100, 90), tile=32, chunk=16)
    ref = read_geojson(path, (100, 90))
    np.testing.assert_array_equal(np.asarray(got.labels.levels[0][:]), ref.labels)  # the first keeps overlaps
    assert got.classes == {2: "B"} and len(got.skipped) == 2 and set(got.extents) == {1, 2}
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 2]]]}}))
    with pytest.raises(ImageError, match="feature 0"):
        rasterise_geojson_to_store(bad, tmp_path / "b.zarr", (10, 10))
    assert not (tmp_path / "b.zarr").exists()  # nothing created for bad input


def test_labels_of_another_tool_copied_into_a_store_tile_by_tile(tmp_path):
    import zarr

    from medsam_core.labelstore import copy_to_store

    labels = _cells()
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=labels.shape, chunks=(32, 32), dtype="u4")
    src[:] = labels
    store, extents = copy_to_store(src, tmp_path / "copy.zarr", chunk=32, tile=64)
    np.testing.assert_array_equal(np.asarray(store.levels[0][:]), labels)
    np.testing.assert_array_equal(np.asarray(store.levels[1][:]), labels[::2, ::2])
    assert sorted(extents) == [1, 2, 3, 7]
    for lid, (y0, y1, x0, x1) in extents.items():  # tight: each window is the object's bounding box
        rows, cols = np.nonzero(labels == lid)
        assert (y0, y1, x0, x1) == (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    np.testing.assert_array_equal(src[:], labels)  # the source is only read
    with pytest.raises(ImageError, match="2D integer"):
        copy_to_store(np.zeros((4, 4), np.float32), tmp_path / "f.zarr")


def test_update_levels_merges_windows_per_chunk_and_matches_a_full_rebuild(tmp_path):
    from medsam_core.labelstore import LabelStore

    store = LabelStore.create(tmp_path / "l.zarr", (300, 280), chunk=32)
    rng = np.random.default_rng(1)
    full = np.zeros((300, 280), np.uint32)
    for lid in range(1, 40):  # many small writes, several falling in one coarse chunk
        y, x = rng.integers(0, 290), rng.integers(0, 270)
        h, w = rng.integers(1, 10, 2)
        full[y : y + h, x : x + w] = lid
        store.write_region((y, y + h, x, x + w), full[y : y + h, x : x + w])
    assert store.update_levels() == 39 and store.dirty == []
    ref = full
    for level in store.levels[1:]:
        ref = ref[::2, ::2]
        np.testing.assert_array_equal(np.asarray(level[:]), ref)
