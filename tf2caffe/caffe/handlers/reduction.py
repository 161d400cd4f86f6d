"""Reductions over any axes (sum, mean, max, min, prod) and L2 normalization, from BVLC layers
(L2 normalization over channels, or over all of C, H and W, is SSD's one Normalize layer where the
profile has it).

Caffe's Reduction layer reduces every axis from one onwards and OpenCV cannot load it, so a
reduction is built from Pooling. Caffe holds a tensor in one order (NCHW for 4-D, TensorFlow's
own for other ranks) and a Reshape only changes the view, so any run of axes that are adjacent
in that order can be viewed as the H axis of (N, outer, reduced, inner) and pooled with a
(reduced, 1) window: MAX for max, AVE for mean and sum (then times the count), MAX of the
negation for min. A product has no pooling: Slice the run into single slices, Eltwise PROD.
Reducing H and/or W of a 4-D blob needs no Reshape: the window covers them directly.
"""
from __future__ import annotations

from functools import reduce as fold
from operator import mul
from typing import List, Optional, Sequence

import numpy as np

from ..emit import nchw
from ..netspec import CaffeLayer, shape_param
from . import Handler, register
from .shape import caffe_axis, order_problem, same_element_order

OPERATIONS = ("sum", "mean", "max", "min", "prod")


def _product(values) -> int:
    return int(fold(mul, values, 1))


def _runs(axes: Sequence[int]) -> List[List[int]]:
    """Sorted axes as runs of adjacent ones: [1, 2, 3] -> [[1, 2, 3]], [1, 3] -> [[1], [3]]."""
    runs: List[List[int]] = []
    for axis in sorted(axes):
        if runs and runs[-1][-1] == axis - 1:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    return runs


class ReductionSteps:
    """Caffe layers of one intermediate layer, each reading the previous top by default; the
    last takes the layer's own name (`finish`)."""

    def __init__(self, ctx, layer, bottom: str, shape: Sequence[int]):
        self.ctx, self.layer = ctx, layer
        self.top, self.shape = bottom, [int(d) for d in shape]
        self.layers: List[CaffeLayer] = []

    def next_name(self, suffix) -> str:
        """The name `add` gives the next layer (numbered: suffixes repeat)."""
        return self.ctx.name(self.layer, "%s%d" % (suffix, len(self.layers)))

    def add(self, suffix, caffe_type, params, shape, blobs=(), bottoms=None, tops=None) -> List[str]:
        name = self.next_name(suffix)
        tops = tops or [name]
        self.layers.append(CaffeLayer(name, caffe_type, bottoms or [self.top], tops, params, blobs))
        self.top, self.shape = tops[0], [int(d) for d in shape]
        return tops

    def reshape(self, shape: Sequence[int]) -> None:
        if list(shape) != self.shape:
            self.add("reshape", "Reshape", {"reshape_param": {"shape": shape_param([0] + list(shape[1:]))}},
                     shape)

    def power(self, suffix, power=1.0, scale=1.0, shift=0.0) -> None:
        params = {key: float(value) for key, value, default in (
            ("power", power, 1.0), ("scale", scale, 1.0), ("shift", shift, 0.0)) if value != default}
        self.add(suffix, "Power", {"power_param": params}, self.shape)

    def finish(self, flattened_from=None) -> None:
        if not self.layers:
            self.ctx.produce(self.layer, self.top, self.shape, flattened_from)
            return
        last, final = self.layers[-1], self.ctx.name(self.layer)
        last.name, last.tops[0] = final, final
        for caffe_layer in self.layers:
            self.ctx.add(caffe_layer)
        self.ctx.produce(self.layer, final, self.shape, flattened_from)


