"""Window geometry shared by the convolution and pooling handlers.

TensorFlow pads asymmetrically ('same' puts the odd row at the end, explicit pads are free) and
its pooling rounds sizes down; Caffe pads symmetrically and its pooling rounds up. Every handler
reproduces TensorFlow's windows the same way, per spatial axis (`align`): a symmetric pad
`begin + m*stride` makes Caffe's windows m, m+1, ... start exactly where TensorFlow's windows
0, 1, ... start; Caffe then computes `m` extra leading and maybe some extra trailing windows,
which `chain.Chain.crop` cuts off with Slice layers (BVLC Caffe has no Pad layer, and its Crop
needs a reference blob such as a DummyData, which OpenCV cannot load).
"""
from __future__ import annotations

from collections import namedtuple
from typing import Callable, Dict, List, Sequence, Tuple

# How Caffe reproduces TensorFlow's windows along one axis: symmetric `pad`, then drop `lead`
# leading and `trail` trailing outputs.
AxisPlan = namedtuple("AxisPlan", "pad lead trail")


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    return (kernel - 1) * dilation + 1


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """TensorFlow's 'same' padding (begin, end) along one axis: the odd row goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


def tf_pads(padding, sizes: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
            dilations: Sequence[int] = (1, 1)) -> List[Tuple[int, int]]:
    """(begin, end) per spatial axis for 'same', 'valid' or explicit [[top, bottom], [left, right]]."""
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        return [same_pads(*args) for args in zip(sizes, kernels, strides, dilations)]
    return [(int(begin), int(end)) for begin, end in padding]


def tf_window_count(size: int, kernel_extent: int, stride: int, pads: Tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel_extent) // stride + 1


def caffe_conv_count(size: int, kernel_extent: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel_extent) // stride + 1


def caffe_pool_count(size: int, kernel: int, stride: int, pad: int, clip_last: bool = True) -> int:
    """Caffe's pooled size: rounded up, then one less when the last window would start in the
    padding. Caffe applies that clip on every axis when ANY axis is padded, OpenCV only on a
    padded axis: `clip_last` says which."""
    count = -(-(size + 2 * pad - kernel) // stride) + 1
    if clip_last and (count - 1) * stride >= size + pad:
        count -= 1
    return count


def align(size: int, out: int, stride: int, begin: int, count: Callable[[int], int]) -> AxisPlan:
    """The smallest symmetric pad `begin + m*stride` for which Caffe (output size `count(pad)`)
    computes TensorFlow's `out` windows as its windows m .. m+out-1. Each step adds two windows
    to Caffe's count and one to the needed count, so the search ends."""
    shift = 0
    while True:
        pad = begin + shift * stride
        produced = count(pad)
        if produced - shift >= out:
            return AxisPlan(pad, shift, produced - shift - out)
        shift += 1


def window_params(kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int]) -> Dict:
    """kernel/stride/pad fields of a convolution_param or pooling_param (defaults left out)."""
    fields = {}
    for field, (h, w), default in (("kernel", kernel, None), ("stride", stride, 1), ("pad", pad, 0)):
        if h != w:
            fields.update({field + "_h": int(h), field + "_w": int(w)})
        elif h != default:
            fields[field + "_size" if field == "kernel" else field] = int(h)
    return fields
