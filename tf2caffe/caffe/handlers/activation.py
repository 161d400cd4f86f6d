"""Activations and PReLU.

BVLC Caffe lacks ReLU6, clipping and hard-sigmoid; they are composed from ReLU, Power and
Eltwise as min(r, m) = r - ReLU(x - m) with r = ReLU(x): exact wherever x < m, since ReLU(x - m)
is then exactly 0. (The shorter `m - ReLU(m - r)` rounds every value to a multiple of ulp(m),
an absolute error of ~5e-7 that swamps small activations in deep untrained nets.)
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..netspec import CaffeLayer
from . import BroadcastsTo, Handler, register
from .chain import Chain, Earlier, Step, power
from .shape import caffe_axis, in_blob_order, order_problem


def relu(suffix, negative_slope=0.0) -> Step:
    return Step(suffix, "ReLU", {"relu_param": {"negative_slope": float(negative_slope)}}
                if negative_slope else None)


def clip_above(maximum, profile, source: str, negative_slope=0.0) -> List[Step]:
    """Steps computing min(max(x, 0) + slope·min(x, 0), maximum) (slope ≥ 0) of `source`."""
    if maximum == 6 and not negative_slope and profile.allows("ReLU6"):
        return [Step("relu6", "ReLU6", source=source)]
    return [power("over", 1.0, -maximum)._replace(source=source), relu("excess"),
            relu("relu", negative_slope)._replace(source=source),
            Step("min", "Eltwise", {"eltwise_param": {"operation": "SUM", "coeff": [1.0, -1.0]}},
                 extra_bottoms=[Earlier("excess")])]


def _relu(layer, profile, x):
    slope = float(layer.config.get("negative_slope") or 0.0)
    maximum = layer.config.get("max_value")
    if maximum is None:
        return [relu("relu", slope)]
    return clip_above(float(maximum), profile, x, slope)


def _swish(layer, profile, x):
    if profile.allows("Swish"):
        return [Step("swish", "Swish")]
    return [Step("sigmoid", "Sigmoid"),
            Step("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, extra_bottoms=[x])]


def _mish(layer, profile, x):
    # x · tanh(softplus(x)); BNLL is softplus.
    if profile.allows("Mish"):
        return [Step("mish", "Mish")]
    return [Step("bnll", "BNLL"), Step("tanh", "TanH"),
            Step("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, extra_bottoms=[x])]


# OpenCV's HardSigmoid: clip(0.2·x + 0.5, 0, 1), fixed (a prototxt has no field for them).
HARD_SIGMOID_LAYER = (0.2, 0.5)


def _hard_sigmoid(layer, profile, _x):
    # clip(slope·x + offset, 0, 1) as relu6(6·slope·x + 6·offset) / 6: for Keras 3's slope 1/6
    # and offset 0.5 that is its own relu6(x + 3) / 6. Keras 2's (0.2, 0.5) is OpenCV's layer.
    slope = float(layer.config.get("slope", 1.0 / 6.0))
    offset = float(layer.config.get("offset", 0.5))
    if (slope, offset) == HARD_SIGMOID_LAYER and profile.allows("HardSigmoid"):
        return [Step("hard_sigmoid", "HardSigmoid")]
    return ([power("affine", 6.0 * slope, 6.0 * offset)] + clip_above(6.0, profile, Earlier("affine"))
            + [power("scale", 1.0 / 6.0)])


def _hard_swish(layer, profile, x):
    # x · hard_sigmoid(x) (Keras 3: relu6(x + 3) / 6); OpenCV's HardSwish is x · clip(x/6 + 1/2, 0, 1).
    if profile.allows("HardSwish"):
        return [Step("hard_swish", "HardSwish")]
    return _hard_sigmoid(layer, profile, x) + [
        Step("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, extra_bottoms=[x])]


# Abramowitz & Stegun 7.1.26: for z >= 0, erf(z) = 1 - t·(a1 + t·(a2 + ... + t·a5))·exp(-z²),
# t = 1 / (1 + p·z), with |error| <= 1.5e-7.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
GELU_TANH = (np.sqrt(2.0 / np.pi), 0.044715)  # TensorFlow's tanh approximation's constants


def _gelu(layer, profile, x):
    if layer.config.get("approximate"):
        # 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), as TensorFlow computes it.
        return [power("cube", exponent=3.0), Step("unfused", "Split"),
                Step("inner", "Eltwise", {"eltwise_param": {"operation": "SUM", "coeff": [1.0, GELU_TANH[1]]}},
                     source=x, extra_bottoms=[Earlier("unfused")]),
                power("tanh_in", GELU_TANH[0]), Step("tanh", "TanH"), power("one_plus", 0.5, 0.5),
                Step("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, extra_bottoms=[x])]
    if profile.allows("Gelu"):
        return [Step("gelu", "Gelu")]
    # x·Φ(x) = 0.5·x + 0.5·|x|·erf(|x|/√2) (erf is odd, so x·erf(x/√2) = |x|·erf(|x|/√2)): erf is
    # then only needed on z = |x|/√2 >= 0, where A&S 7.1.26 holds. With q = 1 - erf(z) the result
    # is 0.5·x + 0.5·|x| - 0.5·|x|·q: for x < 0 the first two cancel exactly, leaving -0.5·|x|·q.
    prod = {"eltwise_param": {"operation": "PROD"}}
    steps = [Step("abs", "AbsVal"),
             # t = (1 + p·|x|/√2)^-1; the Split keeps OpenCV from fusing the Power into the next.
             power("t", ERF_P / np.sqrt(2.0), 1.0, -1.0), Step("t_unfused", "Split"),
             power("horner4", ERF_A[4], ERF_A[3])]
    for degree in (2, 1, 0):
        steps += [Step("horner%d_t" % (degree + 1), "Eltwise", prod, extra_bottoms=[Earlier("t_unfused")]),
                  power("horner%d" % degree, shift=ERF_A[degree])]
    steps += [Step("poly", "Eltwise", prod, extra_bottoms=[Earlier("t_unfused")]),
              Step("square", "Eltwise", prod, source=Earlier("abs"), extra_bottoms=[Earlier("abs")]),
              Step("gauss", "Exp", {"exp_param": {"scale": -0.5}}),  # exp(-z²) = exp(-x²/2)
              Step("erfc", "Eltwise", prod, extra_bottoms=[Earlier("poly")]),
              Step("abs_erfc", "Eltwise", prod, extra_bottoms=[Earlier("abs")]),
              Step("sum", "Eltwise", {"eltwise_param": {"operation": "SUM", "coeff": [0.5, 0.5, -0.5]}},
                   source=x, extra_bottoms=[Earlier("abs"), Earlier("abs_erfc")])]
    return steps


def _softsign(layer, profile, x):
    # x / (1 + |x|) as x · (1 + |x|)^-1: two roundings where TensorFlow divides once (≤ 1 ulp more).
    return [Step("abs", "AbsVal"), power("reciprocal", shift=1.0, exponent=-1.0),
            Step("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, extra_bottoms=[x])]


def _power(layer, profile, _x):
    # OpenCV 4.14 fuses a Power with power p != 1 into a following scale (Power, Scale) as
    # (s·x)^p with s = next scale, not s·x^p (error ~1 on gelu's 0.044715·x³); a Split between
    # the two stops the fusion.
    return [power("power", exponent=layer.config["exponent"]), Step("unfused", "Split")]


# TensorFlow's SELU constants (tensorflow/core/kernels/selu_op.h): scale · elu(x, alpha).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _softmax_axis(layer, rank):
    axis = layer.config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return caffe_axis(axis, rank)


# function -> steps(layer, profile, input blob name); an empty list emits nothing.
STEPS = {
    "relu": _relu,
    "relu6": lambda layer, profile, x: clip_above(6.0, profile, x),
    "leaky_relu": lambda layer, profile, x: [relu("relu", layer.config["alpha"])],
    "elu": lambda layer, profile, x: [Step("elu", "ELU", {"elu_param": {
        "alpha": float(layer.config.get("alpha", 1.0))}})],
    "sigmoid": lambda layer, profile, x: [Step("sigmoid", "Sigmoid")],
    "tanh": lambda layer, profile, x: [Step("tanh", "TanH")],
    "softmax": lambda layer, profile, x: [Step("softmax", "Softmax", {"softmax_param": {
        "axis": _softmax_axis(layer, len(layer.output_shape))}})],
    "selu": lambda layer, profile, x: [Step("elu", "ELU", {"elu_param": {"alpha": SELU_ALPHA}}),
                                       power("scale", SELU_SCALE)],
    "softplus": lambda layer, profile, x: [Step("bnll", "BNLL")],  # log(1 + exp(x))
    "softsign": _softsign,
    "abs": lambda layer, profile, x: [Step("abs", "AbsVal")],
    "power": _power,
    "swish": _swish,
    "mish": _mish,
    "hard_sigmoid": _hard_sigmoid,
    "hard_swish": _hard_swish,
    "gelu": _gelu,
    "linear": lambda layer, profile, x: [],
}


@register("activation")
class Activation(Handler):
    config_keys = ("function",)
    notes = ("one of %s; optional `alpha` (leaky_relu, elu), `max_value`, `threshold`, "
             "`exponent` (power), `negative_slope` (relu), `axis` (softmax), `slope`, `offset` (hard_sigmoid: "
             "clip(slope·x + offset, 0, 1)), `approximate` (gelu: the tanh form)" % ", ".join(sorted(STEPS)))
    summary = ("relu (negative_slope, max_value; not threshold), relu6, leaky_relu, elu, selu "
               "(ELU + Power scale), sigmoid, tanh, softmax (any axis), softplus (BNLL), softsign "
               "(x · (1 + abs(x))^-1), abs, power (x^exponent; a Split after it keeps OpenCV from "
               "fusing it wrongly), swish, mish (BNLL, TanH, Eltwise PROD), hard_sigmoid, hard_swish "
               "(x · hard_sigmoid(x)), gelu (0.5·x + 0.5·|x|·erf(|x|/√2), erf by Abramowitz-Stegun "
               "7.1.26 from AbsVal, Power, Exp, Eltwise; the tanh form from Power, TanH, Eltwise), "
               "linear; ReLU6 and clipping as ReLU(x) - ReLU(x - m) (ReLU6, Swish, Mish, HardSwish, "
               "Gelu, and HardSigmoid for slope 0.2 and offset 0.5, in the opencv profile)")
    caffe_layers = ("ReLU", "Power", "ELU", "Sigmoid", "TanH", "Softmax", "BNLL", "AbsVal", "Eltwise",
                    "Split", "Exp", "ReLU6", "Swish", "Mish", "HardSigmoid", "HardSwish", "Gelu")

    def check(self, layer, model, profile):
        function = layer.config["function"]
        if function not in STEPS:
            return "activation '%s' has no exact Caffe equivalent" % function
        if function == "leaky_relu" and "alpha" not in layer.config:
            return "leaky_relu without 'alpha' in its config"
        if function == "power" and "exponent" not in layer.config:
            return "power without 'exponent' in its config"
        if function == "relu" and float(layer.config.get("threshold") or 0.0) != 0.0:
            return ("ReLU with threshold %s is a step x·[x > t]: Caffe's Threshold layer would "
                    "do it, but OpenCV cannot load it" % layer.config["threshold"])
        if function == "relu" and layer.config.get("max_value") is not None and \
                float(layer.config.get("negative_slope") or 0.0) < 0:
            return "ReLU with a negative negative_slope and a max_value is not supported"
        if function == "softmax" and _softmax_axis(layer, len(layer.output_shape)) is None:
            return "softmax over several axes (%s) has no Caffe equivalent" % layer.config["axis"]
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        chain = Chain(ctx, layer)
        chain.follow(STEPS[layer.config["function"]](layer, ctx.profile, chain.top))
        chain.produce()


def _prelu_slopes(layer, model) -> Optional[np.ndarray]:
    """PReLU slopes per Caffe channel, or None when they vary along H or W."""
    shape = model.layer(layer.inputs[0]).output_shape
    alpha = np.broadcast_to(layer.array("alpha"), shape[1:]).reshape(-1, shape[-1])
    if not np.all(alpha == alpha[:1]):
        return None
    return np.ascontiguousarray(alpha[0])


@register("prelu")
class PReLU(Handler):
    array_layouts = {"alpha": "(TF shape without batch, or broadcasting to it)"}
    notes = "optional shared_axes"
    summary = "PReLU with per-channel slopes (alpha shared over H and W)"
    caffe_layers = ("PReLU",)

    def array_shapes(self, layer, model):
        return {"alpha": BroadcastsTo(model.layer(layer.inputs[0]).output_shape[1:])}

    def check(self, layer, model, profile):
        if len(model.layer(layer.inputs[0]).output_shape) not in (2, 4):
            return "only 2-D and 4-D inputs are supported"
        if _prelu_slopes(layer, model) is None:
            return ("slopes vary over H or W; Caffe's PReLU has one slope per channel "
                    "(use shared_axes=[1, 2])")
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        name = ctx.name(layer)
        slopes = lambda: in_blob_order(_prelu_slopes(layer, ctx.model), bottom)
        ctx.add(CaffeLayer(name, "PReLU", [bottom.name], [name], blobs=[slopes]))
        ctx.produce(layer, name, bottom.shape, bottom.flattened_from)
