"""Qt-free state of the "Active learning" panel: suggestions and automatic proposals.

``ActiveActions`` (over ``_provenance_hook.ProvenanceActions``: provenance, classes, effort) works
for one widget ``Session``:

- ``rank`` scores candidate boxes (the Labels layer's objects, the prompt rectangles, or boxes of
  ``auto.detect_boxes``) with ``fitted_ranking.ranking_steps`` in a worker (``Runner.run_steps``: one
  step per image slice): the signals flip and contrast (and the automatic head's agreement when a
  head is trained), the previous model's agreement when the fine-tune guard has one, weighted by
  the weights fitted on the user's own corrections (the provenance's model masks vs the labels
  kept) once there are ``signals.MIN_CORRECTIONS`` of them, the defaults before (``weights_status``);
  ``jump(i)`` shows suggestion ``i`` (image layer, slice, camera, and the "MedSAM suggestions"
  Shapes layer with the clicked box highlighted).
- ``propose`` fits ``auto.fit_auto`` on the labelled layers in a worker and writes the proposals
  for the current image into the Labels layer "MedSAM proposals" (never the user's labels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medsam_core import MedSAMError, Predictor
from medsam_core.active import candidates_from_boxes, candidates_from_labels, previous_predictor
from medsam_core.fitted_ranking import DEFAULT_SIGNALS, corrections_from_provenance, ranking_steps
from medsam_core.signals import MIN_CORRECTIONS

from . import _layers as L
from ._active_views import View, camera_of, canvas_size
from ._auto_session import AutoActions
from ._provenance_hook import ProvenanceActions, plane_z, provenance_of
from ._reader import PROV_KEY

SUGGESTIONS, PROPOSALS = "MedSAM suggestions", "MedSAM proposals"
SOURCES = {"labels": "objects of the Labels layer", "boxes": "rectangles of MedSAM boxes",
           "auto": "boxes detected on the image"}
MAX_FIT_SLICES = 8  # labelled slices of a 3D stack that fit_auto learns from (each costs an encode)


def _rank_steps(predictor, previous, images, candidates, auto_planes, top_k: int, n_jitter: int,
                corrections=(), measured=None, signals=DEFAULT_SIGNALS, head=None):
    """Generator for ``Runner.run_steps``: yields (done, total) per image slice, returns a
    ``fitted_ranking.Ranking`` (top_k suggestions and the weights used)."""
    from medsam_core.auto import detect_boxes

    for name, z in auto_planes:  # detection is cheap next to decoding: no step of its own
        plane = images[name] if z is None else images[name][z]
        candidates = candidates + candidates_from_boxes(name, detect_boxes(plane), z)
    return (yield from ranking_steps(predictor, images, candidates, corrections, measured, previous=previous,
                                     signals=signals, head=head, n_jitter=n_jitter, top_k=top_k))


def _fit_and_propose(predictor, images, labels, target):
    from medsam_core.auto import fit_auto

    auto = fit_auto(predictor, images, labels)
    return auto, auto.propose(predictor, target)


class ActiveActions(ProvenanceActions):
    """Suggestions and automatic proposals (plus the provenance, classes and effort it inherits).

    Callbacks (GUI thread; the panel sets them): ``on_progress(done, total)``, ``on_finished(what)``
    with what in {"ranked", "proposed", "error"}.
    """

    def __init__(self, session, train=None, set_image_layer: Callable | None = None):
        super().__init__(session)
        self.train = train  # _train_session.TrainActions: where the previous model lives
        self.set_image_layer = set_image_layer or session.set_image_layer
        self.suggestions: list = []
        self.ranking = None  # the last fitted_ranking.Ranking (its weights say what was used)
        self.measured: dict = {}  # correction key -> components measured by the model that made it
        self.views: dict[str, View] = {}
        self.running: str | None = None
        self.task = None  # the runner's Task of the running ranking / proposal (cancel)
        self.proposal_status = "no proposals yet"
        self.on_progress: Callable = lambda done, total: None
        self.on_finished: Callable = lambda what: None
        self.auto = AutoActions(session, self)  # "Segment everything": the learned automatic head

    def _check_idle(self) -> None:
        busy = self.running or self.auto.running
        if busy:
            raise MedSAMError(f"{busy} is running: wait for it to finish")

    # -- suggestions -----------------------------------------------------------------------------
    def _view(self, layer, labels, channel_axis) -> View:
        rows, cols = L.displayed_axes(layer, self.s.viewer.dims, channel_axis)
        others = [a for a in L.spatial_axes(layer, channel_axis) if a not in (rows, cols)]
        if len(others) > 1:
            raise MedSAMError(f"{layer.name!r} has {len(others)} slice axes: suggestions cover 2D images and 3D stacks")
        return View(layer, labels, rows, cols, others[0] if others else None, channel_axis)

    def _views(self, all_images: bool) -> list[View]:
        from napari.layers import Image, Labels

        s = self.s
        s.require_layers()
        views = [self._view(s.image_layer, s.labels_layer, s.settings.channel_axis)]
        if all_images:
            used = {s.labels_layer}
            for img in s.viewer.layers:
                if not isinstance(img, Image) or img is s.image_layer or img.name.startswith("MedSAM"):
                    continue
                shape = L.labels_geometry(img, None)[0]
                fits = [ly for ly in s.viewer.layers if isinstance(ly, Labels) and ly not in used
                        and ly.name != PROPOSALS and tuple(ly.data.shape) == shape]
                fits.sort(key=lambda ly: img.name not in ly.name)  # "<image> labels" first
                used.add(fits[0] if fits else None)
                views.append(self._view(img, fits[0] if fits else None, None))
        return views

    def _candidates(self, source: str, views: list[View]) -> tuple[list, list]:
        from medsam_core.preprocess import check_boxes

        cands, auto = [], []
        if source == "labels":
            for v in views:
                if v.labels is not None:
                    cands += candidates_from_labels(v.name, v.labels_stack())
        elif source == "boxes":
            s, shapes = self.s, self.s.shapes_layer
            ids = shapes.features["label_id"].to_numpy() if "label_id" in shapes.features else np.zeros(shapes.nshapes)
            for i in range(shapes.nshapes):
                if shapes.shape_type[i] != "rectangle" or (i < len(ids) and ids[i] < 0):
                    continue  # key boxes of 3D objects (negative ids) are not objects of their own
                try:
                    plane, box = L.shape_to_box(shapes, i, s.image_layer, s.viewer.dims, s.settings.channel_axis)
                    box = check_boxes(box, L.plane_size(s.image_layer, plane))[0]
                except MedSAMError:
                    continue
                cands += candidates_from_boxes(views[0].name, box[None], plane_z(plane))
        else:
            auto = [(v.name, plane_z(L.current_plane(v.layer, self.s.viewer.dims, v.channel_axis))) for v in views]
        return cands, auto

    def previous_model(self):
        """The model that was active before the served one (the fine-tune guard's rollback target), or None."""
        guard = getattr(self.train, "guard", None)
        if guard is None or guard.active_model is not self.s.model:
            return None
        return guard.previous_model

    def predictor(self) -> Predictor:
        s = self.s
        s.model_ready(blocking=True)
        return Predictor(s.model, cache=s.cache, intensity=s.intensity(), channel=s.settings.channel)

    def rank(self, source: str = "labels", top_k: int = 10, all_images: bool = False, n_jitter: int = 8) -> None:
        """Score the candidates of ``source`` (see SOURCES) in the background; the ``top_k`` most
        uncertain go to ``suggestions`` and the "MedSAM suggestions" layer. ``all_images``: every
        open image layer (with a Labels layer of its shape for "labels"), else the widget's image."""
        self._check_idle()
        if source not in SOURCES:
            raise MedSAMError(f"unknown candidate source {source!r}: use one of {', '.join(SOURCES)}")
        views = self._views(all_images)
        cands, auto = self._candidates(source, views)
        if not cands and not auto:
            raise MedSAMError(f"no candidates: there are no {SOURCES[source]} to rank")
        predictor = self.predictor()
        prev = self.previous_model()
        prev = previous_predictor(predictor, prev) if prev is not None else None
        images = {v.name: v.image() for v in views}
        corrections = self.corrections(views)
        head = self.ranking_head()
        signals = DEFAULT_SIGNALS + (("head",) if head is not None else ())
        self.views = {v.name: v for v in views}
        self.running = "ranking"
        self.s.on_status(f"MedSAM: ranking {len(cands) or 'detected'} candidates...")
        total = len({(c.image_id, c.z) for c in cands}) or len(auto)
        self.task = self.s.runner.run_steps(_rank_steps, predictor, prev, images, cands, auto, int(top_k), int(n_jitter),
                                            corrections, dict(self.measured), signals, head,
                                            on_step=lambda v: self.on_progress(*v), on_done=self._on_ranked,
                                            on_error=self._on_error, on_cancel=self._on_cancel,
                                            desc="MedSAM: ranking suggestions", total=total)

    def corrections(self, views: list[View] | None = None) -> list:
        """The corrections the provenance of the open labels knows (``fitted_ranking.Correction``:
        model mask at prompting vs the mask kept now), for the images ranked (default: the widget's)."""
        out = []
        for v in views if views is not None else self._views(False):
            lab = v.labels
            if lab is None or PROV_KEY not in lab.metadata or lab.ndim not in (2, 3):
                continue
            ax = [L.labels_axis(a, v.channel_axis) for a in (v.zaxis, v.rows, v.cols) if a is not None]
            if ax != sorted(ax):
                continue  # a rolled 3D view: the provenance's slice numbers are along the data's first axis
            out += corrections_from_provenance(v.name, provenance_of(lab), np.asarray(lab.data))
        return out

    def ranking_head(self):
        """The trained automatic head when it fits the served model's encoder (its agreement is a signal), else None."""
        head = self.auto.head
        enc = getattr(self.s.model, "encoder_id", None)
        return head if head is not None and (enc is None or head.encoder_id == enc) else None

    @property
    def weights_status(self) -> str:
        """Which weights the last ranking used (fitted on N corrections / default), for the panel."""
        if self.ranking is None:
            return (f"ranking weights: fitted on your corrections once {MIN_CORRECTIONS} objects made by "
                    "the model are kept (edited or not); default before")
        r = self.ranking
        extra = f"; {r.unused} corrections by a model no longer loaded not used" if r.unused else ""
        return f"ranking weights {r.weights.describe()} (signals: {', '.join(r.signals) or 'none'}){extra}"

    def _on_ranked(self, ranking) -> None:
        self.running, self.task = None, None
        self.ranking, self.suggestions = ranking, list(ranking.suggestions)
        self.measured.update(ranking.measured)
        self.show_suggestions()
        self.s.on_status(f"MedSAM: {len(self.suggestions)} suggestions, most uncertain first; {self.weights_status}")
        self.on_finished("ranked")

    def cancel(self) -> None:
        """Stop the running ranking or proposal: no suggestions or proposals change."""
        if self.running and self.task is not None:
            self.task.cancel()

    def _on_cancel(self, _exc=None) -> None:
        what, self.running, self.task = self.running, None, None
        self.s.on_status(f"MedSAM: {what or 'active learning'} cancelled; nothing was changed")
        self.on_finished("cancelled")

    def _on_error(self, exc: Exception) -> None:
        self.running, self.task = None, None
        self.on_finished("error")
        self.s.on_error(exc if isinstance(exc, MedSAMError) else MedSAMError(f"active learning failed: {exc}"))

    def jump(self, i: int):
        """Show suggestion ``i``: its image becomes the widget's, the viewer goes to its slice and
        centres and zooms on its box, highlighted in "MedSAM suggestions". Returns the suggestion."""
        if not 0 <= i < len(self.suggestions):
            raise MedSAMError(f"no suggestion {i}: there are {len(self.suggestions)}; rank first")
        sug, s = self.suggestions[i], self.s
        view = self.views.get(sug.image_id)
        if view is None or view.layer not in s.viewer.layers:
            raise MedSAMError(f"image layer {sug.image_id!r} is no longer open: rank again")
        if L.raw_layer(s.image_layer) is not L.raw_layer(view.layer):
            keep = view.labels if view.labels is not None and view.labels in s.viewer.layers else None
            self.set_image_layer(view.layer, keep)
        dims = s.viewer.dims
        centre, corners = L.box_to_world(sug.box, view.plane(sug.z), view.layer, dims.point)
        if sug.z is not None:
            axis = dims.ndim - view.layer.ndim + view.zaxis
            dims.set_point(axis, centre[axis])
        shown = list(dims.displayed)[-2:]
        camera = camera_of(s.viewer)
        camera.center = tuple(float(centre[d]) for d in shown)
        extent = np.maximum(np.ptp(corners[:, shown], axis=0), 1e-6)
        camera.zoom = float(min(np.array(canvas_size(s.viewer)) / extent) / 3)  # the box fills a third
        self.show_suggestions(highlight=i)
        return sug

    def show_suggestions(self, highlight: int | None = None):
        """(Re)build "MedSAM suggestions": the current image's suggestions, ``highlight`` in cyan."""
        from napari.layers import Shapes

        s = self.s
        for layer in [ly for ly in s.viewer.layers if ly.name == SUGGESTIONS]:
            s.viewer.layers.remove(layer)
        name = s.image_layer.name if s.image_layer is not None else None
        mine = [k for k, sug in enumerate(self.suggestions) if sug.image_id == name and name in self.views]
        if not mine:
            return None
        view, img = self.views[name], s.image_layer
        verts = [L.box_to_vertices(self.suggestions[k].box, view.plane(self.suggestions[k].z), img, img,
                                   s.viewer.dims.point) for k in mine]
        colors = ["cyan" if k == highlight else "magenta" for k in mine]
        layer = Shapes(verts, shape_type="rectangle", name=SUGGESTIONS, ndim=img.ndim, scale=img.scale,
                       translate=img.translate, edge_color=colors, face_color="transparent",
                       edge_width=[_edge_width(self.suggestions[k].box, k == highlight) for k in mine], features={"rank": [k + 1 for k in mine]},
                       text={"string": "{rank}", "color": "magenta", "anchor": "upper_left", "size": 9})
        s.viewer.add_layer(layer)
        if highlight in mine:
            layer.selected_data = {mine.index(highlight)}
        if s.shapes_layer is not None and s.shapes_layer in s.viewer.layers:
            s.viewer.layers.selection.active = s.shapes_layer  # keep drawing boxes where they belong
        return layer

    # -- automatic proposals ---------------------------------------------------------------------
    def fit_pairs(self) -> tuple[list, list]:
        images, labels = [], []
        for v in self._views(all_images=True):
            if v.labels is None:
                continue
            stack = v.labels_stack()
            if v.zaxis is None:
                if stack.any():
                    images.append(v.image())
                    labels.append(stack)
                continue
            zs = np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))
            for z in zs[np.linspace(0, len(zs) - 1, min(len(zs), MAX_FIT_SLICES)).astype(int)] if len(zs) else []:
                images.append(v.image()[int(z)])
                labels.append(stack[z])
        if not images:
            raise MedSAMError("no labelled objects to learn from: label some objects (or open labels) first")
        return images, labels

    def propose(self) -> None:
        """Fit the automatic model on every open image with labelled objects (in the background) and
        write its proposals for the current image (slice) into the Labels layer "MedSAM proposals"."""
        self._check_idle()
        images, labels = self.fit_pairs()
        s = self.s
        plane = s.current_plane()
        target = s.plane_image(plane)
        predictor = self.predictor()
        self.running = "proposing"
        s.on_status(f"MedSAM: fitting the automatic model on {len(images)} labelled image(s)...")
        image = s.image_layer  # the proposals belong to this image, whatever is chosen when they are ready
        self.task = s.runner.run(_fit_and_propose, predictor, images, labels, target,
                                 on_done=lambda out: self._on_proposed(out, image, plane),
                                 on_error=self._on_error, on_cancel=self._on_cancel, desc="MedSAM: proposing objects")

    def _on_proposed(self, out, image_layer, plane) -> None:
        from napari.layers import Labels

        from ._objects import PlaneEditor

        self.running = None
        auto, props = out
        s = self.s
        if L.raw_layer(s.image_layer) is not L.raw_layer(image_layer):
            self.on_finished("error")
            s.on_error(MedSAMError(f"the proposals for {image_layer.name!r} were not shown: another image was "
                                   f"picked while they were computed; pick {image_layer.name!r} and Propose again"))
            return
        shape, scale, translate = L.labels_geometry(image_layer, s.settings.channel_axis)
        old = [ly for ly in s.viewer.layers if ly.name == PROPOSALS]
        layer = old[0] if old and isinstance(old[0], Labels) and old[0].data.shape == shape else None
        if layer is None:
            for ly in old:
                s.viewer.layers.remove(ly)
            layer = s.viewer.add_labels(np.zeros(shape, np.int32), name=PROPOSALS, scale=scale, translate=translate)
        else:
            layer.data = np.zeros(shape, np.int32)
        editor = PlaneEditor(layer, s.settings.channel_axis, overwrite=True)
        editor.plane(plane)[...] = props.to_labels()
        for edit in editor.edits():
            L.apply_edit(layer, edit)
        n = len(props.scores)
        mean = f"{float(np.mean(props.scores)):.2f}" if n else "-"
        self.proposal_status = (f"{n} proposals on {plane.describe()}, mean predicted IoU {mean} "
                                f"(min score {auto.min_score:.2f}); review them in {PROPOSALS!r}")
        if s.shapes_layer is not None and s.shapes_layer in s.viewer.layers:
            s.viewer.layers.selection.active = s.shapes_layer
        s.on_status(f"MedSAM: {self.proposal_status}")
        self.on_finished("proposed")


def _edge_width(box, highlight: bool) -> float:
    """Edge width in pixels, relative to the box so a zoomed-in box is not hidden by its own outline."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width = max(0.5, min(x1 - x0, y1 - y0) / 30)
    return 2 * width if highlight else width
