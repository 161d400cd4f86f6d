"""Window geometry shared by the convolution and pooling handlers, and the Caffe layer chain they
emit (an operation, then Slice crops).

TensorFlow pads asymmetrically ('same' puts the odd row at the end, explicit pads are free) and
its pooling rounds sizes down; Caffe pads symmetrically and its pooling rounds up. Every handler
reproduces TensorFlow's windows the same way, per spatial axis (`align`): a symmetric pad
`begin + m*stride` makes Caffe's windows m, m+1, ... start exactly where TensorFlow's windows
0, 1, ... start; Caffe then computes `m` extra leading and maybe some extra trailing windows,
which `Chain.crop` cuts off with Slice layers (BVLC Caffe has no Pad layer, and its Crop needs a
reference blob such as a DummyData, which OpenCV cannot load).

Naming (`Chain.produce`): the TensorFlow layer's output is the first top of a Caffe layer named
like the TensorFlow layer (`ctx.name(layer)`), because OpenCV's `Net.forward(name)` fetches a
layer's FIRST output, and `Net.forward()` returns the last layer's output. Intermediate layers are
suffixed (`<name>/conv`, `<name>/crop_h`). A Slice lists its tops in axis order, so a Slice that
drops leading rows holds the kept part in its second top: the chain then ends with a one-top
Split named `<name>` (a zero-copy identity in Caffe; a one-top Slice would do in pycaffe, but
OpenCV rejects it). Discarded Slice tops go to one Silence layer, so pycaffe does not list them as
net outputs; OpenCV treats Silence as a pass-through whose output `Net.forward()` would return if
it were the net's last layer, so a model output never ends with one.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...errors import ConversionError
from ..emit import nchw
from ..netspec import CaffeLayer

AXES = ("h", "w")

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


class Chain:
    """The Caffe layers one TensorFlow layer becomes, in order, starting from its input blob.

    `then` appends an operation, `crop` cuts rows/columns off, `produce` names the result after
    the TensorFlow layer (see the module docstring), adds everything to the net and declares the
    output blob. Nothing reaches the net before `produce`, so the final name is chosen last.
    """

    def __init__(self, ctx, layer):
        self.ctx = ctx
        self.layer = layer
        bottom = ctx.bottom(layer)
        self.top = bottom.name
        self.shape = list(bottom.shape)
        self.layers: List[CaffeLayer] = []
        self.silence_after: Optional[CaffeLayer] = None
        self.discarded: List[str] = []

    def then(self, suffix: str, caffe_type: str, params: Dict, shape: Sequence[int], blobs=()) -> None:
        name = self.ctx.name(self.layer, suffix)
        self.layers.append(CaffeLayer(name, caffe_type, [self.top], [name], params, blobs))
        self.top = name
        self.shape = [int(d) for d in shape]

    def crop(self, cuts: Sequence[Tuple[int, int]]) -> None:
        """Drop cuts[a] = (lead, trail) rows (a = 0) and columns (a = 1), one Slice per axis
        that needs it. An axis without a leading cut goes last: its kept part is the Slice's
        first top, so it can be the chain's final layer."""
        axes = sorted((a for a in (0, 1) if cuts[a][0] or cuts[a][1]), key=lambda a: cuts[a][0] == 0)
        for axis in axes:
            lead, trail = (int(n) for n in cuts[axis])
            size = self.shape[2 + axis]
            name = self.ctx.name(self.layer, "crop_" + AXES[axis])
            points, tops = [], []
            if lead:
                points.append(lead)
                tops.append(name + "/lead")
            tops.append(name)
            if trail:
                points.append(size - trail)
                tops.append(name + "/trail")
            self.discarded.extend(top for top in tops if top != name)
            self.layers.append(CaffeLayer(name, "Slice", [self.top], tops,
                                          {"slice_param": {"axis": 2 + axis, "slice_point": points}}))
            self.top = name
            self.shape[2 + axis] = size - lead - trail
        if axes:
            self.silence_after = self.layers[-1]

    def produce(self) -> None:
        expected = nchw(self.layer.output_shape)
        if self.shape[1:] != expected[1:]:  # the batch size is the runtime's
            raise ConversionError("layer '%s' (%s): the Caffe layers compute shape %s, TensorFlow's "
                                  "output is %s (NCHW)" % (self.layer.name, self.layer.type,
                                                           self.shape, expected))
        final = self.ctx.name(self.layer)
        if not self.layers:
            self.ctx.produce(self.layer, self.top, self.shape)
            return
        last = self.layers[-1]
        ends_with_silence = self.silence_after is last
        if last.tops.index(self.top) == 0 and not (
                ends_with_silence and self.layer.name in self.ctx.model.outputs):
            last.name, last.tops[0] = final, final
        else:
            self.layers.append(CaffeLayer(final, "Split", [self.top], [final]))
        for caffe_layer in self.layers:
            self.ctx.add(caffe_layer)
            if caffe_layer is self.silence_after:
                self.ctx.add(CaffeLayer(self.ctx.name(self.layer, "silence"), "Silence",
                                        list(self.discarded), []))
        self.ctx.produce(self.layer, final, self.shape)
