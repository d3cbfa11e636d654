"""GeoJSON (QuPath) export and import: identical objects and classes, read back by us and by shapely."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsam_core import ImageError
from medsam_core.geojson import read_geojson, write_geojson


def _cells():
    from skimage.draw import disk, ellipse

    labels = np.zeros((120, 160), np.uint16)
    labels[disk((30, 30), 12)] = 1
    labels[ellipse(80, 100, 15, 30, rotation=0.4)] = 2
    labels[10:50, 100:150] = 3
    labels[20:30, 115:130] = 0  # a hole
    labels[100:110, 5:15] = 7  # object 7 in two parts
    labels[112:118, 20:26] = 7
    return labels


def test_round_trip_is_pixel_exact_with_classes(tmp_path):
    labels = _cells()
    classes = {1: "Tumor", 2: "Stroma", 3: "Tumor", 7: "Immune cells"}
    path = write_geojson(tmp_path / "cells.geojson", labels, classes)
    back = read_geojson(path, labels.shape)
    assert np.array_equal(back.labels, labels)
    assert back.classes == classes and back.skipped == []


def test_shapely_reads_the_same_objects_and_classes(tmp_path):
    import shapely.geometry as sg

    labels = _cells()
    path = write_geojson(tmp_path / "c.geojson", labels, {1: "Tumor", 2: "Stroma", 3: "Tumor", 7: "Immune cells"})
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    by_id = {f["properties"]["medsam_label"]: f for f in doc["features"]}
    assert sorted(by_id) == [1, 2, 3, 7]
    for lid, feat in by_id.items():
        shape = sg.shape(feat["geometry"])
        assert shape.is_valid
        # pixel-corner coordinates (QuPath): each pixel centre of the object lies inside the polygon
        rr, cc = np.nonzero(labels == lid)
        pts = [sg.Point(c + 0.5, r + 0.5) for r, c in zip(rr[::7], cc[::7], strict=True)]
        assert all(shape.contains(p) for p in pts)
        assert abs(shape.area - (labels == lid).sum()) < 0.06 * (labels == lid).sum()
        assert feat["properties"]["objectType"] == "annotation"
    assert by_id[7]["geometry"]["type"] == "MultiPolygon"
    assert len(by_id[3]["geometry"]["coordinates"]) == 2  # exterior + the hole
    assert by_id[2]["properties"]["classification"]["name"] == "Stroma"


def test_qupath_style_file_without_our_ids_and_bad_input(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[2, 2], [12, 2], [12, 8], [2, 8], [2, 2]]]},
         "properties": {"objectType": "detection", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[20, 1], [25, 1], [25, 6], [20, 1]]]},
         "properties": {"classification": "Stroma"}},
    ]}
    (tmp_path / "q.geojson").write_text(json.dumps(doc))
    got = read_geojson(tmp_path / "q.geojson", (10, 30))
    assert (got.labels == 1).sum() == 60 and got.labels[2, 2] == 1 and got.labels[8, 2] == 0  # [2,12)x[2,8)
    assert got.classes == {1: "Tumor", 3: "Stroma"} and len(got.skipped) == 1 and "Point" in got.skipped[0]
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(ImageError, match="cannot read GeoJSON"):
        read_geojson(tmp_path / "bad.geojson", (10, 10))
    with pytest.raises(ImageError, match=".geojson"):
        write_geojson(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
