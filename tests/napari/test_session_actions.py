"""The Qt-free scripting API on napari.components.ViewerModel (no Xvfb, synchronous work):
settings validated before anything changes, and the prompt kinds (box, polygon, RECIST) as one
concept: each object records its kind, undo puts every kind's layer back, a polygon is a label."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from medsam_core import MedSAMError

from .conftest import big_objects, dice, ref_box


def _contour(mask: np.ndarray, n: int = 10) -> np.ndarray:
    """(n, 2) XY polygon: n points evenly along the mask's outer contour (a person's lasso)."""
    from skimage.measure import find_contours

    c = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
    return c[np.linspace(0, len(c) - 1, n, endpoint=False).astype(int)][:, ::-1]


@pytest.fixture
def bare_session():
    """A Session on an image, without a model: settings checks need none."""
    from napari.components import ViewerModel

    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    viewer = ViewerModel()
    s = Session(viewer, Runner(synchronous=True))
    s.settings.prefetch = False
    s.set_image_layer(viewer.add_image(np.random.default_rng(0).random((2, 40, 50)), name="stack"))
    return s


def _state(s):
    return asdict(s.settings), [ly.name for ly in s.viewer.layers], s.shapes_layer, s.labels_layer


@pytest.mark.parametrize("call", [
    lambda s: s.set_intensity("banana"),
    lambda s: s.set_intensity("ct", window="no_such_window"),
    lambda s: s.set_intensity("percentile", low=99, high=5),  # changed the settings before the check
    lambda s: s.set_intensity("percentile", low="x"),
    lambda s: s.set_roi_zoom("sideways"),
    lambda s: s.set_channel(7),
    lambda s: s.set_channel(0, "brightest"),
    lambda s: s.set_channel("0"),
    lambda s: s.set_overwrite("yes"),
    lambda s: s.set_negative(2),
])
def test_a_bad_setting_changes_nothing(bare_session, call):
    s = bare_session
    before = _state(s)
    with pytest.raises(MedSAMError):
        call(s)
    after = _state(s)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2] is before[2] and after[3] is before[3]  # no prompt or labels layer was remade


def test_good_settings_take_effect(bare_session):
    s = bare_session
    assert s.set_intensity("percentile", low=1, high=99).mode == "percentile"
    assert (s.settings.low, s.settings.high) == (1.0, 99.0)
    s.set_intensity("ct", "lung")
    assert s.intensity().window == "lung"
    s.set_roi_zoom("off")
    assert s.roi_mode() == "whole"
    s.set_channel(0, "1")
    assert (s.settings.channel_axis, s.settings.channel) == (0, 1)
    assert s.labels_layer.data.shape == (40, 50)  # the labels follow the spatial axes


@pytest.fixture
def session(lite_model, dsb2018):
    from napari.components import ViewerModel

    from napari_medsam._provenance_hook import ProvenanceActions
    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    image, ref = dsb2018
    viewer = ViewerModel()
    s = Session(viewer, Runner(synchronous=True))
    s.set_model(lite_model)
    s.set_image_layer(viewer.add_image(image[:256, :256], name="nuclei"))
    ProvenanceActions(s)
    return s, ref[:256, :256]


@pytest.mark.slow
def test_polygon_prompt_undo_and_provenance(session):
    from napari_medsam._provenance_hook import kinds_of, provenance_of

    s, ref = session
    a, b = big_objects(ref, 2)
    assert s.segment_boxes([ref_box(ref, a, 3)]) == [1]
    lid = s.segment_polygon(_contour(ref == b))
    assert lid == 2 and dice(s.labels_layer.data == lid, ref == b) > 0.8
    poly = s.polygon_layer()
    assert poly.nshapes == 1 and int(poly.features["label_id"][0]) == lid
    assert kinds_of(s.labels_layer) == {1: "box", 2: "polygon"}
    assert provenance_of(s.labels_layer).records[lid].prompts[0].kind == "box"  # the polygon's box
    assert s.objects[lid].kind == "polygon" and s.objects[lid].source.shape == (10, 2)
    assert s.sync_shapes(blocking=True) == [] and lid in s.objects  # the box sync leaves polygons alone

    before = np.array(s.labels_layer.data)
    for bad in ([[1, 1], [5, 5]], [[300, 300], [320, 300], [310, 330]], [[np.nan, 1], [5, 5], [1, 9]]):
        with pytest.raises(MedSAMError):
            s.segment_polygon(bad)
        np.testing.assert_array_equal(s.labels_layer.data, before)
        assert poly.nshapes == 1 and len(s.history) == 2

    assert s.undo() == "1 polygon"
    assert poly.nshapes == 0 and not (s.labels_layer.data == lid).any() and lid not in s.objects
    assert 2 not in kinds_of(s.labels_layer) and lid not in provenance_of(s.labels_layer).records
    assert s.shapes_layer.nshapes == 1  # the box object and its rectangle stay


@pytest.mark.slow
def test_polygon_layer_edits_follow_the_object(session):
    s, ref = session
    (b,) = big_objects(ref, 1)
    poly = s.polygon_layer()
    poly.add(_contour(ref == b)[:, ::-1], shape_type="polygon")  # as a drawn polygon arrives: data event
    assert s.objects and list(s.objects.values())[0].kind == "polygon"
    lid = next(iter(s.objects))
    moved = np.array(poly.data[0]) + [0, 40]  # dragged 40 px to the right: re-segmented, same id
    poly.data = [moved]
    assert list(s.objects) == [lid] and np.allclose(s.objects[lid].vertices, moved)
    assert dice(s.labels_layer.data == lid, ref == b) < 0.2
    poly.selected_data = {0}
    poly.remove_selected()
    assert not s.objects and not s.labels_layer.data.any()
    s.undo()
    assert poly.nshapes == 1 and np.allclose(poly.data[0], moved) and (s.labels_layer.data == lid).any()


@pytest.mark.slow
def test_recist_objects_record_their_kind(session):
    from napari_medsam._provenance_hook import kinds_of
    from napari_medsam._volume_session import VolumeActions

    s, ref = session
    (a,) = big_objects(ref, 1)
    x0, y0, x1, y1 = ref_box(ref, a, 0)
    lid = VolumeActions(s).segment_recist([[x0, y0], [x1, y1]])
    assert s.objects[lid].kind == "recist" and kinds_of(s.labels_layer)[lid] == "recist"
    assert s.objects[lid].source.shape == (1, 2, 2)
    s.undo()
    assert s.shapes_layer.nshapes == 0 and lid not in kinds_of(s.labels_layer)


@pytest.mark.slow
def test_the_documented_session_flow(lite_model):
    """docs/scripting.md, "The napari widget from a script: the session", headless on ViewerModel."""
    from napari.components import ViewerModel

    from medsam_core.samples import nuclei
    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    sample = nuclei()
    viewer = ViewerModel()
    s = Session(viewer, Runner(synchronous=True))
    s.set_model(lite_model)
    s.set_image_layer(viewer.add_image(sample.image, scale=(0.5, 0.5)))
    ids = s.segment_boxes([[20, 30, 48, 60], [100, 90, 130, 125]])
    assert ids == [1, 2]
    s.refine(ids[0], points=[[34, 45]], labels=[0])
    lid = s.segment_polygon([[58, 22], [69, 26], [73, 36], [69, 47], [58, 51], [48, 47], [44, 36], [48, 26]])
    ref = sample.labels == 5  # the nucleus of sample box [44, 22, 73, 51]
    assert lid == 3 and dice(s.labels_layer.data == lid, ref) > 0.8
    s.undo()
    assert set(np.unique(s.labels_layer.data).tolist()) == {0, 1, 2}
    before = asdict(s.settings)
    with pytest.raises(MedSAMError, match="0 <= low < high <= 100"):
        s.set_intensity("percentile", low=99, high=5)
    assert asdict(s.settings) == before


def test_a_volume_rescaled_in_place_gets_its_new_window(lite_model):
    """The volume's intensity window was memoised by the array's id: after ``layer.data *= 0.1`` (or a
    new array that reused a freed one's id) boxes were encoded under the old window (Dice 0.97 -> 0.52
    on a cells3d nucleus). Now the window follows the pixels, as a fresh session's does."""
    from napari.components import ViewerModel

    from napari_medsam._session import Session
    from napari_medsam._workers import Runner

    rng = np.random.default_rng(0)
    vol = rng.normal(3000, 300, (6, 64, 64)).astype(np.float32)
    vol[:, 20:40, 24:44] += 20000  # a bright block on every slice
    viewer = ViewerModel()
    s = Session(viewer, Runner(synchronous=True))
    s.set_model(lite_model)
    layer = viewer.add_image(vol.copy(), name="stack")
    s.set_image_layer(layer)
    plane = s.plane_at(3)
    before = s.model_intensity(s.plane_image(plane)).value_range
    layer.data *= 0.1
    layer.refresh()
    after = s.model_intensity(s.plane_image(plane)).value_range
    np.testing.assert_allclose(after, np.asarray(before) * 0.1, rtol=1e-3)
    layer.data = vol * 2  # a replacement of the same shape
    np.testing.assert_allclose(s.model_intensity(s.plane_image(plane)).value_range, np.asarray(before) * 2, rtol=1e-3)
    (lid,) = s.segment_boxes([[20, 16, 47, 43]], z=3)
    assert dice(s.labels_layer.data[3] == lid, vol[3] > 10000) > 0.8


