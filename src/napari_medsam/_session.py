"""Qt-free per-viewer state: model, predictors, cache, prompt/target layers, objects, history.

The session owns what the widget shows: one image layer, a prompt Shapes layer ("MedSAM
boxes", rectangles whose ``label_id`` feature names their object), a Points layer ("MedSAM
points", features ``positive`` and ``label_id``) and a target Labels layer. ``sync_shapes``
brings the labels in line with the rectangles (new ones segmented, moved ones followed, deleted
ones removed); every change is one ``Commit`` that ``undo`` reverts exactly.

Threading: encoding a slice goes through ``runner`` (see _workers.Runner); decoding a box on
a cached embedding is a few tens of ms and runs where it is called.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from medsam_core import EmbeddingCache, Intensity, MedSAMError, Predictor, PromptError
from medsam_core.errors import ImageError

from . import _layers as L
from . import _zoom as Z
from ._history import History
from ._import_session import ImportActions
from ._objects import Commit, ObjectRecord
from ._prompt_actions import PromptActions
from ._prompt_kinds import BOXES, POINTS, BoxKind, PointKind, kinds
from ._reader import META_KEY
from ._runtime_guard import avoid_triton_clash
from ._settings import Settings, SettingsActions, intensity_of
from ._slide_plane import ONLY_BOXES, SlidePlane, check_slide_labels, new_slide_labels, slide_labels_of

LABELS = "MedSAM labels"
__all__ = ["BOXES", "LABELS", "POINTS", "Session", "Settings"]


@dataclass
class _ImageWork:
    """Where the work on one image stood when another image was chosen."""

    image: object  # the image layer (unwrapped)
    labels: object  # its labels layer
    objects: dict
    history: list
    channel_axis: int | None


def weights_note(model) -> str:
    """" (ft_decoder.pt)" for a checkpoint file, " (fine-tuned here, round 2)" for a model trained in
    this session, "" for the bundled weights: the model line says which weights serve."""
    from pathlib import Path

    from medsam_core.registry import bundled_weights_path

    path = getattr(model, "weights_path", None)
    if path is None:
        rnd = (getattr(model, "meta", None) or {}).get("round")
        return f" (fine-tuned here, round {rnd})" if rnd else " (weights in memory)"
    try:
        if Path(path).resolve() == bundled_weights_path(model.spec).resolve():
            return ""
    except Exception:  # noqa: BLE001 - a model without bundled weights
        pass
    return f" ({Path(path).name})"


class Session(SettingsActions, PromptActions, History):
    """State and actions of one MedSAM widget on one napari viewer (model: ``napari.Viewer``).

    The scripting API: every method here (and in SettingsActions / History) validates before it
    changes anything and raises MedSAMError on bad input; the widget's controls call these.
    """

    def __init__(self, viewer, runner, on_status: Callable[[str], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None):
        avoid_triton_clash()
        self.viewer = viewer
        self.runner = runner
        self.settings = Settings()
        self.cache = EmbeddingCache()
        self.model = None
        self.predictor: Predictor | None = None  # decodes, on the calling (GUI) thread
        self._encoder: Predictor | None = None  # encodes, in a worker; shares the cache
        self.image_layer = self.labels_layer = self.shapes_layer = self.points_layer = None
        self.objects: dict[int, ObjectRecord] = {}
        self.history: list[Commit] = []
        self.on_status = on_status or (lambda text: None)
        self.on_error = on_error or (lambda exc: None)
        self.windows = Z.WindowMemo()  # the fixed intensity window per plane image
        self._encoding = None  # the _zoom.Needs being encoded in a worker
        self._loading = False
        self._load_request = 0  # counts model requests: only the last one's load is used
        self._pending_load = None  # (name, checkpoint, device) of the load running in a worker
        self.quiet_depth = 0  # > 0 while the session edits its own prompt layers
        self._syncing = self._resync = False
        # Bookkeeping after each commit / undo (provenance, effort: _provenance_hook.ProvenanceActions);
        # called with the Commit; a failure there warns and never costs the user a mask.
        self.on_commit: Callable | None = None
        self.on_undo: Callable | None = None
        self.new_kind, self.new_source = "box", None  # what the next new box-layer objects come from
        self.imports = ImportActions(self)  # objects of the labels layer no prompt made: adopted when prompted
        # Each image's own labels layer and where its work stood: id(image layer) -> _ImageWork. Going
        # back to an image writes into its labels again, with its boxes and undo history as they were
        # left; another image never writes into them.
        self._labels_by_image: dict[int, _ImageWork] = {}
        self._work_axis = None  # the channel axis the current objects' planes were made under
        # True while a caller puts the next image's layers in before choosing it (the image series):
        # the dims move under the old image then, and nothing may be encoded or synced for it
        self.switching = False

    @contextmanager
    def making(self, kind: str, source=None):
        """Objects the box sync creates inside this block were made by prompt kind ``kind`` (e.g. a
        RECIST line: ``source`` its (2, 2) XY geometry), for their records and provenance."""
        self.new_kind, self.new_source = kind, source
        try:
            yield
        finally:
            self.new_kind, self.new_source = "box", None

    # -- model --------------------------------------------------------------------------------
    def set_model(self, model) -> None:
        self.model = model
        self.predictor = Predictor(model, cache=self.cache)
        self._encoder = Predictor(model, cache=self.cache)
        self._loading = False
        self._load_request += 1  # a load still running was asked for before this: its model is not used
        self._pending_load = None
        self.on_status(f"MedSAM: {model.spec.name}{weights_note(model)} on {self.device}")

    def load_model(self, name: str = "lite_medsam", checkpoint=None, device=None):
        """Load a registered model (bundled weights, or ``checkpoint``) now, on this thread; returns it."""
        from medsam_core import load_model

        model = load_model(name, checkpoint=checkpoint, device=device)
        self.set_model(model)
        return model

    @property
    def device(self) -> str:
        return str(self.predictor.device) if self.predictor else "-"

    @property
    def encoder_text(self) -> str:
        """For the model line: what encodes images ("" before the first image)."""
        states = [p.encoder_state() for p in (self._encoder, self.predictor) if p is not None]
        state = next((st for st in states if st is not None), None)
        if state is None:
            return ""
        if state == "pending":
            return "encoder: PyTorch while the fast one is built (once, about a minute)"
        name, _, precision = state.partition(" ")  # "openvino bf16": an opted-in low precision
        return "encoder: " + " ".join(filter(None, [{"openvino": "OpenVINO", "torch": "PyTorch"}.get(name, name),
                                                     precision]))

    @property
    def encoder_calls(self) -> int:
        return (self.predictor.encoder_calls + self._encoder.encoder_calls) if self.predictor else 0

    def load_model_async(self, name="lite_medsam", checkpoint=None, device=None) -> None:
        """Load in a worker; the model asked for last is the one used, whichever load ends first."""
        from medsam_core import load_model

        self._loading = True
        self._load_request += 1
        request = self._load_request
        self._pending_load = (name, checkpoint, device)
        self.on_status(f"MedSAM: loading {name}...")
        self.runner.run(load_model, name, checkpoint, device,
                        on_done=lambda model: self._on_load_done(model, request),
                        on_error=lambda exc: self._on_load_error(exc, request), desc=f"MedSAM: loading {name}")

    def _on_load_done(self, model, request: int | None = None) -> None:
        if not self._loading or (request is not None and request != self._load_request):
            return  # a model was set or asked for after this one: the user's last choice wins
        self.set_model(model)
        self.safe(self.sync_shapes)
        self.safe(self.prefetch)  # the image on screen is encoded right away, before the first box

    def _on_load_error(self, exc: Exception, request: int) -> None:
        if request != self._load_request:  # superseded: a later load runs, or a model was set meanwhile
            now = ("the model asked for last is loading" if self._loading else
                   f"{self.model.spec.name}{weights_note(self.model)} serves" if self.model is not None else
                   "no model is loaded")
            self.on_status(f"MedSAM: an earlier model load failed ({exc}); {now}")
            return
        self._pending_load = None
        self._on_task_error(exc)

    def _on_task_error(self, exc: Exception) -> None:
        self._loading = False
        self._encoding = None
        self.on_status(f"MedSAM: {exc}")
        self.on_error(exc)

    def safe(self, func, *args):
        try:
            return func(*args)
        except MedSAMError as exc:
            self.on_error(exc)

    # -- layers -------------------------------------------------------------------------------
    def set_image_layer(self, layer, labels_layer=None) -> None:
        """Segment ``layer``: create its prompt layers and a matching Labels layer (or use ``labels_layer``)."""
        from napari.layers import Image

        if not isinstance(layer, Image):
            raise MedSAMError(f"{getattr(layer, 'name', layer)!r} is not an image layer: pick an Image layer")
        L.check_channel_axis(layer, self.settings.channel_axis)
        if labels_layer is not None:
            L.check_labels_fit(labels_layer, layer, self.settings.channel_axis)
            check_slide_labels(labels_layer, layer, self.settings.channel_axis)
        self._disconnect()
        kept = self._fitting_labels(layer)  # before image_layer changes: the same image keeps its labels
        self._remember_work()
        work = self._labels_by_image.get(id(L.raw_layer(layer)))
        resume = (work is not None and work.image is L.raw_layer(layer) and kept is not None and kept is work.labels
                  and labels_layer in (None, kept) and work.channel_axis == self.settings.channel_axis)
        self.image_layer, self.objects, self.history = layer, {}, []
        if resume:  # back to an image: its objects (their boxes) and its undo steps, as they were left
            self.objects, self.history = dict(work.objects), list(work.history)
        self.imports.reset()
        self.labels_layer = labels_layer or kept or self.imports.imported_layer() or self._new_labels()
        self._labels_by_image = {k: v for k, v in self._labels_by_image.items() if v.image in self.viewer.layers}
        self._work_axis = self.settings.channel_axis
        self._remember_work()
        polygons = kinds()["polygon"].find_layer(self)
        if polygons is not None:  # the old image's polygons: drawn again on demand (polygon_layer)
            self.viewer.layers.remove(polygons)
        self.shapes_layer = self._prompt_layer(BOXES, BoxKind.make_layer)  # prompts above the labels
        self.points_layer = self._prompt_layer(POINTS, PointKind.make_layer)
        self.shapes_layer.events.data.connect(self._on_shapes_data)
        self.points_layer.events.data.connect(self.points_added)
        if self.objects:
            self.rebuild_shapes()
        self.viewer.layers.selection.active = self.shapes_layer
        self.shapes_layer.mode = "add_rectangle"

    def _remember_work(self) -> None:
        """Keep the current image's labels layer, objects and undo history for when it is chosen again."""
        if self.image_layer is not None and self.labels_layer is not None:
            image = L.raw_layer(self.image_layer)
            self._labels_by_image[id(image)] = _ImageWork(image, self.labels_layer, dict(self.objects),
                                                          list(self.history), self._work_axis)

    def set_labels_layer(self, labels_layer) -> None:
        """Write into ``labels_layer`` from now on. The boxes and points drawn so far belong to the
        old layer's objects: they are cleared (the old layer keeps its masks), so the next box is
        the only thing written into the new layer."""
        L.check_labels_fit(labels_layer, self.image_layer, self.settings.channel_axis)
        check_slide_labels(labels_layer, self.image_layer, self.settings.channel_axis)
        self._raise_above_image(labels_layer)
        self.labels_layer, self.objects, self.history = labels_layer, {}, []
        self._remember_work()
        self.imports.reset()
        with self.quiet():
            for layer in (self.shapes_layer, self.points_layer, kinds()["polygon"].find_layer(self)):
                if layer is not None and len(layer.data):
                    layer.selected_data = set(range(len(layer.data)))
                    layer.remove_selected()  # unlike data = [], this also drops the features rows
        self.on_status(f"MedSAM: labels now go to {labels_layer.name!r}; the old boxes were cleared")

    def _raise_above_image(self, labels_layer) -> None:
        """A labels layer chosen as the target goes just above the image: opened before the image, it
        stayed under it, and nothing drawn into it was seen."""
        layers = self.viewer.layers
        try:
            i, k = layers.index(labels_layer), layers.index(self.image_layer)
        except ValueError:
            return
        if i < k:
            layers.move(i, k + 1)  # inserted before k + 1: just above the image

    def _prompt_layer(self, name, make):
        for layer in list(self.viewer.layers):
            if layer.name == name:
                self.viewer.layers.remove(layer)
        return self.viewer.add_layer(make(self))

    def layer_geometry(self):
        img = self.image_layer
        return {"ndim": img.ndim, "scale": img.scale, "translate": img.translate}

    def _fitting_labels(self, layer):
        """The labels layer image ``layer`` had in this session (the current one when ``layer`` is
        the current image, e.g. chosen again or its channel axis changed), if still open and still
        fitting. A different image never gets another image's labels: its masks would mix with
        theirs in one layer, under the new image where nobody sees them."""
        lab = self.labels_layer if L.raw_layer(layer) is L.raw_layer(self.image_layer) else None
        if lab is None:
            known = self._labels_by_image.get(id(L.raw_layer(layer)))
            lab = known.labels if known is not None and known.image is L.raw_layer(layer) else None
        if lab is not None and lab in self.viewer.layers:
            try:
                L.check_labels_fit(lab, layer, self.settings.channel_axis)
                check_slide_labels(lab, layer, self.settings.channel_axis)
                return lab
            except MedSAMError:
                return None
        return None

    @property
    def slide(self):
        """The image is a whole slide (``_layers.is_slide``): its ``_slide_plane.SlideLabels``, else None."""
        return slide_labels_of(self.labels_layer) if self._is_slide() else None

    def _is_slide(self) -> bool:
        return self.image_layer is not None and L.is_slide(self.image_layer, self.settings.channel_axis)

    def check_boxes_only(self, image2d=None) -> None:
        """Raise PromptError when ``image2d`` (or the image on screen) is a whole-slide plane, where only
        boxes and points (on their box's crop) work: nothing may decode the whole plane there."""
        if isinstance(image2d, SlidePlane) or (image2d is None and self.slide is not None):
            raise PromptError(ONLY_BOXES)

    def _new_labels(self):
        shape, scale, translate = L.labels_geometry(self.image_layer, self.settings.channel_axis)
        if self._is_slide():  # labels on disk, chunk by chunk
            return new_slide_labels(self.viewer, self._labels_name(), shape, scale, translate, self.on_status)
        # the file the image came from (NIfTI affine and header, TIFF unit): saved labels overlay it
        meta = (getattr(self.image_layer, "metadata", None) or {}).get(META_KEY)
        return self.viewer.add_labels(np.zeros(shape, np.int32), name=self._labels_name(), scale=scale,
                                      translate=translate, metadata={META_KEY: meta} if meta else {})

    def _labels_name(self) -> str:
        """"MedSAM labels"; when that name is taken (another image's labels), "MedSAM labels (<image>)"."""
        taken = {ly.name for ly in self.viewer.layers}
        return LABELS if LABELS not in taken else f"{LABELS} ({self.image_layer.name})"

    def _disconnect(self) -> None:
        if self.shapes_layer is not None:
            self.shapes_layer.events.data.disconnect(self._on_shapes_data)
        if self.points_layer is not None:
            self.points_layer.events.data.disconnect(self.points_added)

    def require_layers(self) -> None:
        if self.image_layer is None or self.image_layer not in self.viewer.layers:
            raise MedSAMError("no image layer chosen: pick the image to segment in the MedSAM widget")
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            self.labels_layer = self._new_labels()
        shape = L.labels_geometry(self.image_layer, self.settings.channel_axis)[0]
        if tuple(self.labels_layer.data.shape) != shape:  # the image's data was replaced by another shape
            raise ImageError(
                f"image {self.image_layer.name!r} is now {shape} but its labels {self.labels_layer.name!r} are "
                f"{tuple(self.labels_layer.data.shape)}: its data changed shape. Pick the image again in the "
                "MedSAM widget (the old labels stay as they are; a labels layer of the new shape is made), "
                "or choose a labels layer of the new shape")

    # -- settings -------------------------------------------------------------------------------
    def intensity(self) -> Intensity:
        return intensity_of(self.settings, self.image_layer)

    # -- images and embeddings ----------------------------------------------------------------
    def plane_image(self, plane) -> np.ndarray:
        if self._is_slide():  # lazy levels, never read whole
            return SlidePlane(self.image_layer.data)
        return L.extract_plane(self.image_layer, plane, self.settings.channel_axis)

    def current_plane(self):
        return L.current_plane(self.image_layer, self.viewer.dims, self.settings.channel_axis)

    def plane_at(self, z=None) -> L.Plane:
        """The current plane, or the one at slice ``z`` (an int for 3D, a tuple for 4D), checked."""
        plane = self.current_plane()
        if z is None:
            return plane
        pos = (z,) if np.isscalar(z) else tuple(z)
        if len(pos) != len(plane.index):
            raise PromptError(f"z={z!r} gives {len(pos)} position(s) but the image has {len(plane.index)} slice axes")
        plane = L.Plane(plane.rows, plane.cols, tuple((a, int(p)) for (a, _), p in zip(plane.index, pos, strict=True)))
        shape = L.labels_geometry(self.image_layer, None)[0]
        for a, p in plane.index:
            if not 0 <= p < shape[a]:
                raise PromptError(f"slice {p} on axis {a} is outside the image (0..{shape[a] - 1})")
        return plane

    def model_intensity(self, image2d) -> Intensity:
        """The fixed window the whole plane and its ROI crops are normalised with (roi.global_intensity)."""
        volume = L.window_volume(self.image_layer, self.settings.channel_axis)  # a slice: the volume's window
        return self.windows.window(image2d, self.intensity(), self.settings.channel, volume)

    def roi_mode(self) -> str:
        mode = Z.roi_mode(self.settings.roi_zoom)
        return "roi" if self._is_slide() else mode  # a whole slide: every box on a crop of level 0

    def is_encoded(self, image2d) -> bool:
        if isinstance(image2d, SlidePlane):  # crops are encoded on demand, per box
            return False
        key = self.predictor.key_for(image2d, self.model_intensity(image2d), self.settings.channel)
        return key in self.cache

    def model_ready(self, blocking: bool) -> bool:
        if self.predictor is not None:
            return True
        if blocking:
            from medsam_core import load_model

            # the model the user asked for (still loading in a worker), else the bundled one
            name, checkpoint, device = self._pending_load or ("lite_medsam", None, None)
            self.set_model(load_model(name, checkpoint=checkpoint, device=device))
            return True
        if not self._loading:
            self.load_model_async()
        return False

    def ensure_embedding(self, image2d, blocking: bool, boxes=None) -> bool:
        """True when what decoding needs is cached: the whole-image embedding (``boxes`` None) or
        what (N, 4) XYXY ``boxes`` need under the ROI zoom setting (whole image and/or crops);
        otherwise encode it, inline (``blocking``) or in a worker (then False; the boxes are
        synced again when it is done)."""
        if not self.model_ready(blocking):
            return False
        if boxes is None:
            self.check_boxes_only(image2d)
        window, channel = self.model_intensity(image2d), self.settings.channel
        if boxes is None:
            needs = Z.Needs(whole=self._encoder.key_for(image2d, window, channel) not in self.cache)
        else:
            needs = Z.missing(self._encoder, image2d, np.asarray(boxes, float), self.roi_mode(), window, channel)
        if not needs:
            return True
        if blocking:
            Z.encode(self._encoder, image2d, needs, window, channel)
            return True
        if self._encoding is None:
            self._encoding = needs
            what = "the image embedding" if needs.whole else f"{len(needs.crops)} zoomed-in region(s)"
            self.on_status(f"MedSAM: computing {what}...")
            self.runner.run(Z.encode, self._encoder, image2d, needs, window, channel, on_done=self._on_encode_done,
                            on_error=self._on_task_error, desc="MedSAM: encoding image")
        return self._encoding is None and self.runner.synchronous  # done inline by a synchronous runner

    def _on_encode_done(self, _from_cache) -> None:
        self._encoding = None
        if self.image_layer is None or self.image_layer not in self.viewer.layers:  # closed while encoding
            self.on_status("MedSAM: the image was closed while it was encoded; nothing to segment")
            return
        self.on_status("MedSAM: embedding ready")
        self.safe(self.sync_shapes)
        self.safe(kinds()["polygon"].sync, self)
        self.safe(self.prefetch)

    def prefetch(self) -> None:
        """Start encoding the slice on screen in the background, if it is not cached yet."""
        if not self.settings.prefetch or self.image_layer is None or self._encoding is not None or self.switching:
            return
        if self.image_layer not in self.viewer.layers or self.viewer.dims.ndisplay != 2:
            return
        if self._is_slide():
            return  # a whole slide has no whole-plane embedding: crops are encoded per box
        self.ensure_embedding(self.plane_image(self.current_plane()), blocking=False)

    def predict(self, image2d, boxes, points=None, labels=None, mask_input=None):
        """Decode prompts on the whole-image embedding (cached; never runs the encoder)."""
        self.check_boxes_only(image2d)
        intensity, channel = self.model_intensity(image2d), self.settings.channel
        key = self.predictor.key_for(image2d, intensity, channel)
        if self.predictor.image_key != key:
            if key not in self.cache:
                raise MedSAMError("internal: decoding before the embedding is ready")
            self.predictor.set_image(image2d, intensity, channel)
        return self.predictor.predict(boxes=boxes, points=points, point_labels=labels, mask_input=mask_input)

    def decode_boxes(self, image2d, boxes) -> list[np.ndarray]:
        """(H, W) bool mask per (N, 4) XYXY box, ROI zoom as set (medsam_core.roi.predict_boxes)."""
        return Z.decode(self.predictor, image2d, np.asarray(boxes, float), self.roi_mode(),
                        self.model_intensity(image2d), self.settings.channel)

    # -- boxes ----------------------------------------------------------------------------------
    def _on_shapes_data(self, event) -> None:
        if self.quiet_depth or str(getattr(event, "action", "")) not in ("added", "changed", "removed"):
            return
        if str(event.action) == "added" and L.is_click_box(self.shapes_layer):
            with self.quiet():  # a click is no box: no junk object, nothing pending for 'G'
                L.remove_shapes(self.shapes_layer, [self.shapes_layer.nshapes - 1])
            self.on_status("MedSAM: a click draws no box: press, drag around the object and release")
            return
        if self.settings.auto_segment or str(event.action) == "removed":
            self.safe(self.sync_shapes)

    def sync_shapes(self, blocking: bool = False) -> list[int]:
        """Segment new rectangles, follow moved ones, remove deleted ones. Returns the ids written.

        Invalid rectangles are taken back (new ones removed, moved ones put back) and reported
        in one MedSAMError after the valid ones are committed.
        """
        if self.image_layer is None or self.shapes_layer is None:
            return []
        if self._syncing:  # re-entered from a synchronous worker callback: the outer call loops again
            self._resync = True
            return []
        self.require_layers()
        from ._sync import plan_sync, run_sync

        written, errors = [], []
        self._syncing = True
        try:
            self.imports.adopt_boxes()  # a new box over an imported object redoes that object
            while True:
                self._resync = False
                plan = plan_sync(self)
                written += run_sync(self, plan, blocking)
                errors += plan.errors
                if not self._resync:
                    break
        finally:
            self._syncing = False
        self.imports.report()
        if errors:
            raise errors[0][2]
        return written

    def segment_boxes(self, boxes=None, z=None) -> list[int]:
        """Segment ``boxes`` ((N, 4) XYXY image pixels) on the current slice, or slice ``z``.

        z: position along the one non-displayed axis of a 3D image, or a tuple (one per
        non-displayed spatial axis) for 4D. ``boxes=None`` segments every pending rectangle.
        Blocks until done (encodes inline when needed). Returns the new label ids, in order.
        """
        self.require_layers()
        if boxes is None:
            return self.sync_shapes(blocking=True)
        from ._sync import add_boxes

        return add_boxes(self, boxes, z)
