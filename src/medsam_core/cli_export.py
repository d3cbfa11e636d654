"""``medsam export``: build (once) the OpenVINO engine of a model's image encoder.

    medsam export [--model lite_medsam] [--checkpoint CKPT]

Optional: the default "auto" backend builds the same engine by itself, in a separate process at
the first image (eager PyTorch serves until it is ready). This command builds it in the
foreground, e.g. in an install script, so that even the first image is fast. The engine is
cached by encoder weights (``$MEDSAM_CACHE_DIR`` or ~/.cache/napari-medsam), so a fine-tuned
encoder gets its own export (about 20-70 s).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from .cli import add_model_options

    p = sub.add_parser("export", help="build the fast CPU (OpenVINO) engine of the image encoder, once",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ._paths import check_output_dir
    from .backends import default_cache_dir, make_encoder_backend, openvino_available
    from .cli import load_from_args

    if not openvino_available():
        print("medsam: error: OpenVINO is not installed (a default dependency): pip install openvino")
        return 2
    # the engine goes there: a file in its place or no write permission is said now, not after a minute
    check_output_dir(default_cache_dir() / "engines", what="engine cache folder (set $MEDSAM_CACHE_DIR to move it)")
    model = load_from_args(args)
    backend = make_encoder_backend(model, "openvino")
    info = getattr(backend, "info", {})
    if backend.name == "torch":
        print("medsam: error: the export was not usable (see the warning above); PyTorch eager stays in use")
        return 1
    state = "exported" if info.get("exported") else "already exported"
    print(f"{state}: {info.get('path')}  (max abs diff vs PyTorch "
          f"{info.get('verification', {}).get('max_abs_diff')})")
    return 0