def test_an_image_whose_data_changed_shape_is_refused_with_what_to_do(session):
    """Replacing a 2D layer's data by a larger image gave numpy's "operands could not be broadcast"."""
    from medsam_core.errors import ImageError

    s, ref = session
    (lid,) = s.segment_boxes([ref_box(ref, big_objects(ref, 1)[0], 3)])
    old_labels = s.labels_layer
    kept = np.array(old_labels.data)
    image = s.image_layer
    image.data = np.pad(np.asarray(image.data), ((0, 44), (0, 4)), mode="reflect")
    with pytest.raises(ImageError, match=r"is now \(300, 260\) but its labels .* Pick the image again"):
        s.segment_boxes([[10, 10, 40, 40]])
    np.testing.assert_array_equal(old_labels.data, kept)
    s.set_image_layer(image)  # what the message says
    assert s.labels_layer is not old_labels and s.labels_layer.data.shape == (300, 260)
    (new,) = s.segment_boxes([ref_box(ref, big_objects(ref, 1)[0], 3)])
    assert new == 1 and (s.labels_layer.data == 1).sum() > 50
    np.testing.assert_array_equal(old_labels.data, kept)


def test_undo_keeps_what_the_person_painted_since(session):
    """Undo wrote back every pixel a commit had changed, so a brush stroke made after it over the
    object was wiped (46 of 171 painted pixels became 0). Now only pixels still holding what MedSAM
    wrote are reverted, and the status says how many were kept."""
    s, ref = session
    a, b = big_objects(ref, 2)
    (la,) = s.segment_boxes([ref_box(ref, a, 3)])
    (lb,) = s.segment_boxes([ref_box(ref, b, 3)])
    obj = s.labels_layer.data == la
    ys, xs = np.nonzero(obj)
    y0 = (ys.min() + ys.max()) // 2
    band = np.zeros(obj.shape, bool)
    band[y0:y0 + 4, max(xs.min() - 6, 0):xs.max() + 7] = True  # a stroke across object 1
    s.labels_layer.data_setitem(np.nonzero(band), 7)  # napari's brush writes the same way
    said = []
    s.on_status = said.append
    assert s.undo() and s.undo()
    data = np.asarray(s.labels_layer.data)
    assert (data[band] == 7).all()  # the stroke, also where it covered object 1
    assert not np.isin(data, [la, lb]).any()  # MedSAM's objects are gone
    assert f"{int((band & obj).sum())} pixel(s) painted or erased by hand since were kept" in said[-1], said


