"""Qt-free 3D actions of a Session: one box -> a whole 3D object, key boxes, RECIST lines, precompute.

A 3D object is a ``VolumeRecord``: the ObjectRecord of its start box (the slice it was first
segmented from) plus the rectangles drawn on other slices that guide it (key boxes). In the
prompt Shapes layer a key box carries ``label_id = -owner`` so the 2D box sync leaves it alone;
``Session.rebuild_shapes`` (after undo) draws key boxes again from the records.

A run snapshots the volume, the key boxes and the target id on the GUI thread, walks the object
through the stack with ``medsam_core.propagate`` in a worker (progress, cancel), and commits the
whole 3D mask in ``_on_done`` as one undoable step against the labels as they are *then*.
Cancel or an error commits nothing.

Each object's last ``WalkResult`` is kept (``results``): it says why each direction stopped, and
a key box drawn later re-walks only the side of the start slice it lies on (``previous=``), from
the object's start box; the other side is kept as it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medsam_core import MedSAMError, Predictor, PromptError, WalkResult
from medsam_core.errors import CancelledError, ImageError
from medsam_core.preprocess import check_boxes
from medsam_core.volume import check_cancel

from . import _layers as L
from ._objects import ObjectRecord
from ._volume_recist import RecistLines


@dataclass(eq=False)
class VolumeRecord(ObjectRecord):
    """A 3D object: its start box (ObjectRecord fields) and (4, D) vertices of its key boxes."""

    key_vertices: tuple = ()


@dataclass
class _Edits:
    """What Session.commit expects from an editor."""

    items: list = field(default_factory=list)

    def edits(self):
        return [e for e in self.items if e.size]


@dataclass
class VolumeJob:
    shape: int  # index of the prompt rectangle the run was asked for
    shape_id: int  # its label_id before the run (0 new, > 0 a 2D/3D object, < 0 a key box)
    owner: int  # the 3D object's label id
    plane: L.Plane  # the rectangle's plane
    box: np.ndarray  # the rectangle's (4,) XYXY box
    keys: dict[int, np.ndarray]  # slice -> (4,) XYXY key box (the start slice excluded)
    perm: tuple[int, int, int]  # image axes (slice, rows, cols)
    added: bool = False  # the rectangle was added by a script: removed again on cancel/error
    start: tuple[int, np.ndarray] | None = None  # (slice, box) the walk starts from, if not the rectangle's
    previous: WalkResult | None = None  # the object's last walk: a key box re-walks only its side
    # what the run was started on (set by segment_3d); the result is written only where they still are
    image: object = None
    labels: object = None
    shapes: object = None
    vertices: np.ndarray | None = None  # the rectangle's vertices: finds it again if boxes before it went


@dataclass(frozen=True)
class WalkProgress:
    """One progress step of a 3D walk: slices decoded, the expected total (an estimate that follows
    the walk: it grows while a direction goes on past the expected extent and shrinks when one
    stops early) and the estimated seconds left (None until a slice has been timed)."""

    done: int
    total: int
    seconds_left: float | None = None
    planes: int = 0  # of ``done``: the extent prior's orthogonal planes read so far (an encode each)
    stage: str = "slice"  # what this step was: "slice" or "plane"


def _walk(predictor, volume, box, z, keys, spacing, intensity, cancel, previous=None):
    """Generator run in a worker: yields WalkProgress; returns the WalkResult."""
    from medsam_core import propagate

    done, planes, t_slices, last = 0, 0, 0.0, time.perf_counter()
    # key boxes guide (interpolated between key slices) but do not end the object: a key box drawn to
    # correct one slice must not cut off the slices beyond it (the stop rules still end the walk there)
    gen = propagate(predictor, volume, box, z, 0, key_boxes=keys or None, spacing=spacing, intensity=intensity,
                    cancel=cancel, bound_by_keys=False, previous=previous)
    while True:
        try:
            res = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        now, stage = time.perf_counter(), getattr(res, "stage", "slice")
        done += 1
        if stage == "plane":  # planes come before the walked slices and cost an encode each:
            planes += 1  # the time left is timed on the slices alone
        else:
            t_slices += now - last
        last = now
        left = t_slices / (done - planes) * max(res.total - done, 0) if done > planes else None
        yield WalkProgress(done, max(res.total, done + 1), left, planes, stage)
    check_cancel(cancel)
    return result


def _embed(predictor, volume, intensity, cancel):
    from medsam_core import embed_volume

    done = 0
    for done, total in embed_volume(predictor, volume, 0, intensity, batch_size=2, cancel=cancel):
        yield done, total
    return done


class VolumeActions(RecistLines):
    """3D segmentation, key boxes, RECIST lines and volume precompute for one Session."""

    def __init__(self, session, on_progress: Callable[[int, int], None] | None = None):
        self.s = session
        self.on_progress = on_progress or (lambda done, total: None)
        self.on_finished: Callable[[str], None] = lambda what: None
        self.key_mode = False  # the next 3D run from a new box adds it to the last 3D object
        self.last_owner: int | None = None
        self.on_result: Callable[[int], None] = lambda owner: None  # after a 3D object's walk is committed
        self.seconds_left: float | None = None  # the running walk's time estimate, read by on_progress
        self.walk_step: WalkProgress | None = None  # the running walk's last step (None for an encode)
        # per image: id(image layer) -> (image layer, {label id -> (last walk, image slicing axis)})
        self._results: dict[int, tuple[object, dict[int, tuple[WalkResult, int]]]] = {}
        self.cancel_event: threading.Event | None = None
        self._job: VolumeJob | None = None
        self._last_line: tuple | None = None  # (plane, long axis (2, 2) XY, shape index of its box)

    @property
    def results(self) -> dict[int, tuple[WalkResult, int]]:
        """The current image's 3D objects' last walks: label id -> (WalkResult, image slicing axis).
        Each image has its own (label ids repeat across images)."""
        image = L.raw_layer(self.s.image_layer)
        self._results = {k: v for k, v in self._results.items() if v[0] is image or v[0] in self.s.viewer.layers}
        entry = self._results.get(id(image))
        if entry is None or entry[0] is not image:
            entry = self._results[id(image)] = (image, {})
        return entry[1]

    @property
    def running(self) -> bool:
        return self.cancel_event is not None

    def cancel(self) -> None:
        """Stop the running 3D walk or precompute: nothing is written."""
        if self.cancel_event is not None:
            self.cancel_event.set()

    # -- which box, which object ------------------------------------------------------------------
    def _shape_ids(self) -> np.ndarray:
        from ._prompt_kinds import shape_ids

        return shape_ids(self.s.shapes_layer)

    def selected_shape(self) -> int:
        shapes = self.s.shapes_layer
        rects = [i for i in range(shapes.nshapes) if shapes.shape_type[i] == "rectangle"]
        chosen = [i for i in sorted(shapes.selected_data) if i in rects]
        if chosen:
            return chosen[-1]
        if not rects:
            raise PromptError("no box to segment in 3D: draw a rectangle on 'MedSAM boxes' (and select it)")
        return rects[-1]

    def _volume_axes(self, plane: L.Plane) -> tuple[int, int, int]:
        img = self.s.image_layer
        if len(plane.index) != 1 or self.s.settings.channel_axis is not None or getattr(img, "rgb", False):
            raise ImageError(
                f"Segment in 3D needs a 3D grey stack (Z, Y, X); layer {img.name!r} has shape "
                f"{tuple(L.image_data(img).shape)}"
                + (" with a channel axis: pick one channel into its own layer" if len(plane.index) == 1 else "")
            )
        return plane.index[0][0], plane.rows, plane.cols

    def _box_of(self, i: int):
        s = self.s
        plane, box = L.shape_to_box(s.shapes_layer, i, s.image_layer, s.viewer.dims, s.settings.channel_axis)
        return plane, check_boxes(box, L.plane_size(s.image_layer, plane))[0]

    def _overlapping_object(self, plane: L.Plane, box: np.ndarray, exclude: int) -> int | None:
        """The 3D object with most pixels inside ``box`` on ``plane`` (at least a third of its slice)."""
        lab = L.read_labels_plane(self.s.labels_layer, plane, self.s.settings.channel_axis)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = lab[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]
        best, best_n = None, 0
        for lid, rec in self.s.objects.items():
            if lid == exclude or not isinstance(rec, VolumeRecord):
                continue
            n = int((inside == lid).sum())
            if n > best_n and n >= (lab == lid).sum() / 3:
                best, best_n = lid, n
        return best

    def plan(self, i: int) -> VolumeJob:
        """Snapshot what a 3D run from rectangle ``i`` needs (GUI thread)."""
        s = self.s
        s.require_layers()
        sid = int(self._shape_ids()[i])
        plane, box = self._box_of(i)
        perm = self._volume_axes(plane)
        if sid < 0:
            owner = -sid
        elif sid > 0 and isinstance(s.objects.get(sid), VolumeRecord):
            owner = sid
        else:
            owner = self._overlapping_object(plane, box, sid)
            if owner is None and self.key_mode and self.last_owner in s.objects:
                owner = self.last_owner
            if owner is None:
                owner = sid if sid > 0 else s.next_id()
        keys: dict[int, np.ndarray] = {}
        ids = self._shape_ids()
        for k in range(s.shapes_layer.nshapes):
            if k != i and ids[k] in (owner, -owner) and s.shapes_layer.shape_type[k] == "rectangle":
                p, b = self._box_of(k)
                keys[p.index[0][1]] = b
        job = VolumeJob(i, sid, owner, plane, box, keys, perm)
        rec = s.objects.get(owner)
        if isinstance(rec, VolumeRecord) and sid != owner and rec.plane.index and rec.plane.rows == plane.rows \
                and rec.plane.cols == plane.cols and rec.plane.index[0][0] == plane.index[0][0]:
            # a key box of an existing object: walk from the object's own start box, keep what the key does
            # not change (the side of the start slice it is not on)
            z0 = rec.plane.index[0][1]
            keys[plane.index[0][1]] = box
            keys.pop(z0, None)
            job.start = (z0, np.asarray(rec.box, float))
            prev = self.results.get(owner)
            job.previous = prev[0] if prev is not None and prev[1] == perm[0] else None
        else:
            keys.pop(plane.index[0][1], None)
        return job

    def stops(self, owner: int) -> dict:
        """{"up"/"down": medsam_core.walk.Stop} of object ``owner``'s last walk ({} if none); slices
        index the image axis ``slice_axis(owner)``."""
        entry = self.results.get(owner)
        return dict(entry[0].stops) if entry is not None and owner in self.s.objects else {}

    def slice_axis(self, owner: int) -> int | None:
        entry = self.results.get(owner)
        return entry[1] if entry is not None else None

    def go_to_slice(self, owner: int, z: int) -> None:
        """Show slice ``z`` of the axis object ``owner`` was walked along (e.g. where its walk stopped)."""
        axis = self.slice_axis(owner)
        if axis is None:
            raise PromptError(f"object {owner} has no 3D walk to show")
        img = self.s.image_layer
        world = list(self.s.viewer.dims.point)
        nd = len(world)
        lead = nd - img.ndim
        world[lead + axis] = float(img.data_to_world([z if a == axis else 0 for a in range(img.ndim)])[axis])
        self.s.viewer.dims.set_point(lead + axis, world[lead + axis])

    # -- running ------------------------------------------------------------------------------------
    def segment_3d(self, i: int | None = None, blocking: bool = False, added: bool = False) -> None:
        """Segment the object of rectangle ``i`` (default: the selected one) through the stack."""
        if self.running:
            raise MedSAMError("a 3D run is in progress: wait for it or cancel it first")
        s = self.s
        job = self.plan(self.selected_shape() if i is None else i)
        job.added = added
        if added:  # keep the 2D box sync off this rectangle while the walk runs (see module docstring)
            ids = self._shape_ids()
            ids[job.shape] = -job.owner
            with s.quiet():
                s.set_shape_ids(ids)
        s.model_ready(blocking=True)
        img = L.image_data(s.image_layer)
        volume = np.ascontiguousarray(np.transpose(np.asarray(img), job.perm))
        spacing = tuple(float(s.image_layer.scale[a]) for a in job.perm)
        z, box = job.start if job.start is not None else (job.plane.index[0][1], job.box)
        job.image, job.labels, job.shapes = (L.raw_layer(x) for x in (s.image_layer, s.labels_layer, s.shapes_layer))
        job.vertices = np.array(s.shapes_layer.data[job.shape], copy=True)
        self._job, self.cancel_event = job, threading.Event()
        self.seconds_left = self.walk_step = None
        s.on_status(f"MedSAM: segmenting object {job.owner} in 3D from slice {z}...")
        s.runner.run_steps(_walk, Predictor(s.model, cache=s.cache), volume, box, z, job.keys, spacing,
                           s.intensity(), self.cancel_event, job.previous, on_step=self._on_step,
                           on_done=self._on_3d_done,
                           on_error=self._on_error, desc="MedSAM: segment in 3D", total=volume.shape[0])

    def segment_box_3d(self, box, z: int) -> None:
        """Add (4,) XYXY ``box`` on slice ``z`` as a prompt rectangle and segment it in 3D (one undo step)."""
        s = self.s
        s.require_layers()
        cur = s.current_plane()
        if len(cur.index) != 1:
            self._volume_axes(cur)  # raises the 3D-only message
        a = cur.index[0][0]
        if not 0 <= int(z) < L.image_data(s.image_layer).shape[a]:
            raise PromptError(f"slice {z} is outside the stack (0..{L.image_data(s.image_layer).shape[a] - 1})")
        plane = L.Plane(cur.rows, cur.cols, ((a, int(z)),))
        box = check_boxes(np.asarray(box, float), L.plane_size(s.image_layer, plane))[0]
        verts = L.box_to_vertices(box, plane, s.image_layer, s.shapes_layer, s.viewer.dims.point)
        with s.quiet():
            s.shapes_layer.add([verts], shape_type="rectangle")
        i = s.shapes_layer.nshapes - 1
        try:
            self.segment_3d(i, added=True)
        except MedSAMError:
            if self._job is None:  # failed before starting: take the rectangle back
                self._remove_shape(i)
            raise

    def _on_step(self, step) -> None:
        if isinstance(step, WalkProgress):
            self.seconds_left, self.walk_step = step.seconds_left, step
            self.on_progress(step.done, step.total)
        else:
            self.seconds_left, self.walk_step = None, None
            self.on_progress(*step)

    def _on_error(self, exc: Exception) -> None:
        job, self._job, self.cancel_event = self._job, None, None
        if job is not None and job.added and job.vertices is not None \
                and (k := self._find_rectangle(job)) is not None:
            self._remove_shape(k)
        if isinstance(exc, CancelledError):
            what = "3D run" if job is not None else "precompute"  # precompute runs without a job
            self.s.on_status(f"MedSAM: {what} cancelled; nothing was changed")
            self.on_finished("cancelled")
            return
        self.on_finished("error")
        if isinstance(exc, MedSAMError):
            self.s.on_status(f"MedSAM: {exc}")
            self.s.on_error(exc)
        else:
            self.s.on_error(MedSAMError(f"3D segmentation failed: {exc}"))

    def _remove_shape(self, i: int) -> None:
        shapes = self.s.shapes_layer
        with self.s.quiet():
            shapes.selected_data = {i}
            shapes.remove_selected()

    def _find_rectangle(self, job: VolumeJob) -> int | None:
        """Where the run's rectangle is now in the prompt layer (boxes before it may have been
        deleted during the run), or None if it is gone or was moved."""
        shapes = self.s.shapes_layer
        if shapes is None or L.raw_layer(shapes) is not job.shapes:
            return None
        order = [job.shape] + [k for k in range(shapes.nshapes) if k != job.shape]
        for k in order:
            if k < shapes.nshapes and shapes.shape_type[k] == "rectangle" \
                    and np.shape(shapes.data[k]) == job.vertices.shape and np.allclose(shapes.data[k], job.vertices):
                return k
        return None

    def _changed_since_start(self, job: VolumeJob) -> str | None:
        """Why the finished walk of ``job`` can no longer be written (None: it can). The walk took
        seconds to minutes; the user may have switched images, removed the labels layer or moved
        or deleted the box meanwhile, and the labels, objects and undo history it would be
        written against are then another's."""
        s = self.s
        image = getattr(job.image, "name", "?")
        if L.raw_layer(s.image_layer) is not job.image or job.image not in s.viewer.layers:
            return (f"the image changed during the run (it was {image!r}); pick {image!r} again and rerun "
                    "Segment in 3D (its slices stay encoded, so it is quicker)")
        labels = getattr(job.labels, "name", "?")
        if L.raw_layer(s.labels_layer) is not job.labels or job.labels not in s.viewer.layers:
            return (f"the labels layer {labels!r} was removed or replaced during the run; rerun Segment in 3D "
                    "to write the object into the current labels layer")
        where = self._find_rectangle(job)
        if where is None:
            return "its box was moved or deleted during the run; select the box and rerun Segment in 3D"
        job.shape = where
        return None

    def _on_3d_done(self, result: WalkResult) -> None:
        job, self._job, self.cancel_event = self._job, None, None
        s = self.s
        why = self._changed_since_start(job)
        if why is not None:
            if job.added and (k := self._find_rectangle(job)) is not None:
                self._remove_shape(k)
            self.on_finished("error")
            s.on_status(f"MedSAM: 3D object {job.owner} was not written: nothing was changed")
            s.on_error(MedSAMError(f"3D object {job.owner} was not written: {why}"))
            return
        out = result.volume()
        mask = np.transpose(out, np.argsort(job.perm))
        before = np.asarray(s.labels_layer.data)
        after = before.copy()
        after[after == job.owner] = 0
        if 0 < job.shape_id != job.owner:  # a 2D object drawn as a key box: its pixels go
            after[after == job.shape_id] = 0
        after[mask if s.settings.overwrite else mask & (after == 0)] = job.owner
        idx = np.nonzero(before != after)
        edit = L.Edit(idx, before[idx].copy(), after[idx].copy())
        objects = dict(s.objects)
        verts = np.array(s.shapes_layer.data[job.shape], copy=True)
        rec = objects.get(job.owner)
        ids = self._shape_ids()
        if isinstance(rec, VolumeRecord) and job.shape_id != job.owner:
            ids[job.shape] = -job.owner  # a key box of an existing 3D object
            key_verts = [np.array(s.shapes_layer.data[k], copy=True) for k in np.flatnonzero(ids == -job.owner)]
            objects[job.owner] = VolumeRecord(rec.label_id, rec.plane, rec.box, rec.vertices, rec.logits,
                                              key_vertices=tuple(key_verts))
            if job.shape_id > 0:
                objects.pop(job.shape_id, None)
        else:
            ids[job.shape] = job.owner
            key_verts = [np.array(s.shapes_layer.data[k], copy=True) for k in np.flatnonzero(ids == -job.owner)]
            objects[job.owner] = VolumeRecord(job.owner, job.plane, tuple(map(float, job.box)), verts, None,
                                              key_vertices=tuple(key_verts))
        n = int(out.any(axis=(1, 2)).sum())
        s.commit(_Edits([edit]), objects, f"3D object {job.owner}")
        with s.quiet():
            s.set_shape_ids(ids)
        self.last_owner = job.owner
        self.results[job.owner] = (result, job.perm[0])
        kept = "" if result.rewalked >= n else f", {result.rewalked} re-walked"
        s.on_status(f"MedSAM: 3D object {job.owner} over {n} slice(s){kept}; "
                    + "; ".join(f"{d}: {st}" for d, st in result.stops.items()))
        self.on_finished("done")
        self.on_result(job.owner)

    def precompute(self) -> None:
        """Encode every slice of the 3D image into the shared cache (a worker; progress, cancel)."""
        if self.running:
            raise MedSAMError("a 3D run is in progress: wait for it or cancel it first")
        s = self.s
        s.require_layers()
        plane = s.current_plane()
        perm = self._volume_axes(plane)
        s.model_ready(blocking=True)
        volume = np.ascontiguousarray(np.transpose(np.asarray(L.image_data(s.image_layer)), perm))
        self.cancel_event = threading.Event()
        self.seconds_left = self.walk_step = None
        s.on_status("MedSAM: precomputing the embeddings of all slices...")
        s.runner.run_steps(_embed, Predictor(s.model, cache=s.cache), volume, s.intensity(), self.cancel_event,
                           on_step=self._on_step, on_done=self._on_precompute_done, on_error=self._on_error,
                           desc="MedSAM: precompute slices", total=volume.shape[0])

    def _on_precompute_done(self, n: int) -> None:
        self.cancel_event = None
        self.s.on_status(f"MedSAM: {n} slice embeddings ready")
        self.on_finished("done")
