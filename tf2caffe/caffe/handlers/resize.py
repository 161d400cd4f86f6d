"""Bilinear and nearest resizing to any size, in TensorFlow's three samplings.

TensorFlow's bilinear resize is separable: along each axis, output i reads the input at
s(i) = (i + 0.5)·in/out - 0.5 (half_pixel: TF2's tf.image.resize, Keras's UpSampling2D),
i·(in - 1)/(out - 1) (align_corners, TF1) or i·in/out (asymmetric: TF1's default), and blends
its two neighbours floor(s) and ceil(s), both clamped into the axis. So each axis is a fixed
(out, in) matrix with at most two non-zeros a row, and in BVLC Caffe:
- H: a Convolution with a full-height (H, 1) kernel, group = C and C·out_h outputs (channel
  c·out_h + i holds row i of channel c), Reshape to (N, C, out_h, W);
- W: an InnerProduct over axis 3 (each row's W values), weights (out_w, W).
Each output is w0·a + w1·b plus zero terms: exact to float32 rounding. With align_corners and the
opencv profile one OpenCV Interp layer does both axes (PSPNet's resize samples the same way).
Nearest resizing is the same with one-hot rows: output i copies input floor(s(i)) (align_corners:
round(s(i))), clamped; an integer upsampling stays upsample2d's Deconvolution.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..netspec import shape_param
from . import Handler, register
from .chain import Chain

MODES = ("half_pixel", "align_corners", "asymmetric")


def interpolation_matrix(size_in: int, size_out: int, mode: str, nearest: bool = False) -> np.ndarray:
    """(size_out, size_in): output i = sum_k m[i, k]·input k along one axis, as TensorFlow samples
    (tensorflow/core/kernels/image/resize_bilinear_op.cc, resize_nearest_neighbor_op.cc)."""
    i = np.arange(size_out, dtype=np.float64)
    if mode == "align_corners":
        source = i * ((size_in - 1) / (size_out - 1)) if size_out > 1 else 0.0 * i
    elif mode == "half_pixel":
        # nearest samples at (i + 0.5)·scale, without the bilinear -0.5
        source = (i + 0.5) * (size_in / size_out) - (0.0 if nearest else 0.5)
    else:
        source = i * (size_in / size_out)
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    if nearest:
        picked = np.round(source) if mode == "align_corners" else np.floor(source)
        matrix[rows, np.clip(picked, 0, size_in - 1).astype(int)] = 1.0
        return matrix
    lower = np.floor(source)
    lerp = source - lower
    np.add.at(matrix, (rows, np.clip(lower, 0, size_in - 1).astype(int)), 1.0 - lerp)
    np.add.at(matrix, (rows, np.clip(np.ceil(source), 0, size_in - 1).astype(int)), lerp)
    return matrix


def uses_interp(mode: str, profile) -> bool:
    return mode == "align_corners" and profile.allows("Interp")


def emit_bilinear(layer, ctx, size: Sequence[int], mode: str, nearest: bool = False) -> None:
    """The Caffe layers resizing `layer`'s 4-D input to `size` (out_h, out_w) bilinearly (or by
    nearest neighbours)."""
    n, channels, h, w = ctx.bottom(layer).shape
    out_h, out_w = (int(d) for d in size)
    steps = Chain(ctx, layer)
    if uses_interp(mode, ctx.profile) and not nearest:
        steps.then("interp", "Interp", {"interp_param": {"height": out_h, "width": out_w}},
                   [n, channels, out_h, out_w])
        steps.produce()
        return
    rows, columns = (interpolation_matrix(size_in, size_out, mode, nearest)
                     for size_in, size_out in ((h, out_h), (w, out_w)))
    if not np.array_equal(rows, np.eye(h)):
        kernel = np.tile(rows.astype(np.float32), (channels, 1)).reshape(channels * out_h, 1, h, 1)
        steps.then("rows", "Convolution", {"convolution_param": {
            "num_output": channels * out_h, "group": channels, "kernel_h": h, "kernel_w": 1,
            "bias_term": False}}, [n, channels * out_h, 1, w], [kernel])
        steps.then("rows_reshape", "Reshape", {"reshape_param": {
            "shape": shape_param([0, channels, out_h, w])}}, [n, channels, out_h, w])
    if not np.array_equal(columns, np.eye(w)):
        steps.then("columns", "InnerProduct", {"inner_product_param": {
            "num_output": out_w, "axis": 3, "bias_term": False}}, [n, channels, out_h, out_w],
            [columns.astype(np.float32)])
    steps.produce()


# The Caffe layers of the interpolation matrices (Interp: only for align_corners).
MATRIX_LAYERS = ("Convolution", "Reshape", "InnerProduct")


@register("resize_bilinear")
class ResizeBilinear(Handler):
    config_keys = ("size", "mode")
    notes = ('size [out_h, out_w]; mode "half_pixel" (TF2, Keras), "align_corners" or "asymmetric" '
             "(TF1's legacy sampling)")
    summary = ("per axis a fixed interpolation matrix: H by a grouped full-height Convolution and a "
               "Reshape, W by an InnerProduct over axis 3; align_corners in the opencv profile: Interp")
    caffe_layers = MATRIX_LAYERS + ("Interp",)
    nearest = False

    def check(self, layer, model, profile) -> Optional[str]:
        if layer.config["mode"] not in MODES:
            return "mode '%s' (only %s)" % (layer.config["mode"], ", ".join(MODES))
        if len(model.layer(layer.inputs[0]).output_shape) != 4:
            return "only 4-D (NHWC) inputs are supported"
        return None

    def emit(self, layer, ctx):
        emit_bilinear(layer, ctx, layer.config["size"], layer.config["mode"], self.nearest)


@register("resize_nearest")
class ResizeNearest(ResizeBilinear):
    notes = ResizeBilinear.notes + "; to a size that is no integer multiple of the input"
    summary = ("per axis a one-hot interpolation matrix, as resize_bilinear's (an integer "
               "upsampling is upsample2d)")
    caffe_layers = MATRIX_LAYERS
    nearest = True
