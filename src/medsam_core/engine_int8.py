"""int8 post-training quantisation of the exported OpenVINO encoder (opt-in; needs ``nncf``).

``quantize_int8(f32_folder, out_folder, calibration)`` reads the float32 IR that
``_openvino_engine`` exported (``encoder.xml``/``.bin``), runs NNCF's post-training quantisation
with the transformer preset (matrix products and convolutions in int8; softmax, layer norms and
GELU stay float) on the given calibration inputs, and writes ``encoder.xml``/``.bin`` into
``out_folder`` atomically (a temp folder renamed into place). Compile the result with
``_openvino_engine.compile_engine(out_folder, threads, "f32")``: the quantised operations run in
int8, the rest in float32. ``int8_backend(model, images)`` does all of it for a Predictor
(opt-in: ``Predictor(model, encoder_backend=int8_backend(model, images))``), calibrated on the
user's own images and cached beside the float32 export.

Whether int8 may be the default is decided by the masks, not by the embedding (issue 16's gate:
mean Dice vs f32 >= 0.995 per case and every predicted-IoU change < 0.01 on every 2D sample case;
``benchmarks/bench_precision.py --int8``). See docs/engines.md, "Precision".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import MedSAMError

__all__ = ["int8_backend", "quantize_int8"]



def quantize_int8(f32_folder: str | os.PathLike, out_folder: str | os.PathLike,
                  calibration: Sequence[np.ndarray], fast_bias_correction: bool = True) -> Path:
    """Quantise ``f32_folder/encoder.xml`` to int8 into ``out_folder`` -> ``out_folder``.

    calibration: model inputs, each (1, 3, S, S) float32 as ``prepare_image(...).tensor[None]``
    gives (a few dozen images like the ones to be segmented; not the ones used to judge accuracy).
    Raises MedSAMError when nncf is missing, the IR is absent or there is no calibration input.
    """
    try:
        import nncf
    except ImportError:
        raise MedSAMError(
            "int8 quantisation needs NNCF: pip install nncf (it does not change torch), then run again"
        ) from None
    from .backends import import_openvino

    ov = import_openvino()
    src = Path(f32_folder) / "encoder.xml"
    if not src.is_file():
        raise MedSAMError(f"no float32 encoder IR at {src}: export it first (medsam export)")
    inputs = [np.ascontiguousarray(x, np.float32) for x in calibration]
    if not inputs or any(x.ndim != 4 or x.shape[:2] != (1, 3) for x in inputs):
        raise MedSAMError("calibration must be a non-empty list of (1, 3, S, S) float32 model inputs")
    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(
        model, nncf.Dataset(inputs), subset_size=len(inputs), model_type=nncf.ModelType.TRANSFORMER,
        fast_bias_correction=fast_bias_correction,
    )
    out = Path(out_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ov.save_model(quantized, str(tmp / "encoder.xml"), compress_to_fp16=False)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def int8_backend(model, images: Sequence[np.ndarray], cache_dir: str | os.PathLike | None = None,
                 num_threads: int | None = None, intensity=None, channel="auto"):
    """Opt-in int8 encoder for ``model`` on the CPU -> an ``EncoderBackend`` for ``Predictor``.

    images: 2D images like the ones to be segmented ((H, W) or (H, W, C); 16-64 is plenty),
    prepared with ``intensity``/``channel`` as the Predictor will. The float32 export is made (or
    reused) first; the int8 IR is cached beside it, keyed by the calibration inputs. The engine is
    checked on the probe image (a gross error raises EngineError); it falls back to PyTorch
    eager with a warning if inference fails, as every engine does.
    """
    import hashlib

    from . import _openvino_engine as ove
    from .backends import EngineEncoder, EngineError, TorchEncoder, default_cache_dir, num_threads_setting
    from .embeddings import content_hash
    from .preprocess import check_image, prepare_image

    if not len(images):
        raise MedSAMError("int8_backend needs calibration images (a few dozen like the ones to segment)")
    eager = TorchEncoder(model, num_threads=num_threads_setting(num_threads))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    meta, folder, _ = ove.ensure_export(model, root, eager.num_threads, "f32")
    inputs = [prepare_image(check_image(im), model.spec.preprocessing, intensity, channel).tensor[None]
              for im in images]
    tag = hashlib.sha256("".join(content_hash(x) for x in inputs).encode()).hexdigest()[:16]
    out = folder.parent / f"{folder.name}-int8-{tag}"
    if not (out / "encoder.xml").is_file():
        quantize_int8(folder, out, inputs)
    engine = ove.compile_engine(out, eager.num_threads, "f32")
    report = ove.verify(model, engine, precision="int8")
    if not report["accepted"]:
        raise EngineError(f"the int8 engine's masks differ grossly from PyTorch on the probe image ({report}); "
                          "calibrate on more (or more typical) images, or use the float32 engine")
    info = dict(meta, precision="int8", path=str(out), verification=report, calibration_images=len(inputs),
                engine="openvino", num_threads=eager.num_threads)
    return EngineEncoder(engine, eager, info)
