"""Qt-free image-series state of the MedSAM widget: a folder annotated one image after the other.

Wraps ``medsam_core.series.ImageSeries``: the current image is shown as the image layer
"MedSAM series" with its own Labels layer (the saved labels when it is done already); moving on
saves the labels (atomically, to the output folder, only when they hold any object; with their
provenance sidecar when the widget recorded one, read back when the image is shown again) and shows
the next image, whose embedding was computed in the background meanwhile (``prefetch`` with a
Predictor sharing the session's cache, so the session's ``set_image`` is a cache hit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam_core import MedSAMError, Predictor
from medsam_core.errors import ImageError

from ._layers import raw_layer
from ._reader import layer_data, read_provenance
from ._writer import write_provenance

IMAGE = "MedSAM series"


class SeriesActions:
    """Open a folder, next/previous with autosave, resume, background prefetch of the next image."""

    def __init__(self, session, set_image_layer):
        self.s = session
        self.set_image_layer = set_image_layer  # the widget's, so prompt layers and keys are set up
        self.series = None
        self._prefetcher: Predictor | None = None
        self.image_layer = None
        self._meta = None  # the shown image's ImageMeta (spacing, NIfTI affine, unit)

    def open(self, folder, out_dir, resume: bool = True) -> int:
        """Open ``folder`` with labels going to ``out_dir`` (never ``folder``); show the first
        image without labels (or the first image). Returns the index shown."""
        from medsam_core.series import ImageSeries

        if not str(out_dir).strip():
            raise ImageError("choose an output folder for the labels (not the image folder)")
        if Path(out_dir).expanduser().resolve() == Path(folder).expanduser().resolve():
            raise ImageError("the output folder is the image folder: choose another one so no image is overwritten")
        series = ImageSeries(folder, out_dir)
        if self.series is not None:
            self.series.close()
        self.series = series
        start = series.first_not_done() if resume else 0
        return self.go(0 if start is None else start, save=False)

    def _require(self):
        if self.series is None:
            raise MedSAMError("no image series open: choose an image folder and an output folder first")
        return self.series

    def save(self) -> Path | None:
        """Write the current image's labels (if it has any object) -> the file written, or None."""
        series = self._require()
        lab = self.s.labels_layer
        if lab is None or lab not in self.s.viewer.layers or not np.asarray(lab.data).any():
            return None
        path = series.save(np.asarray(lab.data), self._meta)  # the image's spacing, affine and unit
        write_provenance(path, np.asarray(lab.data), lab.metadata)  # the sidecar beside them, if recorded
        self.s.on_status(f"MedSAM: saved {path.name}")
        return path

    def next(self) -> int | None:
        series = self._require()
        return None if series.index + 1 >= len(series) else self.go(series.index + 1)

    def previous(self) -> int | None:
        series = self._require()
        return None if series.index == 0 else self.go(series.index - 1)

    def go(self, i: int, save: bool = True) -> int:
        """Save the current labels (when ``save``), then show image ``i`` with its labels."""
        from medsam_core.io import read_image

        series = self._require()
        if not 0 <= i < len(series):
            raise MedSAMError(f"image {i} is outside the series (0..{len(series) - 1})")
        image, meta = series.load(i)  # read first: a bad file changes nothing
        labels, prov = None, {}
        if series.is_done(i):
            labels, _ = read_image(series.output_path(i))
            labels = np.asarray(labels).astype(np.int32)
            prov = read_provenance(series.output_path(i), labels)
        if save and self.image_layer is not None:
            self.save()
        series.go(i)
        self._show(image, labels, series.current.name, meta)
        if prov and self.s.labels_layer is not None:
            self.s.labels_layer.metadata.update(prov)
        self.prefetch()
        return i

    def _show(self, image, labels, name: str, meta) -> None:
        """Show ``image`` as the plugin's reader would (its spacing as the scale, colour as RGB, other
        channels on a channel axis in front) with a labels layer of its spatial shape."""
        viewer = self.s.viewer
        from napari.layers import Labels

        # compare the layers themselves: the plugin's viewer wraps each layer in a new proxy per access
        mine = {id(raw_layer(ly)) for ly in (self.image_layer, self.s.labels_layer) if ly is not None}
        old = [ly for ly in viewer.layers if id(raw_layer(ly)) in mine]
        present = {id(raw_layer(ly)) for ly in viewer.layers}
        data, kwargs, _ = layer_data(np.asarray(image), meta, IMAGE)
        scale, rgb, channel_axis = kwargs["scale"], bool(kwargs.get("rgb")), None
        if "channel_axis" in kwargs:  # (Y, X, C) channels, not colour: (C, Y, X) with the C slider
            data, channel_axis, scale = np.moveaxis(data, -1, 0), 0, [1.0, *scale]
        spatial = data.shape[1:] if channel_axis is not None else data.shape[:-1] if rgb else data.shape
        self._meta = meta
        self.s.switching = True  # the new layers move the dims: nothing is encoded for the old image
        try:
            layer = viewer.add_image(data, name=IMAGE, rgb=rgb, scale=scale, metadata=dict(kwargs["metadata"]))
            layer.metadata["medsam_series_file"] = name
            lab = viewer.add_labels(labels if labels is not None and labels.shape == spatial
                                    else np.zeros(spatial, np.int32), name="MedSAM labels",
                                    scale=kwargs["scale"], metadata=dict(kwargs["metadata"]))
        finally:
            self.s.switching = False
        self.s._apply(self.s._candidate(channel_axis=channel_axis))
        self.set_image_layer(layer, lab)
        # the widget may pick the new image up on insertion and give it a fresh labels layer: drop that
        old += [ly for ly in viewer.layers if isinstance(ly, Labels) and id(raw_layer(ly)) not in present
                and raw_layer(ly) is not raw_layer(lab)]
        for ly in old:
            if ly in viewer.layers:
                viewer.layers.remove(ly)
        for ly, wanted in ((layer, IMAGE), (lab, "MedSAM labels")):  # "[1]" was only for the old layers' time
            if ly.name != wanted and wanted not in viewer.layers:
                ly.name = wanted
        self.image_layer = layer

    def prefetch(self) -> None:
        """Compute the next image's embedding in the background (into the session's cache)."""
        series = self._require()
        if self.s.model is None:
            return
        if self._prefetcher is None or self._prefetcher.model is not self.s.model:
            self._prefetcher = Predictor(self.s.model, cache=self.s.cache)
        base, channel = self.s.intensity(), self.s.settings.channel

        def window(image):  # the key the widget decodes under (roi.predict_boxes' whole-image mode)
            from medsam_core.roi import global_intensity

            return global_intensity(image, base, channel)

        series.prefetch(self._prefetcher, intensity=window, channel=channel)

    def wait_prefetch(self) -> None:
        """Block until the background prefetch is done (scripts, tests)."""
        pending = getattr(self.series, "_prefetch", None)
        if pending is not None:
            pending[1].exception()

    def status(self) -> list[tuple[str, bool]]:
        series = self._require()
        return [(p.name, done) for p, done in zip(series.images, series.status(), strict=True)]

    def close(self) -> None:
        if self.series is not None:
            self.series.close()
