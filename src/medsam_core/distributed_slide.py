"""One whole slide on Dask distributed: work units = groups of ROI crops, labels written chunk-wise
into one OME-Zarr label image, and no two units ever write the same chunk.

    from medsam_core.distributed import local_client
    from medsam_core.distributed_slide import segment_slide_distributed

    with local_client(workers=2) as client:
        result = segment_slide_distributed(client, "slide.ome.zarr", boxes, out="labels.zarr")

Planning (``plan_units``, pure NumPy, on the client): the boxes are grouped into ROI crops exactly
as ``roi.plan_rois`` does in process; each crop window covers some level-0 chunks of the label
image; crops that share a chunk are joined (union-find) into one component, and components are
packed into units of about ``boxes_per_unit`` boxes. A unit therefore owns its chunks: every mask
of a crop lies inside that crop's window (``clip_to_box``), so the chunk sets of two units never
meet and concurrent writes never touch one chunk file (each chunk file itself is replaced
atomically by zarr). A unit run twice (its worker died) pastes the same ids again: the same
pixels. The coarser label levels are rebuilt once, on the client, after every unit is done.
Each worker loads the model once (``distributed.ModelPlugin``, weights verified by sha256).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import roi
from .errors import PromptError
from .preprocess import check_boxes

#: A unit holds about this many boxes (whole components only: a component is never split).
BOXES_PER_UNIT = 32


def _chunks_of(window: tuple[int, int, int, int], chunk: int) -> list[tuple[int, int]]:
    y0, y1, x0, x1 = window
    return [(i, j) for i in range(y0 // chunk, (y1 - 1) // chunk + 1) for j in range(x0 // chunk, (x1 - 1) // chunk + 1)]


def plan_units(boxes: np.ndarray, shape: tuple[int, int], chunk: int,
               boxes_per_unit: int = BOXES_PER_UNIT) -> list[list[roi.RoiGroup]]:
    """(N, 4) XYXY boxes -> units, each a list of ROI groups; the level-0 chunk sets of two units
    are disjoint. Every box is in exactly one group of one unit."""
    groups = roi.plan_rois(np.asarray(boxes, np.float64).reshape(-1, 4), shape)
    parent = list(range(len(groups)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[tuple[int, int], int] = {}
    for g, group in enumerate(groups):
        for c in _chunks_of(group.window, chunk):
            if c in owner:
                parent[find(g)] = find(owner[c])
            else:
                owner[c] = g
    components: dict[int, list[int]] = {}
    for g in range(len(groups)):
        components.setdefault(find(g), []).append(g)
    units, current, count = [], [], 0
    for members in components.values():  # pack whole components, in reading order
        current += [groups[g] for g in members]
        count += sum(len(groups[g].indices) for g in members)
        if count >= boxes_per_unit:
            units.append(current)
            current, count = [], 0
    if current:
        units.append(current)
    return units


def _slide_unit(plugin_name: str, image: str, store_path: str, boxes: np.ndarray, groups, window, channel):
    """On a worker: decode this unit's crops and paste them -> the windows written."""
    from dask.distributed import get_worker

    from .labelstore import LabelStore
    from .wsi import open_pyramid

    predictor = get_worker().plugins[plugin_name].predictor()
    store, written = LabelStore(store_path), []
    with open_pyramid(image) as pyr:
        for group in groups:
            for i, r in zip(group.indices, roi.decode_crop(predictor, pyr, group.window, boxes[group.indices],
                                                            window, channel), strict=True):
                store.paste(r.window, r.mask[None], np.array([int(i) + 1], np.uint32))
                written.append(r.window)
    return written


def segment_slide_distributed(client, image: str | os.PathLike, boxes, out: str | os.PathLike, name: str = "medsam",
                              intensity=None, channel=None, chunk: int = 1024, boxes_per_unit: int = BOXES_PER_UNIT,
                              model: str = "lite_medsam", checkpoint=None, device=None, encoder_backend=None,
                              overwrite: bool = False, retries: int = 1, on_progress=None) -> dict:
    """Segment (N, 4) XYXY level-0 ``boxes`` (ROI mode) on a slide on the client's workers; labels
    (box i -> id i+1) go into a new NGFF label image ``out`` (or the OME-Zarr slide's labels/ when
    ``out`` is the slide). Returns {"labels", "units", "boxes", "seconds"}. Blocks until done.
    retries: Dask reruns of a unit that raised (a unit run twice writes the same pixels; a worker
    that died is handled by Dask's own rescheduling). on_progress(done units, total units) as units finish."""
    from .distributed import model_plugin
    from .labelstore import LabelStore
    from .wsi import intensity_window, open_pyramid

    t0 = time.perf_counter()
    image = str(Path(image).expanduser().absolute())
    with open_pyramid(image) as pyr:
        shape, spacing, unit = pyr.shape[:2], pyr.spacing, {"um": "micrometer"}.get(pyr.unit, pyr.unit)
        from .slide import labels_destination

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            raise PromptError("no boxes given: nothing to segment")

        out = labels_destination(image, None if Path(out).expanduser().absolute() == Path(image) else out, pyr.kind)
        boxes = check_boxes(boxes, shape)
        window = intensity_window(pyr, intensity, channel)
    units = plan_units(boxes, shape, chunk, boxes_per_unit)
    store = LabelStore.create(out, shape, name=name, spacing=spacing, unit=unit, chunk=chunk, overwrite=overwrite)
    plugin = model_plugin(model, checkpoint, device, encoder_backend)
    if not all(client.run(lambda dask_worker, n=plugin.name: n in dask_worker.plugins).values()):
        client.register_plugin(plugin)
    futures = [client.submit(_slide_unit, plugin.name, image, str(store.path), boxes, unit, window, channel,
                             pure=False, retries=retries) for unit in units]
    try:
        from dask.distributed import as_completed

        written = []
        for done, fut in enumerate(as_completed(futures), start=1):
            written += fut.result()
            if on_progress is not None:
                on_progress(done, len(futures))
    except BaseException:
        client.cancel(futures)
        raise
    store.dirty = written
    store.update_levels()
    return {"labels": store.path, "units": len(units), "boxes": len(boxes), "seconds": time.perf_counter() - t0}
