"""Convolutions (conv2d, depthwise_conv2d, conv2d_transpose) and the layers that move pixels around
them (pad2d, crop2d, upsample2d). Geometry lives in `spatial`, the Slice crops in `chain`."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..layout import hwcn_to_nchw_blocks
from ..netspec import LazyBlob
from . import Handler, register
from .chain import Chain
from .resize import MATRIX_LAYERS, emit_bilinear
from .spatial import align, caffe_conv_count, effective_kernel, tf_pads, tf_window_count, window_params


# The config keys of every layer type that slides a window.
SPATIAL = ("kernel_size", "strides", "dilation", "padding")


def _pair(layer, key, default=(1, 1)) -> List[int]:
    return [int(v) for v in layer.config.get(key, default)]


def _input_channels(layer, model) -> int:
    return int(model.layer(layer.inputs[0]).output_shape[-1])


def _conv_axis(size, kernel, stride, dilation, pads):
    extent = effective_kernel(kernel, dilation)
    out = tf_window_count(size, extent, stride, pads)
    return align(size, out, stride, pads[0], lambda pad: caffe_conv_count(size, extent, stride, pad)), out


def _with_bias(layer, weight, outputs: int) -> list:
    bias = LazyBlob((outputs,), lambda: layer.array("bias"))
    return [weight] + ([bias] if layer.has("bias") else [])


def _channel_copy(channels, kernel, stride, pad):
    """Params and weights of a grouped (de)convolution that copies every channel: weights one,
    no bias (zero padding, nearest upsampling)."""
    params = {"num_output": channels, "bias_term": False, "group": channels}
    params.update(window_params(kernel, stride, pad))
    ones = np.ones((channels, 1) + tuple(kernel), dtype=np.float32)
    return {"convolution_param": params}, [ones]


def _without_padding_taps(sizes, kernels, strides, dilations, pads, weight):
    """On a 1-pixel axis with one output window, only the kernel tap over that pixel reads data;
    the others multiply padding. Returns (kernels, strides, dilations, pads, weight) with those
    axes reduced to that one tap (kernel 1, no pad): the same function, and it keeps OpenCV 4.x
    off its 3x3 depthwise kernel (chosen for group == channels == num_output, pads <= 1), which
    reads past an axis of one pixel."""
    kernels, strides, dilations, pads = list(kernels), list(strides), list(dilations), list(pads)
    taps = {}
    for axis, size in enumerate(sizes):
        begin = pads[axis][0]
        extent = effective_kernel(kernels[axis], dilations[axis])
        if (size == 1 and tf_window_count(size, extent, strides[axis], pads[axis]) == 1
                and begin < extent and begin % dilations[axis] == 0):
            taps[axis] = begin // dilations[axis]
            kernels[axis], strides[axis], dilations[axis], pads[axis] = 1, 1, 1, (0, 0)
    if not taps:
        return kernels, strides, dilations, pads, weight

    def one_tap_weight():
        kernel = weight()
        for axis, tap in taps.items():
            kernel = kernel.take([tap], axis=2 + axis)
        return kernel

    shape = list(weight.shape)
    for axis in taps:
        shape[2 + axis] = 1
    return kernels, strides, dilations, pads, LazyBlob(shape, one_tap_weight)


def _emit_convolution(layer, ctx, num_output: int, group: int, weight) -> None:
    """A Caffe Convolution with TensorFlow's windows: symmetric pads that align them, then Slice
    crops of the extra outputs (see `spatial.align`)."""
    batch, channels, h, w = ctx.bottom(layer).shape
    kernels, strides = _pair(layer, "kernel_size"), _pair(layer, "strides")
    dilations = _pair(layer, "dilation")
    pads = tf_pads(layer.config["padding"], (h, w), kernels, strides, dilations)
    if group > 1 and group == channels == num_output:
        kernels, strides, dilations, pads, weight = _without_padding_taps(
            (h, w), kernels, strides, dilations, pads, weight)
    axes = [_conv_axis(*args) for args in zip((h, w), kernels, strides, dilations, pads)]
    params = {"num_output": num_output, "bias_term": layer.has("bias")}
    params.update(window_params(kernels, strides, [plan.pad for plan, _ in axes]))
    if dilations != [1, 1]:
        params["dilation"] = dilations[0] if dilations[0] == dilations[1] else dilations
    if group != 1:
        params["group"] = group
    shape = [batch, num_output] + [plan.lead + out + plan.trail for plan, out in axes]
    chain = Chain(ctx, layer)
    chain.then("conv", "Convolution", {"convolution_param": params}, shape,
               _with_bias(layer, weight, num_output))
    chain.crop([(plan.lead, plan.trail) for plan, _ in axes])
    chain.produce()


@register("conv2d")
class Conv2D(Handler):
    config_keys = ("filters", "groups") + SPATIAL
    array_layouts = {"kernel": "(kh, kw, in/groups, out)", "bias?": "(out)"}
    caffe_layers = ("Convolution", "Slice", "Silence", "Split")
    summary = ("Convolution (groups, dilation); odd 'same' padding: pad begin+stride, Slice off the "
               "first row/column")

    def array_shapes(self, layer, model):
        filters, groups = int(layer.config["filters"]), int(layer.config["groups"])
        channels = _input_channels(layer, model)
        return {"kernel": tuple(_pair(layer, "kernel_size")) + (channels // groups, filters),
                "bias": (filters,)}

    def check(self, layer, model, profile) -> Optional[str]:
        channels, groups = _input_channels(layer, model), int(layer.config["groups"])
        if channels % groups or int(layer.config["filters"]) % groups:
            return "%d groups do not divide %d input channels and %s filters" % (
                groups, channels, layer.config["filters"])
        return None

    def emit(self, layer, ctx):
        filters, groups = int(layer.config["filters"]), int(layer.config["groups"])
        kh, kw = _pair(layer, "kernel_size")
        per_group = ctx.bottom(layer).shape[1] // groups
        # TF (kh, kw, in/groups, out) -> Caffe (out, in/groups, kh, kw)
        weight = LazyBlob((filters, per_group, kh, kw), blocks=lambda: hwcn_to_nchw_blocks(
            layer.array("kernel"), (kh, kw)))
        _emit_convolution(layer, ctx, filters, groups, weight)


@register("depthwise_conv2d")
class DepthwiseConv2D(Handler):
    config_keys = ("depth_multiplier",) + SPATIAL
    array_layouts = {"kernel": "(kh, kw, C, M)", "bias?": "(C·M)"}
    caffe_layers = Conv2D.caffe_layers
    summary = "Convolution with group = C, num_output = C*M (output c*M + m reads channel c)"

    def array_shapes(self, layer, model):
        channels, multiplier = _input_channels(layer, model), int(layer.config["depth_multiplier"])
        return {"kernel": tuple(_pair(layer, "kernel_size")) + (channels, multiplier),
                "bias": (channels * multiplier,)}

    def emit(self, layer, ctx):
        channels = ctx.bottom(layer).shape[1]
        multiplier = int(layer.config["depth_multiplier"])

        kh, kw = _pair(layer, "kernel_size")

        def depthwise_kernel():
            kernel = layer.array("kernel")
            return kernel.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None]

        weight = LazyBlob((channels * multiplier, 1, kh, kw), depthwise_kernel)

        _emit_convolution(layer, ctx, channels * multiplier, channels, weight)


@register("conv2d_transpose")
class Conv2DTranspose(Handler):
    config_keys = ("filters", "kernel_size", "strides", "padding")
    array_layouts = {"kernel": "(kh, kw, out, in)", "bias?": "(out)"}
    notes = ('padding "same" or "valid"; the output size is the layer\'s output shape, any that '
             "TensorFlow accepts (`ceil(out / s)` = in for \"same\", `ceil((out − k + 1) / s)` = in "
             'for "valid")')
    caffe_layers = ("Deconvolution", "Slice", "Silence", "Split")
    summary = ("Deconvolution; TensorFlow's output size (any it accepts) cut from Caffe's full one: "
               "pad = the smaller of the two overhangs, Slice off the rest")

    def array_shapes(self, layer, model):
        filters = int(layer.config["filters"])
        return {"kernel": tuple(_pair(layer, "kernel_size")) + (filters, _input_channels(layer, model)),
                "bias": (filters,)}

    def check(self, layer, model, profile) -> Optional[str]:
        if layer.config["padding"] not in ("same", "valid"):
            return "padding %r: only 'same' and 'valid' are supported" % (layer.config["padding"],)
        if _pair(layer, "dilation") != [1, 1]:
            return "dilated transposed convolution is not supported"
        sizes = model.layer(layer.inputs[0]).output_shape[1:3]
        outs = layer.output_shape[1:3]
        for size, kernel, stride, out in zip(sizes, _pair(layer, "kernel_size"), _pair(layer, "strides"), outs):
            windows = out if layer.config["padding"] == "same" else out - kernel + 1
            if -(-windows // stride) != size:
                return "output size %s does not belong to a %s input with strides %s ('%s')" % (
                    outs, sizes, _pair(layer, "strides"), layer.config["padding"])
        return None

    def emit(self, layer, ctx):
        batch, _, h, w = ctx.bottom(layer).shape
        kernels, strides = _pair(layer, "kernel_size"), _pair(layer, "strides")
        filters = int(layer.config["filters"])
        same = layer.config["padding"] == "same"
        # TensorFlow's output row o is row o + lead of the full transposed convolution, whose
        # size is (in-1)*s + k; 'same' leads by half of what the kernel overhangs the requested
        # output size. A kernel too short to reach TensorFlow's last (bias-only) rows is
        # zero-extended to `extent`. Caffe pads (crops) both sides alike: it crops the smaller
        # overhang, Slices cut the rest.
        extended, pads, cuts, caffe = [], [], [], []
        for size, kernel, stride, out in zip((h, w), kernels, strides, layer.output_shape[1:3]):
            lead = max((size - 1) * stride + kernel - out, 0) // 2 if same else 0
            extent = max(kernel, lead + out - (size - 1) * stride)
            full = (size - 1) * stride + extent
            pad = min(lead, full - lead - out)
            extended.append(extent)
            pads.append(pad)
            cuts.append((lead - pad, full - pad - lead - out))
            caffe.append(full - 2 * pad)

        def weight():
            kernel = layer.array("kernel").transpose(3, 2, 0, 1)  # (kh, kw, out, in) -> (in, out, kh, kw)
            zeros = [(0, 0), (0, 0)] + [(0, e - k) for e, k in zip(extended, kernels)]
            return np.pad(kernel, zeros, mode="constant")

        params = {"num_output": filters, "bias_term": layer.has("bias")}
        params.update(window_params(extended, strides, pads))
        chain = Chain(ctx, layer)
        chain.then("deconv", "Deconvolution", {"convolution_param": params},
                   [batch, filters] + caffe, _with_bias(layer, weight, filters))
        chain.crop(cuts)
        chain.produce()


@register("pad2d")
class Pad2D(Handler):
    config_keys = ("padding", "mode", "value")
    notes = 'padding [[t, b], [l, r]], mode "constant"'
    caffe_layers = ("Convolution", "Slice", "Silence", "Split")
    summary = ("zero padding as a per-channel 1x1 Convolution of ones (BVLC has no Pad layer) padding "
               "the larger side of each axis, then Slice off the surplus")

    def check(self, layer, model, profile) -> Optional[str]:
        if layer.config["mode"] != "constant":
            return "padding mode '%s' has no BVLC Caffe equivalent (only zero padding)" % (
                layer.config["mode"],)
        if float(layer.config["value"]) != 0.0:
            return "constant padding with value %g: only zero padding is supported" % (
                float(layer.config["value"]),)
        return None

    def emit(self, layer, ctx):
        n, channels, h, w = ctx.bottom(layer).shape
        (top, bottom), (left, right) = [[int(v) for v in pair] for pair in layer.config["padding"]]
        pads = [max(top, bottom), max(left, right)]
        params, ones = _channel_copy(channels, (1, 1), (1, 1), pads)
        chain = Chain(ctx, layer)
        chain.then("pad", "Convolution", params, [n, channels, h + 2 * pads[0], w + 2 * pads[1]], ones)
        chain.crop([(pads[0] - top, pads[0] - bottom), (pads[1] - left, pads[1] - right)])
        chain.produce()


@register("pad_channels")
class PadChannels(Handler):
    config_keys = ("padding", "value")
    notes = "padding [before, after] along the channel axis of an NHWC tensor"
    caffe_layers = ("Convolution",)
    summary = ("zero channels before and after: a 1x1 Convolution whose weights copy channel c to "
               "output channel before + c (BVLC has no Pad layer)")

    def check(self, layer, model, profile) -> Optional[str]:
        if len(layer.output_shape) != 4:
            return "channel padding of a %d-D tensor (only 4-D)" % len(layer.output_shape)
        if float(layer.config["value"]) != 0.0:
            return "constant padding with value %g: only zero padding is supported" % (
                float(layer.config["value"]),)
        return None

    def emit(self, layer, ctx):
        n, channels, h, w = ctx.bottom(layer).shape
        before, after = [int(v) for v in layer.config["padding"]]

        def placement():
            weights = np.zeros((before + channels + after, channels, 1, 1), np.float32)
            weights[before + np.arange(channels), np.arange(channels)] = 1.0
            return weights

        chain = Chain(ctx, layer)
        chain.then("pad", "Convolution", {"convolution_param": {
            "num_output": before + channels + after, "kernel_size": 1, "bias_term": False}},
            [n, before + channels + after, h, w], [placement])
        chain.produce()


@register("crop2d")
class Crop2D(Handler):
    config_keys = ("cropping",)
    notes = "cropping [[t, b], [l, r]]"
    caffe_layers = ("Slice", "Silence", "Split")
    summary = "Slice per cropped axis, cut-off parts silenced"

    def emit(self, layer, ctx):
        chain = Chain(ctx, layer)
        chain.crop([[int(v) for v in pair] for pair in layer.config["cropping"]])
        chain.produce()


@register("upsample2d")
class UpSample2D(Handler):
    config_keys = ("size", "interpolation")
    notes = 'interpolation "nearest" or "bilinear" (half-pixel centres, as Keras samples)'
    caffe_layers = ("Deconvolution",) + MATRIX_LAYERS
    summary = ("nearest: Deconvolution group = C, kernel = stride = factor, weights ones, no bias; "
               "bilinear: as resize_bilinear with half-pixel centres")

    def check(self, layer, model, profile) -> Optional[str]:
        if layer.config["interpolation"] not in ("nearest", "bilinear"):
            return "interpolation '%s' (only 'nearest' and 'bilinear')" % layer.config["interpolation"]
        return None

    def emit(self, layer, ctx):
        n, channels, h, w = ctx.bottom(layer).shape
        factors = _pair(layer, "size")
        if layer.config["interpolation"] == "bilinear":
            emit_bilinear(layer, ctx, [h * factors[0], w * factors[1]], "half_pixel")
            return
        params, ones = _channel_copy(channels, factors, factors, (0, 0))
        chain = Chain(ctx, layer)
        chain.then("upsample", "Deconvolution", params, [n, channels, h * factors[0], w * factors[1]], ones)
        chain.produce()
