"""Pooling: max/average with TensorFlow's windows and divisors, and global pooling."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from . import Handler, register
from .chain import Chain
from .spatial import AxisPlan, align, caffe_pool_count, tf_pads, tf_window_count, window_params


class PoolAxis:
    """One spatial axis of a pooling: TensorFlow's windows (`out` of them, the first starting at
    `-begin`) and how Caffe reproduces them (`plan`)."""

    def __init__(self, size: int, kernel: int, stride: int, pads: Tuple[int, int]):
        self.size, self.kernel, self.stride, self.begin = size, kernel, stride, pads[0]
        self.out = tf_window_count(size, kernel, stride, pads)
        # Caffe requires pad < kernel. It holds: 'same' has begin <= (kernel-1)//2, and `align`
        # keeps pad = begin except for stride 1 with an even kernel, where pad = begin + 1 = kernel/2.
        self.plan: AxisPlan = align(size, self.out, stride, pads[0], self.count)

    def count(self, pad: int, clip_last: bool = True) -> int:
        return caffe_pool_count(self.size, self.kernel, self.stride, pad, clip_last)

    def trail(self, clip_last: bool) -> int:
        return self.count(self.plan.pad, clip_last) - self.plan.lead - self.out

    def divisor_factors(self) -> np.ndarray:
        """Caffe's average divisor over TensorFlow's, per kept output: Caffe counts pad cells up to
        `size + pad`, TensorFlow only real cells."""
        factors = []
        for i in range(self.out):
            start = (i + self.plan.lead) * self.stride - self.plan.pad
            caffe = min(start + self.kernel, self.size + self.plan.pad) - start
            tf_start = i * self.stride - self.begin
            tf = min(tf_start + self.kernel, self.size) - max(tf_start, 0)
            factors.append(caffe / tf)
        return np.array(factors, dtype=np.float64)


def _axes(layer, model) -> List[PoolAxis]:
    _, h, w, _ = model.layer(layer.inputs[0]).output_shape
    kernels = [int(k) for k in layer.config["pool_size"]]
    strides = [int(s) for s in layer.config["strides"]]
    pads = tf_pads(layer.config["padding"], (h, w), kernels, strides)
    return [PoolAxis(*args) for args in zip((h, w), kernels, strides, pads)]


@register("max_pool2d", "avg_pool2d")
class Pooling(Handler):
    config_keys = ("pool_size", "strides", "padding")
    caffe_layers = ("Pooling", "Slice", "Silence", "Split", "Scale")
    summary = ("Pooling with aligned symmetric pads, Slice off Caffe's extra (ceil-rounded or shifted) "
               "outputs; average: a fixed Scale corrects border divisors to TensorFlow's real-cell counts")

    def check(self, layer, model, profile) -> Optional[str]:
        if layer.config["padding"] not in ("same", "valid"):
            return "padding %r: only 'same' and 'valid' pooling is supported" % (layer.config["padding"],)
        axes = _axes(layer, model)
        # Caffe clips a last window that starts in the padding on every axis when any axis is
        # padded, OpenCV only on padded axes: where that decides whether a crop exists at all,
        # one prototxt cannot serve both runtimes.
        padded = any(axis.plan.pad for axis in axes)
        for axis in axes:
            if (axis.trail(padded) == 0) != (axis.trail(axis.plan.pad > 0) == 0):
                return ("pool size %s with strides %s on a %dx%d input: Caffe and OpenCV disagree on "
                        "the output size" % (layer.config["pool_size"], layer.config["strides"],
                                             axes[0].size, axes[1].size))
        return None

    def emit(self, layer, ctx):
        axes = _axes(layer, ctx.model)
        padded = any(axis.plan.pad for axis in axes)
        average = layer.type == "avg_pool2d"
        params = {"pool": "AVE" if average else "MAX"}
        params.update(window_params([a.kernel for a in axes], [a.stride for a in axes],
                                    [a.plan.pad for a in axes]))
        n, channels = ctx.bottom(layer).shape[:2]
        chain = Chain(ctx, layer)
        chain.then("pool", "Pooling", {"pooling_param": params},
                   [n, channels] + [axis.count(axis.plan.pad, padded) for axis in axes])
        chain.crop([(axis.plan.lead, axis.trail(padded)) for axis in axes])
        if average:
            factors = np.outer(axes[0].divisor_factors(), axes[1].divisor_factors())
            if np.any(factors != 1.0):
                chain.then("divisor", "Scale", {"scale_param": {"axis": 2, "num_axes": 2}},
                           chain.shape, [factors.astype(np.float32)])
        chain.produce()


@register("global_max_pool2d", "global_avg_pool2d")
class GlobalPooling(Handler):
    config_keys = ("keepdims",)
    caffe_layers = ("Pooling", "Flatten")
    summary = "Pooling global_pooling: true; keepdims false: Flatten to (N, C)"

    def emit(self, layer, ctx):
        n, channels = ctx.bottom(layer).shape[:2]
        pool = "AVE" if layer.type == "global_avg_pool2d" else "MAX"
        chain = Chain(ctx, layer)
        chain.then("pool", "Pooling", {"pooling_param": {"pool": pool, "global_pooling": True}},
                   [n, channels, 1, 1])
        if not layer.config["keepdims"]:
            chain.then("flatten", "Flatten", {}, [n, channels])
        chain.produce()
