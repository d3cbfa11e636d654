"""A 100,000 x 100,000 RGB slide: open it lazily, segment 100 boxes at full resolution, keep labels on disk.

The slide is built here, in a temporary folder, never committed: an OME-Zarr (NGFF 0.4, axes
c, y, x, 1024 px chunks, zstd) made of real tissue -- scikit-image's immunohistochemistry
sample (512 x 512 IHC) -- as 1024 px tiles varied by flips, rotations and stain/brightness
jitter, placed in a few elliptical tissue regions on white background. Level 0 has 98 x 98
chunks: each is a hard link to one of the encoded variant tiles (so 30 GB of pixels take a few
MB of disk and seconds to lay out); levels 1-7 are computed (area mean of the tiles) and
encoded for real.

Measured in a fresh process (``--measure``, so the build does not count), optionally inside a
real napari viewer (``--viewer``, under Xvfb): open the slide with the plugin's reader
(multiscale layers), the intensity window from the coarsest level, then 100 boxes (24-64 px,
on tissue) one at a time as a person draws them: ROI crop read, crop encoded (LiteMedSAM,
bundled weights), decode + paste into an on-disk NGFF label image (``labelstore.LabelStore``).
Reported: open time, per-box read / encode / "after encode" (decode + paste) times (median,
max), peak RSS (ru_maxrss), the label pyramid update and a GeoJSON export.

Run: .venv/bin/python benchmarks/bench_wsi.py [--side 100000] [--boxes 100] [--viewer --screenshot PNG]
     xvfb-run -a .venv/bin/python benchmarks/bench_wsi.py --shot docs/images/pathology_slide.png   (the docs picture)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
CHUNK = 1024


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- building the slide --------------------------------------------------------------------------
def variants(n: int, seed: int = 0) -> list[np.ndarray]:
    """n tissue tiles (3, 1024, 1024) uint8 from the IHC sample: 2 x 2 mosaics of flipped/rotated
    copies with stain and brightness jitter; the last one is white background."""
    from skimage.data import immunohistochemistry

    base = immunohistochemistry().astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n - 1):
        quads = []
        for _ in range(4):
            t = np.rot90(base, int(rng.integers(4)))
            t = t[:, ::-1] if rng.random() < 0.5 else t
            quads.append(t)
        tile = np.concatenate([np.concatenate(quads[:2], axis=1), np.concatenate(quads[2:], axis=1)], axis=0)
        gain = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.9, 1.1)
        tile = np.clip((tile - 255) * gain + 255, 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(tile.transpose(2, 0, 1)))
    white = (242 + rng.normal(0, 2, (3, CHUNK, CHUNK))).clip(0, 255).astype(np.uint8)
    out.append(white)
    return out


def layout(nchunks: int, n_tissue: int, seed: int = 1) -> np.ndarray:
    """(nchunks, nchunks) variant index per level-0 chunk: tissue inside a few ellipses, else white."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:nchunks, 0:nchunks] / nchunks
    tissue = np.zeros((nchunks, nchunks), bool)
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.25)
        tissue |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    grid = np.full((nchunks, nchunks), n_tissue, np.int64)  # white
    grid[tissue] = rng.integers(0, n_tissue, int(tissue.sum()))
    return grid