def _pool_run(steps: ReductionSteps, run: List[int], operation: str) -> None:
    """Reduce the Caffe axes `run` (adjacent) of the current blob, keeping them as size 1."""
    dims = list(steps.shape)
    if _product(dims[a] for a in run) == 1:
        return
    kept = [1 if a in run else d for a, d in enumerate(dims)]
    if len(dims) == 4 and run[0] >= 2:
        window = [dims[2] if 2 in run else 1, dims[3] if 3 in run else 1]
    else:
        outer, inner = _product(dims[1:run[0]]), _product(dims[run[-1] + 1:])
        window = [_product(dims[a] for a in run), 1]
        steps.reshape([dims[0], outer, window[0], inner])
    pooled = steps.shape[:2] + [steps.shape[2] // window[0], steps.shape[3] // window[1]]
    if operation == "prod":
        for axis, size in ((2, window[0]), (3, window[1])):
            if size > 1:
                shape = list(steps.shape)
                shape[axis] = 1
                parts = ["%s/%d" % (steps.next_name("slices"), i) for i in range(size)]
                steps.add("slices", "Slice", {"slice_param": {"axis": axis, "slice_point": list(range(1, size))}},
                          shape, tops=parts)
                steps.add("prod", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, shape, bottoms=parts)
    else:
        params = {"pool": "MAX" if operation in ("max", "min") else "AVE",
                  "kernel_h": window[0], "kernel_w": window[1]}
        steps.add("pool", "Pooling", {"pooling_param": params}, pooled)
    steps.reshape(kept)


def reduce_steps(steps: ReductionSteps, caffe_axes: Sequence[int], operation: str) -> None:
    """Reduce `caffe_axes` of the current blob with `operation`; the result keeps them as 1."""
    count = _product(steps.shape[a] for a in caffe_axes)
    if operation == "min":
        steps.power("negate", scale=-1.0)
    for run in _runs(caffe_axes):
        _pool_run(steps, run, operation)
    if operation == "min":
        steps.power("negate", scale=-1.0)
    if operation == "sum" and count > 1:
        steps.power("count", scale=count)  # AVE pooling divided by it


def _caffe_axes(layer, rank) -> List[int]:
    return sorted(caffe_axis(a, rank) for a in layer.config["axes"])


def _axes_problem(layer, model) -> Optional[str]:
    rank = len(model.layer(layer.inputs[0]).output_shape)
    if rank not in (2, 3, 4):
        return "a %d-D input (only 2-D to 4-D)" % rank
    axes = [int(a) for a in layer.config["axes"]]
    if any(a % rank == 0 for a in axes) or any(not -rank <= a < rank for a in axes):
        return "axes %s of a %d-D tensor: only axes other than the batch axis" % (axes, rank)
    return None


@register("reduce")
class Reduce(Handler):
    config_keys = ("operation", "axes", "keepdims")
    notes = 'operation "sum", "mean", "max", "min" or "prod"; axes sorted, not the batch axis'
    summary = ("sum, mean, max, min, prod over any non-batch axes: the axes viewed (Reshape) as one "
               "window of a Pooling (MAX; AVE, times the count for sum; min as -max(-x)), "
               "prod as Slice + Eltwise PROD; a 3-D result in another order than Caffe's: Permute "
               "first where the profile has it")
    caffe_layers = ("Pooling", "Reshape", "Power", "Slice", "Eltwise", "Permute")

    def check(self, layer, model, profile):
        if layer.config["operation"] not in OPERATIONS:
            return "operation '%s' (only %s)" % (layer.config["operation"], ", ".join(OPERATIONS))
        problem = _axes_problem(layer, model)
        if problem:
            return problem
        shape = model.layer(layer.inputs[0]).output_shape
        if len(shape) == 2:  # a reduction over every feature reads them in any order
            return None
        if len(shape) == 4 and len(layer.output_shape) == 3:
            # Caffe holds what is left in N,C,H,W order, TensorFlow's 3-D tensor keeps N,H,W,C.
            left = [a for a in (3, 1, 2) if a % 4 not in [int(x) % 4 for x in layer.config["axes"]]
                    and shape[a] > 1]
            if left != sorted(left) and not profile.allows("Permute"):
                return ("reducing axes %s of %s leaves a 3-D tensor that Caffe holds in C,H,W order "
                        "and TensorFlow in H,W,C (the '%s' profile has no Permute); keepdims would "
                        "keep it 4-D" % (layer.config["axes"], shape, profile.name))
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        steps = ReductionSteps(ctx, layer, bottom.name, bottom.shape)
        reduce_steps(steps, _caffe_axes(layer, len(bottom.shape)), layer.config["operation"])
        kept = [1 if a in [int(x) % len(bottom.shape) for x in layer.config["axes"]] else d
                for a, d in enumerate(ctx.input_tf_shape(layer))]
        if not same_element_order(kept, layer.output_shape):  # 4-D to 3-D: TensorFlow's order first
            steps.add("to_tf_order", "Permute", {"permute_param": {"order": [0, 2, 3, 1]}}, kept)
            steps.reshape(layer.output_shape)
        steps.reshape(nchw(layer.output_shape))
        steps.finish()


def broadcast_steps(steps: ReductionSteps, full: Sequence[int]) -> None:
    """Expand the size-1 axes of the current blob to `full`: a ones InnerProduct (2-D), a ones
    1x1 Convolution (channels), a ones grouped Deconvolution (H, W). x·1 is exact."""
    if len(full) == 2:
        features = full[1]
        steps.add("broadcast", "InnerProduct", {"inner_product_param": {
            "num_output": features, "bias_term": False}}, full, [np.ones((features, 1), np.float32)])
        return
    n, channels, h, w = full
    if steps.shape[1] != channels:
        steps.add("broadcast", "Convolution", {"convolution_param": {
            "num_output": channels, "kernel_size": 1, "bias_term": False}},
            [n, channels] + steps.shape[2:], [np.ones((channels, 1, 1, 1), np.float32)])
    window = [h // steps.shape[2], w // steps.shape[3]]
    if window != [1, 1]:
        steps.add("broadcast", "Deconvolution", {"convolution_param": {
            "num_output": channels, "group": channels, "bias_term": False,
            "kernel_h": window[0], "kernel_w": window[1]}}, full,
            [np.ones((channels, 1) + tuple(window), np.float32)])


def _normalize_across_spatial(layer, profile) -> Optional[bool]:
    """Normalize's across_spatial when the profile has the layer and the axes are the channels
    (False) or C, H and W (True) of a 4-D tensor; None otherwise."""
    if not profile.allows("Normalize") or len(layer.output_shape) != 4:
        return None
    axes = tuple(sorted(int(a) % 4 for a in layer.config["axes"]))
    return {(3,): False, (1, 2, 3): True}.get(axes)


@register("l2_normalize")
class L2Normalize(Handler):
    config_keys = ("axes", "epsilon")
    notes = ("x · rsqrt(max(sum(x², axes), epsilon)) (the floor is on the sum of squares, as in "
             "`tf.math.l2_normalize`; Keras's UnitNormalization, min(rsqrt(sum), 1/e), is "
             "epsilon = e²)")
    summary = ("x · max(sum(x², axes), epsilon)^-1/2: Eltwise PROD squares, the reduce handler's "
               "sum, Power/ReLU/Power for the floor and the root, ones-weight layers broadcasting "
               "back, Eltwise PROD; over the channels or all of C, H, W one Normalize where the "
               "profile has it (x · (sum + epsilon)^-1/2: the same unless a sum is within 1e7·epsilon)")
    caffe_layers = ("Eltwise", "Pooling", "Reshape", "Power", "ReLU", "InnerProduct", "Convolution",
                    "Deconvolution", "Normalize")

    def check(self, layer, model, profile):
        if len(layer.output_shape) not in (2, 4):
            return "only 2-D and 4-D inputs are supported"
        if float(layer.config["epsilon"]) <= 0:
            return "epsilon %s <= 0" % layer.config["epsilon"]
        problem = _axes_problem(layer, model)
        if problem or len(layer.output_shape) == 2:
            return problem  # over every feature: any order will do
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        epsilon = float(layer.config["epsilon"])
        across_spatial = _normalize_across_spatial(layer, ctx.profile)
        if across_spatial is not None:
            # SSD's Normalize divides by sqrt(sum + eps), not sqrt(max(sum, eps)): the two agree
            # to float32 precision wherever sum >= 1e7·eps (every unit vector of norm >= 3e-9
            # for Keras's eps of 1e-24); a zero vector stays zero in both.
            name = ctx.name(layer)
            ctx.add(CaffeLayer(name, "Normalize", [bottom.name], [name], {"norm_param": {
                "across_spatial": across_spatial, "channel_shared": True, "eps": epsilon}},
                blobs=[np.array(1.0, np.float32)]))  # the shared scale: a 0-d blob in SSD-Caffe
            ctx.produce(layer, name, bottom.shape, bottom.flattened_from)
            return
        steps = ReductionSteps(ctx, layer, bottom.name, bottom.shape)
        steps.add("square", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, bottom.shape,
                  bottoms=[bottom.name, bottom.name])
        reduce_steps(steps, _caffe_axes(layer, len(bottom.shape)), "sum")
        # max(s, eps)^-1/2 = (ReLU(s - eps) + eps)^-1/2; s - eps + eps == s unless s ~ eps.
        steps.power("floor", shift=-epsilon)
        steps.add("floor", "ReLU", None, steps.shape)
        steps.power("rsqrt", power=-0.5, shift=epsilon)
        broadcast_steps(steps, bottom.shape)
        steps.add("scale", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, bottom.shape,
                  bottoms=[bottom.name, steps.top])
        steps.finish(bottom.flattened_from)
