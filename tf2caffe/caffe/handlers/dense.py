"""Dense -> InnerProduct, with the flatten order folded into the weights: the input's (after a
Flatten of a 4-D tensor) and the output's (before a reshape to a 4-D tensor)."""
from __future__ import annotations

import numpy as np

from ..layout import FlatOrder, hwcn_to_nchw_blocks
from ..netspec import CaffeLayer, LazyBlob
from . import Handler, register
from .shape import order_problem, unflattened_shape


def inner_product_blocks(kernel: np.ndarray, flattened_from, unflattened_to=None):
    """TF kernel (in, out) -> Caffe (out, in), in blocks of output rows (VGG-19's fc6 is 25088 x
    4096). After a Flatten of (H, W, C) TensorFlow's input rows run in H,W,C order and Caffe's in
    C,H,W order, so the rows are permuted as well (blockwise); any other order of the input
    (`flattened_from`, a FlatOrder: a permute folded in) takes the rows in its order first. Before
    a reshape to `unflattened_to` (H, W, C) the output columns are put in C,H,W order (a copy of
    the kernel: such layers are small)."""
    if unflattened_to is not None:
        kernel = kernel[:, FlatOrder.chw(unflattened_to).indices()]
    spatial = (1, 1)
    if flattened_from is not None and flattened_from.is_chw():
        spatial = flattened_from.shape[:2]
    elif flattened_from is not None:
        kernel = kernel[flattened_from.indices()]
    for block in hwcn_to_nchw_blocks(kernel, spatial):
        yield block.reshape(len(block), -1)


@register("dense")
class Dense(Handler):
    config_keys = ("units",)
    array_layouts = {"kernel": "(in, out)", "bias?": "(out)"}
    notes = "the input is 2-D"
    summary = ("InnerProduct; after a Flatten of (H, W, C) the weight rows are permuted to C,H,W "
               "(after a folded Permute, to the order Caffe holds); before a reshape to (H, W, C) "
               "the columns and bias are")
    caffe_layers = ("InnerProduct",)

    def array_shapes(self, layer, model):
        inputs = int(np.prod(model.layer(layer.inputs[0]).output_shape[1:]))
        units = int(layer.config["units"])
        return {"kernel": (inputs, units), "bias": (units,)}

    def check(self, layer, model, profile):
        shape = model.layer(layer.inputs[0]).output_shape
        if len(shape) != 2:
            return "Dense on a %d-D input (only 2-D inputs are supported)" % len(shape)
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        name = ctx.name(layer)
        units, inputs = int(layer.config["units"]), int(np.prod(bottom.shape[1:]))
        # Reshaped to (H, W, C) later: the output is emitted in C,H,W order, like a Flatten's.
        unflattened_to = unflattened_shape(ctx.model, layer)
        blobs = [LazyBlob((units, inputs), blocks=lambda: inner_product_blocks(
            layer.array("kernel"), bottom.flattened_from, unflattened_to))]
        if layer.has("bias"):
            columns = FlatOrder.chw(unflattened_to).indices() if unflattened_to else slice(None)
            blobs.append(LazyBlob((units,), lambda: layer.array("bias")[columns]))
        ctx.add(CaffeLayer(name, "InnerProduct", [bottom.name], [name], {"inner_product_param": {
            "num_output": units, "bias_term": layer.has("bias")}}, blobs))
        ctx.produce(layer, name, flattened_from=FlatOrder.chw(unflattened_to) if unflattened_to else None)