def test_a_deleted_or_moved_box_takes_its_points_with_it(session):
    """A deleted box's points stayed with its id: the next object given that id was prompted with
    them and listed them in its provenance; a moved box (decoded from the box alone) kept them too."""
    from napari_medsam._sync import object_points

    s, ref = session
    a, b, c = big_objects(ref, 3)
    (la,) = s.segment_boxes([ref_box(ref, a, 3)])
    yy, xx = np.nonzero(ref == a)
    s.refine(la, [[xx.mean(), yy.mean()]], [0])
    assert len(s.points_layer.data) == 1
    said = []
    s.on_status = said.append
    s.shapes_layer.selected_data = {0}
    s.shapes_layer.remove_selected()  # the person deletes box a: its object and its point go
    assert la not in s.objects and len(s.points_layer.data) == 0
    assert said[-1] == f"MedSAM: box(es) deleted: label(s) {la} removed"  # (the line said the last action before)
    (lc,) = s.segment_boxes([ref_box(ref, c, 3)])
    assert lc == la  # the id comes round again ...
    assert len(object_points(s, lc, s.objects[lc].plane)[0]) == 0  # ... without a's point
    s.undo()
    s.undo()  # the deletion undone: box, object and point are back
    assert la in s.objects and len(s.points_layer.data) == 1
    assert int(s.points_layer.features["label_id"][0]) == la
    (lb,) = s.segment_boxes([ref_box(ref, b, 3)])
    s.refine(lb, [[float(np.nonzero(ref == b)[1].mean()), float(np.nonzero(ref == b)[0].mean())]], [1])
    data = list(s.shapes_layer.data)
    i = list(s.shapes_layer.features["label_id"]).index(lb)
    data[i] = data[i] + np.array([0.0, 3.0])  # the person nudges box b
    s.shapes_layer.data = data
    assert lb in s.objects and set(s.points_layer.features["label_id"]) == {la}


