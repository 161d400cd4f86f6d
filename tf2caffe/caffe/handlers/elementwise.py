"""Element-wise merges (Eltwise, or Scale for a squeeze-and-excitation gate) and Concat.

Inputs may be (N, 1, 1, C) against (N, H, W, C). A multiplying gate becomes a Scale with two
bottoms over the flattened (N, C) gate; any other broadcast input is first expanded to
(N, C, H, W) by a Deconvolution with all-one weights (x·1 is exact).
"""
from __future__ import annotations

import numpy as np

from ..emit import nchw
from ..netspec import CaffeLayer
from ...errors import ConversionError
from . import Handler, register
from .chain import Chain, Earlier, Step, power
from .shape import caffe_axis, order_problem

OPERATIONS = {"add": "SUM", "subtract": "SUM", "multiply": "PROD", "maximum": "MAX",
              "average": "SUM", "minimum": "MAX"}


def _coefficients(layer, count):
    kind = layer.type
    if kind == "add" and "coefficients" in layer.config:
        return [float(c) for c in layer.config["coefficients"]]
    if kind == "subtract":
        return [1.0, -1.0]
    if kind == "average":
        return [1.0 / count] * count
    return None


def _is_gate(shape, full):
    """A (N, 1, 1, C) input broadcast over the (N, H, W, C) output."""
    return len(full) == 4 and list(shape) != list(full) and list(shape) == [full[0], 1, 1, full[3]]


def _broadcast(ctx, layer, index, blob, full):
    """Expand a (N, C, 1, 1) blob to Caffe's `full` (N, C, H, W): ones-kernel Deconvolution."""
    channels, height, width = full[1:]
    name = ctx.name(layer, "broadcast%d" % index)
    ctx.add(CaffeLayer(name, "Deconvolution", [blob.name], [name], {"convolution_param": {
        "num_output": channels, "group": channels, "kernel_h": height, "kernel_w": width,
        "bias_term": False}}, [lambda: np.ones((channels, 1, height, width), np.float32)]))
    return name


@register(*sorted(OPERATIONS))
class Merge(Handler):
    notes = ("two or more inputs; shapes equal or broadcast (N,1,1,C) against (N,H,W,C); add: "
             "optional `coefficients`, one number per input (sum of coefficient·input)")
    summary = ("Eltwise: add (with coefficients: InceptionResNetV2's x + scale·y), subtract (coeff 1, -1), multiply, maximum, minimum (negated maximum), "
               "average (coeff 1/n); a (N,1,1,C) multiplier: two-bottom Scale, other (N,1,1,C) "
               "inputs expanded by a ones Deconvolution")
    caffe_layers = ("Eltwise", "Power", "Flatten", "Scale", "Deconvolution")

    def check(self, layer, model, profile):
        shapes = [model.layer(name).output_shape for name in layer.inputs]
        if len(shapes) < 2 or (layer.type == "subtract" and len(shapes) != 2):
            return "%d inputs" % len(shapes)
        if len(layer.config.get("coefficients", shapes)) != len(shapes):
            return "%d coefficients for %d inputs" % (len(layer.config["coefficients"]), len(shapes))
        for shape in shapes:
            if shape != layer.output_shape and not _is_gate(shape, layer.output_shape):
                return "cannot broadcast %s against %s (only (N, 1, 1, C) against (N, H, W, C))" % (
                    shape, layer.output_shape)
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        name = ctx.name(layer)
        blobs = [ctx.bottom(layer, i) for i in range(len(layer.inputs))]
        gates = [_is_gate(ctx.input_tf_shape(layer, i), layer.output_shape) for i in range(len(blobs))]
        shape = nchw(layer.output_shape)
        if layer.type == "multiply" and len(blobs) == 2 and any(gates):
            gate, feature = (blobs[0], blobs[1]) if gates[0] else (blobs[1], blobs[0])
            flat = ctx.name(layer, "gate")
            ctx.add(CaffeLayer(flat, "Flatten", [gate.name], [flat]))
            ctx.add(CaffeLayer(name, "Scale", [feature.name, flat], [name], {"scale_param": {"axis": 0}}))
            ctx.produce(layer, name)
            return
        bottoms = [_broadcast(ctx, layer, i, blob, shape) if gate else blob.name
                   for i, (blob, gate) in enumerate(zip(blobs, gates))]
        chain = Chain(ctx, layer, bottoms[0], shape)
        if layer.type == "minimum":
            # min(a, b, ...) = -max(-a, -b, ...); negation is exact.
            chain.follow([power("negate%d" % i, -1.0)._replace(source=bottom)
                          for i, bottom in enumerate(bottoms)])
            bottoms = [Earlier("negate%d" % i) for i in range(len(bottoms))]
        operation = OPERATIONS[layer.type]
        params = {"operation": operation}
        coefficients = _coefficients(layer, len(bottoms))
        if coefficients:
            params["coeff"] = coefficients
        chain.follow([Step(operation.lower(), "Eltwise", {"eltwise_param": params}, source=bottoms[0],
                           extra_bottoms=bottoms[1:])])
        if layer.type == "minimum":
            chain.follow([power("negate", -1.0)])
        chain.produce()


@register("concat")
class Concat(Handler):
    config_keys = ("axis",)
    summary = ("Concat, axis remapped from NHWC to NCHW; 3-D tensors (SSD's reshaped heads) held in "
               "TensorFlow's order")
    caffe_layers = ("Concat",)

    def check(self, layer, model, profile):
        if len(layer.output_shape) not in (2, 3, 4):
            return "only 2-D, 3-D and 4-D tensors are supported"
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        name = ctx.name(layer)
        inputs = [ctx.bottom(layer, i) for i in range(len(layer.inputs))]
        if len(layer.output_shape) == 3:
            # Caffe holds a 3-D tensor as TensorFlow does unless a layer left it otherwise.
            held = [blob for blob in inputs if blob.flattened_from is not None
                    or (blob.axes is not None and list(blob.axes) != [0, 1, 2])]
            if held:
                raise ConversionError("%s: layer '%s' (concat): input blob '%s' is not in TensorFlow's "
                                      "order" % (ctx.model.source, layer.name, held[0].name))
        bottoms = [blob.name for blob in inputs]
        axis = caffe_axis(layer.config["axis"], len(layer.output_shape))
        ctx.add(CaffeLayer(name, "Concat", bottoms, [name], {"concat_param": {"axis": axis}}))
        ctx.produce(layer, name)
