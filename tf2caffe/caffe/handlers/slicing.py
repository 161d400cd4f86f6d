"""Slicing: x[:, begin:end:stride, ...] along any non-batch axes (StridedSlice, Slice, Split).

Each axis is first cut to [begin, last taken + 1] with Caffe's Slice (the cut-off parts go to a
Silence layer). A stride > 1 then keeps every stride-th element from the first: along H or W a
Pooling with a 1x1 window and that stride (Caffe's pooled size ceil((L - 1)/s) + 1 is exactly the
count taken once the axis ends at the last taken element; a window of one element is exact);
along the channels a 1x1 Convolution whose weights pick one channel each (one-hot: x·1 plus
zeros, exact). A 2-D or 3-D tensor with a stride is viewed (Reshape) as (N, D1, D2, 1) for that.
A slice that also drops or adds size-1 axes (StridedSlice's shrink and new axes) ends with a
Reshape where Caffe's element orders agree, else Permute -> Reshape -> Permute where the
profile has Permute.
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..emit import nchw
from ..netspec import shape_param
from . import Handler, register
from .chain import Chain
from .shape import caffe_axis, order_problem, reshape_steps, same_element_order


def kept_shape(layer, shape_in) -> List[int]:
    """TensorFlow's shape of the slice before size-1 axes are dropped or added."""
    config = layer.config
    return [int(shape_in[0])] + [len(range(int(b), int(e), int(s))) for b, e, s in zip(
        config["begin"], config["end"], config["strides"])]


@register("slice")
class Slice(Handler):
    config_keys = ("begin", "end", "strides")
    notes = ("x[:, begin:end:strides] per non-batch axis in TensorFlow's order, 0 <= begin < end "
             "<= size, strides >= 1; the output shape may drop or add size-1 axes (StridedSlice's "
             "shrink and new axes)")
    summary = ("Slice per axis (the rest to Silence); a stride: 1x1 Pooling with that stride along "
               "H or W, a one-hot 1x1 Convolution along the channels; size-1 axes dropped or added "
               "by Reshape (Permute, Reshape, Permute where the orders differ and the profile has "
               "Permute)")
    caffe_layers = ("Slice", "Silence", "Split", "Pooling", "Convolution", "Reshape", "Permute")

    def check(self, layer, model, profile):
        shape_in = model.layer(layer.inputs[0]).output_shape
        config = layer.config
        if len(shape_in) not in (2, 3, 4):
            return "only 2-D to 4-D inputs are supported"
        if not len(config["begin"]) == len(config["end"]) == len(config["strides"]) == len(shape_in) - 1:
            return "begin, end and strides need one entry per non-batch axis of %s" % shape_in
        for b, e, s, size in zip(config["begin"], config["end"], config["strides"], shape_in[1:]):
            if not (0 <= int(b) < int(e) <= size and int(s) >= 1):
                return "slice %d:%d:%d of an axis of %d (only 0 <= begin < end <= size, stride >= 1)" % (
                    b, e, s, size)
        kept = kept_shape(layer, shape_in)
        if int(np.prod(kept[1:])) != int(np.prod(layer.output_shape[1:])):
            return "output shape %s does not hold the %s sliced" % (layer.output_shape, kept)
        if not same_element_order(kept, layer.output_shape) and not profile.allows("Permute"):
            return ("reshaping the slice %s to %s: Caffe's element order differs and the '%s' profile "
                    "has no Permute" % (kept[1:], layer.output_shape[1:], profile.name))
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        shape_in = ctx.input_tf_shape(layer)
        rank = len(shape_in)
        kept = kept_shape(layer, shape_in)
        steps = Chain(ctx, layer)
        cuts, strides = {}, {}
        bounds = zip(layer.config["begin"], layer.config["end"], layer.config["strides"])
        for axis, (b, _, s) in enumerate(bounds, 1):
            b, s, count = int(b), int(s), kept[axis]
            cuts[caffe_axis(axis, rank)] = (b, shape_in[axis] - (b + (count - 1) * s + 1))
            if s > 1 and count > 1:
                strides[caffe_axis(axis, rank)] = s
        steps.cut(cuts)
        if strides:
            cropped = list(steps.shape)
            if rank < 4:  # viewed as (N, D1, D2, 1): the strides' axes become channels and H
                steps.then("as_image", "Reshape", {"reshape_param": {"shape": shape_param(
                    [0] + cropped[1:] + [1] * (4 - rank))}}, cropped + [1] * (4 - rank))
            spatial = [strides.get(2, 1), strides.get(3, 1)]
            if spatial != [1, 1]:
                n, c, h, w = steps.shape
                steps.then("stride", "Pooling", {"pooling_param": {
                    "pool": "MAX", "kernel_h": 1, "kernel_w": 1, "stride_h": spatial[0], "stride_w": spatial[1]}},
                    [n, c, len(range(0, h, spatial[0])), len(range(0, w, spatial[1]))])
            if 1 in strides:
                n, c, h, w = steps.shape
                picked = len(range(0, c, strides[1]))
                weights = np.zeros((picked, c, 1, 1), np.float32)
                weights[np.arange(picked), np.arange(picked) * strides[1]] = 1.0
                steps.then("stride_c", "Convolution", {"convolution_param": {
                    "num_output": picked, "kernel_size": 1, "bias_term": False}},
                    [n, picked, h, w], [weights])
            if rank < 4:
                steps.then("from_image", "Reshape", {"reshape_param": {"shape": shape_param(
                    [0] + nchw(kept)[1:])}}, nchw(kept))
        if list(kept[1:]) != list(layer.output_shape[1:]):
            reshape_steps(steps, kept, layer.output_shape,
                          permuted=not same_element_order(kept, layer.output_shape))
        steps.produce()
