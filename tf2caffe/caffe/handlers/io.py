"""Model inputs and layers that are the identity at inference (Dropout, noise, ...)."""
from __future__ import annotations

from ..emit import nchw
from ..netspec import CaffeLayer, shape_param
from . import Handler, register
from .shape import order_problem


@register("input")
class Input(Handler):
    config_keys = ("shape",)
    notes = "batch first"
    summary = "Input, NCHW for images, (N, D) for vectors, (N, T, D) for sequences"
    caffe_layers = ("Input",)

    def check(self, layer, model, profile):
        if len(layer.output_shape) not in (2, 3, 4):
            return "only 2-D to 4-D inputs are supported (got shape %s)" % layer.output_shape
        return None

    def emit(self, layer, ctx):
        name = ctx.name(layer)
        shape = nchw(layer.output_shape)
        # The deployed net takes one sample; verification reshapes it to the reference batch.
        deployed = [1] + shape[1:]
        ctx.add(CaffeLayer(name, "Input", [], [name], {"input_param": {"shape": shape_param(deployed)}}))
        ctx.produce(layer, name, shape)


@register("identity")
class Identity(Handler):
    config_keys = ("reason",)
    notes = 'e.g. "Dropout: identity at inference"'
    summary = "nothing emitted: Dropout, GaussianNoise and the like are the identity at inference"
    caffe_layers = ()

    def check(self, layer, model, profile):
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        ctx.produce(layer, bottom.name, bottom.shape, bottom.flattened_from, bottom.axes)
