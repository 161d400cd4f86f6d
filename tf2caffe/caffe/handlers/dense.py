"""Dense -> InnerProduct, with the flatten order folded into the weights."""
from __future__ import annotations

import numpy as np

from ..layout import hwcn_to_nchw_blocks
from ..netspec import CaffeLayer, LazyBlob
from . import Handler, register
from .shape import order_problem


def inner_product_blocks(kernel: np.ndarray, flattened_from):
    """TF kernel (in, out) -> Caffe (out, in), in blocks of output rows (VGG-19's fc6 is 25088 x
    4096). After a Flatten of (H, W, C) TensorFlow's input rows run in H,W,C order and Caffe's in
    C,H,W order, so the rows are permuted as well."""
    for block in hwcn_to_nchw_blocks(kernel, _spatial(flattened_from)):
        yield block.reshape(len(block), -1)


def _spatial(flattened_from):
    return flattened_from[:2] if flattened_from is not None else (1, 1)


@register("dense")
class Dense(Handler):
    config_keys = ("units",)
    array_layouts = {"kernel": "(in, out)", "bias?": "(out)"}
    notes = "the input is 2-D"
    summary = "InnerProduct; after a Flatten of (H, W, C) the weight rows are permuted to C,H,W"
    caffe_layers = ("InnerProduct",)

    def array_shapes(self, layer, model):
        inputs = int(np.prod(model.layer(layer.inputs[0]).output_shape[1:]))
        units = int(layer.config["units"])
        return {"kernel": (inputs, units), "bias": (units,)}

    def check(self, layer, model, profile):
        shape = model.layer(layer.inputs[0]).output_shape
        if len(shape) != 2:
            return "Dense on a %d-D input (only 2-D inputs are supported)" % len(shape)
        return order_problem(layer, model)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        name = ctx.name(layer)
        units, inputs = int(layer.config["units"]), int(np.prod(bottom.shape[1:]))
        blobs = [LazyBlob((units, inputs), blocks=lambda: inner_product_blocks(
            layer.array("kernel"), bottom.flattened_from))]
        if layer.has("bias"):
            blobs.append(LazyBlob((units,), lambda: layer.array("bias")))
        ctx.add(CaffeLayer(name, "InnerProduct", [bottom.name], [name], {"inner_product_param": {
            "num_output": units, "bias_term": layer.has("bias")}}, blobs))
        ctx.produce(layer, name)
