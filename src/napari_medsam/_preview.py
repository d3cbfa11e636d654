"""'What the model sees': the preprocessed model input of the current slice as an image layer."""

from __future__ import annotations

import numpy as np

from medsam_core import MedSAMError, get_spec
from medsam_core.preprocess import prepare_image

PREVIEW = "MedSAM model input"


def model_input(session) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """(h, w) or (h, w, 3) model input of the current slice (padding cropped), with the 2D
    scale and translate that lay it over the image's displayed axes."""
    if session.image_layer is None:
        raise MedSAMError("no image layer chosen: pick the image to segment first")
    plane = session.current_plane()
    image2d = session.plane_image(plane)
    spec = session.model.spec if session.model is not None else get_spec("lite_medsam")
    prep = prepare_image(image2d, spec.preprocessing, session.intensity(), session.settings.channel)
    nh, nw = prep.resized_size
    tensor = prep.tensor[:, :nh, :nw]
    data = tensor[0] if np.array_equal(tensor[0], tensor[1]) and np.array_equal(tensor[0], tensor[2]) \
        else np.ascontiguousarray(tensor.transpose(1, 2, 0))
    h, w = image2d.shape[:2]
    fy, fx = h / nh, w / nw
    img = session.image_layer
    sy, sx = img.scale[plane.rows], img.scale[plane.cols]
    ty, tx = img.translate[plane.rows], img.translate[plane.cols]
    # a model pixel covers fy x fx image pixels whose centres start at 0: shift by half the excess
    return data, (sy * fy, sx * fx), (ty + (fy - 1) / 2 * sy, tx + (fx - 1) / 2 * sx)


def show_model_input(session):
    """Add or update the preview image layer; returns it."""
    data, scale, translate = model_input(session)
    viewer = session.viewer
    rgb = data.ndim == 3
    if PREVIEW in viewer.layers:
        layer = viewer.layers[PREVIEW]
        if layer.rgb == rgb:
            layer.data, layer.scale, layer.translate = data, scale, translate
            layer.reset_contrast_limits()
            return layer
        viewer.layers.remove(layer)
    return viewer.add_image(data, name=PREVIEW, rgb=rgb, scale=scale, translate=translate, opacity=0.7, visible=True)