def build_slide(path: Path, side: int, n_variants: int = 24) -> dict:
    import zarr
    from numcodecs import Zstd

    codec = Zstd(level=1)  # the same codec for the variant tiles and the slide: level-0 chunks are links
    t0 = time.perf_counter()
    tiles = variants(n_variants)
    nch = -(-side // CHUNK)
    grid = layout(nch, n_variants - 1)
    # encode each variant once: the chunk files of a small array with the slide's codec
    enc_path = path.parent / "variants.zarr"
    enc = zarr.create_array(str(enc_path), shape=(3, CHUNK, CHUNK * n_variants), chunks=(3, CHUNK, CHUNK),
                            dtype="u1", zarr_format=2, overwrite=True, compressors=codec)
    for k, t in enumerate(tiles):
        enc[:, :, k * CHUNK : (k + 1) * CHUNK] = t
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    shapes = [side]
    while shapes[-1] > CHUNK:
        shapes.append(-(-shapes[-1] // 2))
    arrays = [root.create_array(str(k), shape=(3, s, s), chunks=(3, CHUNK, CHUNK), dtype="u1", fill_value=255,
                                compressors=codec)
              for k, s in enumerate(shapes)]
    for i in range(nch):  # level 0: hard links to the encoded variants
        for j in range(nch):
            os.link(enc_path / f"0.0.{grid[i, j]}", path / "0" / f"0.{i}.{j}")
    t_l0 = time.perf_counter() - t0
    for k in range(1, len(shapes)):  # coarser levels: mosaics of the variants shrunk 2^k (area mean)
        f = 2**k
        small = [t.reshape(3, CHUNK // f, f, CHUNK // f, f).mean(axis=(2, 4)).astype(np.uint8) if f <= CHUNK
                 else t.mean(axis=(1, 2), keepdims=True).astype(np.uint8) for t in tiles]
        s, arr = shapes[k], arrays[k]
        for ci in range(-(-s // CHUNK)):
            for cj in range(-(-s // CHUNK)):
                block = np.full((3, CHUNK, CHUNK), 255, np.uint8)
                ts = CHUNK // f
                for a in range(f):
                    for b in range(f):
                        gi, gj = ci * f + a, cj * f + b
                        if gi < nch and gj < nch:
                            block[:, a * ts : (a + 1) * ts, b * ts : (b + 1) * ts] = small[grid[gi, gj]]
                y0, x0 = ci * CHUNK, cj * CHUNK
                h, w = min(CHUNK, s - y0), min(CHUNK, s - x0)
                arr[:, y0 : y0 + h, x0 : x0 + w] = block[:, :h, :w]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.25 * 2**k,
                                                                                          0.25 * 2**k]}]}
                for k in range(len(shapes))]
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs.update({"multiscales": [{"version": "0.4", "name": "synthetic IHC slide", "axes": axes,
                                        "datasets": datasets}],
                       "omero": {"channels": [{"label": c, "color": col} for c, col in
                                              (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))]}})
    np.save(path.parent / "grid.npy", grid)
    return {"side": side, "levels": len(shapes), "build_s": round(time.perf_counter() - t0, 1),
            "level0_layout_s": round(t_l0, 1), "tissue_chunks": int((grid < n_variants - 1).sum())}


# -- measuring -----------------------------------------------------------------------------------
def pick_boxes(grid: np.ndarray, n: int, side: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tissue = np.argwhere(grid < grid.max())
    out = []
    for ci, cj in tissue[rng.choice(len(tissue), n, replace=len(tissue) < n)]:
        s = rng.integers(24, 65)
        y = ci * CHUNK + rng.integers(64, CHUNK - 128)
        x = cj * CHUNK + rng.integers(64, CHUNK - 128)
        if y + s < side and x + s < side:
            out.append([x, y, x + s, y + s])
    return np.array(out[:n], float)


def measure(slide: Path, n_boxes: int, viewer: bool, screenshot: str | None) -> dict:
    from medsam_core import Predictor, load_model, roi, wsi
    from medsam_core.geojson import write_geojson
    from medsam_core.labelstore import LabelStore

    res: dict = {"rss_start_mb": round(rss_mb())}
    t0 = time.perf_counter()
    v = None
    if viewer:
        import napari

        from napari_medsam._reader import napari_get_reader

        v = napari.Viewer(show=True)
        v.window._qt_window.resize(1280, 800)
        for data, kw, kind in napari_get_reader(str(slide))(str(slide)):
            getattr(v, f"add_{kind}")(data, **kw)
        _process(v)
        pyr = v.layers[0].metadata["medsam_pyramid"]
    else:
        pyr = wsi.open_pyramid(slide)
    res["open_s"] = round(time.perf_counter() - t0, 2)
    res["rss_after_open_mb"] = round(current_rss_mb())
    t = time.perf_counter()
    window = wsi.intensity_window(pyr)
    res["intensity_window_s"] = round(time.perf_counter() - t, 2)
    model = load_model("lite_medsam", device="cpu")
    pred = Predictor(model)
    res["encoder_backend"] = str(getattr(pred, "encoder_backend", ""))
    res["rss_after_model_mb"] = round(current_rss_mb())
    boxes = pick_boxes(np.load(slide.parent / "grid.npy"), n_boxes, pyr.shape[0])
    store = LabelStore.create(slide.parent / "labels.ome.zarr", pyr.shape[:2], spacing=pyr.spacing)
    if v is not None:
        lab = v.add_labels(store.levels, multiscale=True, name="MedSAM labels", scale=pyr.spacing)
    reads, encodes, after, rois = [], [], [], []
    for i, box in enumerate(boxes):
        group = roi.plan_rois(box[None], pyr.shape[:2])[0]
        t = time.perf_counter()
        crop = roi.read_crop(pyr, group.window)
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        pred.set_image(crop, intensity=window)
        encodes.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = roi.predict_boxes(pred, pyr, box[None], intensity=window)[0]
        store.paste(r.window, r.mask[None], np.array([i + 1]))
        after.append(time.perf_counter() - t)
        rois.append(r.roi)
    res["rss_after_boxes_mb"] = round(current_rss_mb())
    t = time.perf_counter()
    store.update_levels()
    res["label_levels_update_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    labels_full = store.level0
    ids = np.unique(np.concatenate([np.unique(store.read_region(roi.plan_rois(b[None], pyr.shape[:2])[0].window))
                                    for b in boxes]))
    res["objects_in_store"] = int((ids > 0).sum())
    if v is not None:
        lab.refresh()
        cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
        v.camera.center = (cy * pyr.spacing[0], cx * pyr.spacing[1])
        v.camera.zoom = 2.0 / pyr.spacing[0] / 3
        _process(v, 3.0)
        if screenshot:
            v.window._qt_window.grab().save(screenshot)
            res["screenshot"] = screenshot
        res["rss_after_view_mb"] = round(current_rss_mb())
    gj = write_geojson(slide.parent / "labels.geojson", labels_full)
    res["geojson_export_s"] = round(time.perf_counter() - t, 1)
    res["geojson_features"] = len(json.loads(gj.read_text())["features"])
    q = lambda a: {"median_s": round(float(np.median(a)), 3), "max_s": round(float(np.max(a)), 3)}  # noqa: E731
    res.update(boxes=len(boxes), all_roi=bool(all(rois)), crop_read=q(reads), crop_encode=q(encodes),
               after_encode=q(after), peak_rss_mb=round(rss_mb()))
    if v is not None:
        v.close()
    return res


def screenshot(png: str, side: int) -> None:
    """The docs picture: the slide in napari (1280 x 800 window) zoomed in on one tissue tile, with 12
    boxes around the largest haematoxylin blobs, their MedSAM labels (contours) and the boxes."""
    import napari
    from skimage import color, measure

    from medsam_core import Predictor, load_model, roi, wsi
    from medsam_core.labelstore import LabelStore
    from napari_medsam._reader import napari_get_reader

    with tempfile.TemporaryDirectory(prefix="bench_wsi_shot_") as tmp:
        slide = Path(tmp) / "slide.ome.zarr"
        build_slide(slide, side)
        v = napari.Viewer(show=True)
        v.window._qt_window.resize(1280, 800)
        for data, kw, kind in napari_get_reader(str(slide))(str(slide)):
            getattr(v, f"add_{kind}")(data, **kw)
        pyr = v.layers[0].metadata["medsam_pyramid"]
        tissue = np.argwhere(np.load(Path(tmp) / "grid.npy") < 23)
        ci, cj = tissue[len(tissue) // 2]
        y0, x0 = ci * CHUNK + 256, cj * CHUNK + 256
        hema = color.rgb2hed(pyr.read_region((y0, y0 + 512, x0, x0 + 512)))[..., 0]
        blobs = [p for p in measure.regionprops(measure.label(hema > np.percentile(hema, 90))) if p.area > 60]
        blobs = sorted(blobs, key=lambda p: -p.area)[:12]
        boxes = np.array([[x0 + p.bbox[1] - 3, y0 + p.bbox[0] - 3, x0 + p.bbox[3] + 2, y0 + p.bbox[2] + 2]
                          for p in blobs], float)
        pred = Predictor(load_model("lite_medsam", device="cpu"))
        store = LabelStore.create(Path(tmp) / "labels.ome.zarr", pyr.shape[:2], spacing=pyr.spacing)
        for i, r in enumerate(roi.predict_boxes(pred, pyr, boxes, intensity=wsi.intensity_window(pyr))):
            store.paste(r.window, r.mask[None], np.array([i + 1]))
        store.update_levels()
        lab = v.add_labels(store.levels, multiscale=True, name="MedSAM labels", scale=pyr.spacing, opacity=0.9)
        lab.contour = 2
        v.add_shapes([[[b[1], b[0]], [b[1], b[2]], [b[3], b[2]], [b[3], b[0]]] for b in boxes],
                     shape_type="rectangle", edge_color="yellow", face_color="transparent", edge_width=1.5,
                     name="MedSAM boxes", scale=pyr.spacing)
        v.camera.center = ((y0 + 256) * pyr.spacing[0], (x0 + 256) * pyr.spacing[1])
        v.camera.zoom = 1.6 / pyr.spacing[0]
        _process(v, 4.0)
        v.window._qt_window.grab().save(png)
        v.close()


def _process(viewer, seconds: float = 1.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=100_000)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--viewer", action="store_true", help="open and segment inside a napari viewer (needs a display)")
    ap.add_argument("--screenshot", default=None, help="with --viewer: save the 1280x800 window here")
    ap.add_argument("--shot", default=None, help="only make the docs screenshot (needs a display) into this PNG")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: the measuring subprocess
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_wsi.json"))
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.boxes, args.viewer, args.screenshot)))
        return
    if args.shot:
        screenshot(args.shot, args.side)
        return
    from _machine import cpu_model

    with tempfile.TemporaryDirectory(prefix="bench_wsi_") as tmp:
        slide = Path(tmp) / "slide.ome.zarr"
        built = build_slide(slide, args.side)
        print("built", built, flush=True)
        cmd = [sys.executable, __file__, "--measure", str(slide), "--boxes", str(args.boxes)]
        if args.viewer:
            cmd += ["--viewer"] + (["--screenshot", args.screenshot] if args.screenshot else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(out.stdout, out.stderr[-4000:])
            raise SystemExit(out.returncode)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        disk = subprocess.run(["du", "-sh", str(slide)], capture_output=True, text=True).stdout.split()[0]
    result = {"cpu": cpu_model(), "load_avg": os.getloadavg(), "slide": built, "slide_disk": disk, **measured}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
