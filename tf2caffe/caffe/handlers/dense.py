"""Dense -> InnerProduct, with the flatten order folded into the weights."""
from __future__ import annotations

import numpy as np

from ..netspec import CaffeLayer
from . import Handler, register
from .shape import order_problem


def inner_product_weights(kernel: np.ndarray, flattened_from) -> np.ndarray:
    """TF kernel (in, out) -> Caffe (out, in). After a Flatten of (H, W, C) TensorFlow's input
    rows run in H,W,C order and Caffe's in C,H,W order, so the rows are permuted as well."""
    if flattened_from is None:
        return kernel.T
    h, w, c = flattened_from
    units = kernel.shape[1]
    # Views until the final reshape: one copy of the kernel (VGG-19's fc6 is 25088 x 4096).
    return kernel.reshape(h, w, c, units).transpose(3, 2, 0, 1).reshape(units, c * h * w)


@register("dense")
class Dense(Handler):
    summary = "InnerProduct; after a Flatten of (H, W, C) the weight rows are permuted to C,H,W"
    caffe_layers = ("InnerProduct",)

    def check(self, layer, model, profile):
        shape = model.layer(layer.inputs[0]).output_shape
        if len(shape) != 2:
            return "Dense on a %d-D input (only 2-D inputs are supported)" % len(shape)
        return order_problem(layer, model)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        name = ctx.name(layer)
        blobs = [lambda: inner_product_weights(layer.array("kernel"), bottom.flattened_from)]
        if layer.has("bias"):
            blobs.append(lambda: layer.array("bias"))
        ctx.add(CaffeLayer(name, "InnerProduct", [bottom.name], [name], {"inner_product_param": {
            "num_output": int(layer.config["units"]), "bias_term": layer.has("bias")}}, blobs))
        ctx.produce(layer, name)
