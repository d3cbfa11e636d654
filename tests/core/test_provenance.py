"""Provenance: mask encoding, edit detection, round trip beside the labels, bad files."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from medsam_core.io import write_labels
from medsam_core.provenance import (
    ClassTable,
    Prompt,
    Provenance,
    ProvenanceError,
    decode_mask,
    encode_mask,
    sidecar_path,
)

MODEL = SimpleNamespace(spec=SimpleNamespace(name="lite_medsam"), weights_sha256="ab" * 32)


def _labels():
    lab = np.zeros((40, 50), np.uint16)
    lab[5:15, 5:20] = 1
    lab[20:30, 30:45] = 2
    return lab


def _prov(lab):
    p = Provenance(ClassTable({1: "nucleus", 2: "debris"}, default=1))
    p.record_model_mask(1, lab == 1, [Prompt("box", [5, 5, 19, 14])], MODEL, round=0, when="2024-01-01T00:00:00+00:00")
    p.record_model_mask(2, lab == 2, [Prompt("point", [35, 25]), Prompt("key_box", [30, 20, 44, 29], z=None)],
                        "medsam_vit_b", round=2, class_id=2)
    return p


@pytest.mark.parametrize("shape", [(7, 9), (3, 5, 6)])
def test_mask_encoding_round_trip(shape):
    rng = np.random.default_rng(1)
    for _ in range(5):
        m = rng.random(shape) > 0.6
        assert np.array_equal(decode_mask(encode_mask(m), shape), m)
    full = np.ones(shape, bool)
    assert np.array_equal(decode_mask(encode_mask(full), shape), full)
    assert encode_mask(np.zeros(shape, bool)) is None


def test_sidecar_names(tmp_path):
    assert sidecar_path(tmp_path / "labels.tif").name == "labels.provenance.json"
    assert sidecar_path(tmp_path / "a.nii.gz").name == "a.provenance.json"
    assert sidecar_path(tmp_path / "b.ome.tif").name == "b.provenance.json"


def test_round_trip_beside_labels(tmp_path):
    lab = _labels()
    path = write_labels(tmp_path / "labels.tif", lab)
    p = _prov(lab)
    p.events = [(10.0, "prompt", 1), (12.5, "commit", 1), (20.0, "commit", 2)]
    js = p.save(path)
    assert js == tmp_path / "labels.provenance.json" and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    q = Provenance.load(path, lab)
    assert q.to_dict() == p.to_dict()
    r1 = q[1]
    assert r1.model == "lite_medsam" and r1.weights_sha256 == "ab" * 32 and r1.round == 0
    assert r1.created == "2024-01-01T00:00:00+00:00" and r1.area == 150 and not r1.edited_by_person
    assert q[2].class_id == 2 and q.classes.names[2] == "debris" and q[2].prompts[0].kind == "point"
    assert np.array_equal(q.model_mask(2, lab.shape), lab == 2)
    assert q.events == p.events  # the effort log survives a restart
    d = q.to_dict()
    del d["events"]  # a sidecar written before events were saved still loads
    assert Provenance.from_dict(d).events == []


def test_two_labels_files_with_one_name_never_take_each_others_provenance(tmp_path):
    """case.tif and case.nii.gz share the sidecar name case.provenance.json: the second save must not
    replace the first one's records, and a file never loads another file's records."""
    lab = _labels()
    tif = write_labels(tmp_path / "case.tif", lab)
    first = _prov(lab)
    first.save(tif)
    other = Provenance(ClassTable({1: "object"}))
    other.record_model_mask(1, lab == 2, [Prompt("box", [30, 20, 44, 29])], MODEL, round=1)
    nii = write_labels(tmp_path / "case.nii.gz", (lab == 2).astype(np.uint8))
    with pytest.raises(ProvenanceError, match="holds the provenance of case.tif.*save these labels under another name"):
        other.save(nii)
    assert Provenance.load(tif, lab).to_dict() == first.to_dict()  # kept
    with pytest.warns(UserWarning, match="is the provenance of case.tif, not of case.nii.gz: not used"):
        assert Provenance.load(nii).records == {}
    tif.unlink()  # the first file is gone: its name is free again
    other.save(nii)
    assert Provenance.load(nii).to_dict() == other.to_dict()


def test_edit_detection_paint_and_delete():
    lab = _labels()
    p = _prov(lab)
    assert p.sync_with_labels(lab) == {"edited": [], "painted": [], "removed": []}
    lab2 = lab.copy()
    lab2[15, 5:20] = 1  # the person grows object 1 by a row
    lab2[lab2 == 2] = 0  # deletes object 2
    lab2[35:38, 2:4] = 5  # paints a new object
    rep = p.sync_with_labels(lab2, when="2024-02-02T00:00:00+00:00")
    assert rep == {"edited": [1], "painted": [5], "removed": [2]}
    assert p[1].edited_by_person and p[1].area == 165 and p[1].modified.startswith("2024-02-02")
    assert p[5].edited_by_person and p[5].model is None and p[5].prompts == []
    # the model re-segments object 1: the flag resets, created is kept
    p.record_model_mask(1, lab2 == 1, [], MODEL, round=1)
    assert not p[1].edited_by_person and p[1].created == "2024-01-01T00:00:00+00:00" and p[1].round == 1


def test_missing_ids_dropped_with_warning(tmp_path):
    lab = _labels()
    path = tmp_path / "labels.tif"
    _prov(lab).save(path)
    lab[lab == 2] = 0
    with pytest.warns(UserWarning, match=r"\[2\]"):
        q = Provenance.load(path, lab)
    assert list(q.records) == [1]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}), json.dumps([1, 2]),
                                     json.dumps({"format": "napari-medsam-provenance", "version": 99}),
                                     json.dumps({"format": "napari-medsam-provenance", "version": 1,
                                                 "classes": {"1": "a"}, "default_class": 1,
                                                 "objects": [{"label": 1}]})])
def test_foreign_or_corrupt_file_raises(tmp_path, content):
    (tmp_path / "labels.provenance.json").write_text(content)
    with pytest.raises(ProvenanceError):
        Provenance.load(tmp_path / "labels.tif")


def test_bad_input_changes_nothing(tmp_path):
    lab = _labels()
    p = _prov(lab)
    before = p.to_dict()
    with pytest.raises(ProvenanceError):
        p.record_model_mask(3, lab == 1, class_id=9)
    with pytest.raises(ProvenanceError):
        p.record_model_mask(0, lab == 1)
    with pytest.raises(ProvenanceError):
        Prompt("lasso", [1, 2])
    with pytest.raises(ProvenanceError):
        p.save(tmp_path / "missing" / "labels.tif")
    assert p.to_dict() == before
    assert Provenance.load(tmp_path / "nothing.tif").records == {}


def test_class_table():
    t = ClassTable()
    assert t.names == {1: "object"} and t.add("cell") == 2 and t.add("cell") == 2
    with pytest.raises(ProvenanceError):
        ClassTable({1: "a"}, default=3)