def test_a_box_that_gets_no_pixels_is_reported(session):
    """A copy of a box over its object (napari's Ctrl+V) with Overwrite off made a 0-pixel object
    reported as "segmented 1 box"; the status now says why it is empty and what to do."""
    s, ref = session
    (a,) = big_objects(ref, 1)
    box = ref_box(ref, a, 3)
    s.segment_boxes([box])
    said = []
    s.on_status = said.append
    (lid,) = s.segment_boxes([box])  # the same box again: its mask lies on object 1
    assert not (s.labels_layer.data == lid).any()
    assert f"label {lid} got no pixels: its mask lies on other objects (turn on Overwrite" in said[-1], said


def test_labels_reopened_as_uint8_take_object_256(session):
    """A labels file of 255 objects is written (and reopened) as uint8: the next box raised numpy's
    "Python integer 256 out of bounds for uint8" and no object was written, ever again."""
    s, ref = session
    full = np.zeros(s.labels_layer.data.shape, np.uint8)
    full[:3, :85] = np.arange(1, 256, dtype=np.uint8).reshape(3, 85)  # 255 one-pixel objects along the top
    mine = s.viewer.add_labels(full, name="day1")
    s.set_labels_layer(mine)
    (a,) = big_objects(ref, 1)
    (lid,) = s.segment_boxes([ref_box(ref, a, 3)])
    assert lid == 256 and (np.asarray(mine.data) == 256).sum() > 50
    np.testing.assert_array_equal(np.asarray(mine.data)[:3, :85], full[:3, :85])  # the 255 kept
    s.undo()
    assert not (np.asarray(mine.data) == 256).any() and int(np.asarray(mine.data).max()) == 255


def test_day_two_saved_labels_are_continued_and_shown_above_the_image(lite_model, dsb2018, tmp_path):
    """Reopened MedSAM labels (with their sidecar) were not taken: new boxes went into a new empty layer
    from id 1; opened before the image, a chosen labels layer stayed hidden under it."""
    from napari.components import ViewerModel

    from napari_medsam._provenance_hook import ProvenanceActions
    from napari_medsam._reader import napari_get_reader
    from napari_medsam._session import Session
    from napari_medsam._workers import Runner
    from napari_medsam._writer import write_labels_tiff

    image, ref = dsb2018
    image, ref = image[:256, :256], ref[:256, :256]
    a, b = big_objects(ref, 2)
    viewer = ViewerModel()
    s = Session(viewer, Runner(synchronous=True))
    s.set_model(lite_model)
    s.set_image_layer(viewer.add_image(image, name="nuclei"))
    ProvenanceActions(s)
    (la,) = s.segment_boxes([ref_box(ref, a, 3)])
    saved = tmp_path / "nuclei_labels.tif"
    write_labels_tiff(str(saved), np.asarray(s.labels_layer.data),
                      {"metadata": dict(s.labels_layer.metadata), "scale": (1, 1)})
    day2 = ViewerModel()  # a new session: the image first, then the saved labels
    s2 = Session(day2, Runner(synchronous=True))
    s2.set_model(lite_model)
    s2.set_image_layer(day2.add_image(image, name="nuclei"))
    ProvenanceActions(s2)
    ((data, kwargs, _),) = napari_get_reader(str(saved))(None)
    opened = day2.add_labels(data, **kwargs)
    assert s2.imports.take_opened(opened)  # what the widget does when a layer is opened
    assert s2.labels_layer is opened
    (lb,) = s2.segment_boxes([ref_box(ref, b, 3)])
    assert lb == la + 1 and (np.asarray(opened.data) == la).sum() > 50
    day3 = ViewerModel()  # labels opened before the image: chosen, they go above it
    s3 = Session(day3, Runner(synchronous=True))
    s3.set_model(lite_model)
    early = day3.add_labels(np.asarray(data), name="early")
    s3.set_image_layer(day3.add_image(image, name="nuclei"))
    s3.set_labels_layer(early)
    assert day3.layers.index(early) == day3.layers.index(s3.image_layer) + 1
