"""Convolution family (conv2d, depthwise, separable, transposed, zero padding, cropping, nearest
upsampling): every awkward geometry exact in pycaffe and OpenCV."""
from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import assert_exact, convert_intermediate_batch
from handler_batch import chain, convert, family_tests
from tf2caffe import intermediate
from tf2caffe.export.keras import model_to_intermediate

L = keras.layers
CHANNELS = 8
# H != W with one even and one odd side: 'same' padding is odd on one axis and even on the
# other in the same layer. The second size has a 7-row side (k=2, s=3: Caffe pad 3 > kernel).
SIZES = ((16, 15), (7, 10))


def image(*layers, size=SIZES[0]):
    return chain(tuple(size) + (CHANNELS,), *layers)


def conv_case(kernel, stride, padding, size):
    return lambda: image(L.Conv2D(12, kernel, strides=stride, padding=padding), size=size)


CASES = {
    "conv_k%d_s%d_%s_%dx%d" % (k, s, padding, h, w): conv_case(k, s, padding, (h, w))
    for k, s, padding, (h, w) in itertools.product((1, 2, 3, 4, 5, 7), (1, 2, 3), ("same", "valid"), SIZES)
    if padding == "same" or (h, w) == SIZES[0]
}
CASES.update({
    "conv_dilation2_same": lambda: image(L.Conv2D(12, 3, dilation_rate=2, padding="same")),
    "conv_dilation2_k4_same": lambda: image(L.Conv2D(12, 4, dilation_rate=2, padding="same")),
    "conv_dilation_2x3_valid": lambda: image(L.Conv2D(12, 3, dilation_rate=(2, 3), padding="valid")),
    "conv_kernel_3x5_strides_2x1": lambda: image(L.Conv2D(12, (3, 5), strides=(2, 1), padding="same")),
    "conv_no_bias": lambda: image(L.Conv2D(12, 3, strides=2, padding="same", use_bias=False)),
    "conv_groups2": lambda: image(L.Conv2D(12, 3, strides=2, padding="same", groups=2)),
    "conv_fused_relu": lambda: image(L.Conv2D(12, 3, strides=2, padding="same", activation="relu")),
    "conv_stack_s2": lambda: image(L.Conv2D(12, 3, strides=2, padding="same", activation="relu"),
                                   L.Conv2D(16, 3, strides=2, padding="same"), size=(32, 29)),
    "depthwise_m1_s1": lambda: image(L.DepthwiseConv2D(3, padding="same")),
    "depthwise_m2_s1": lambda: image(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
    "depthwise_m1_s2": lambda: image(L.DepthwiseConv2D(3, strides=2, padding="same")),
    "depthwise_m2_s2": lambda: image(L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same")),
    "depthwise_m2_s2_valid_no_bias": lambda: image(L.DepthwiseConv2D(
        3, strides=2, depth_multiplier=2, padding="valid", use_bias=False)),
    "separable_s1": lambda: image(L.SeparableConv2D(12, 3, padding="same")),
    "separable_m2_s2_relu": lambda: image(L.SeparableConv2D(
        12, 3, strides=2, depth_multiplier=2, padding="same", activation="relu")),
    "transpose_k1_s2_valid": lambda: image(L.Conv2DTranspose(6, 1, strides=2, padding="valid")),
    "transpose_k3_s4_same": lambda: image(L.Conv2DTranspose(6, 3, strides=4, padding="same"),
                                          size=(7, 6)),
    "transpose_k4_s2_same_no_bias": lambda: image(L.Conv2DTranspose(
        6, 4, strides=2, padding="same", use_bias=False)),
    "pad_sym_conv": lambda: image(L.ZeroPadding2D(2), L.Conv2D(12, 5, strides=2)),
    "pad_asym_conv": lambda: image(L.ZeroPadding2D(((0, 1), (0, 1))), L.Conv2D(12, 3, strides=2)),
    "pad_asym_depthwise": lambda: image(L.ZeroPadding2D(((1, 2), (3, 0))),
                                        L.DepthwiseConv2D(3, strides=2)),
    "pad_sym_max_pool": lambda: image(L.ZeroPadding2D(1), L.MaxPooling2D(3, strides=2)),
    "pad_asym_max_pool": lambda: image(L.ZeroPadding2D(((1, 0), (2, 1))), L.MaxPooling2D(2)),
    # TensorFlow averages the zeros ZeroPadding2D adds as real cells: no divisor correction.
    "pad_asym_avg_pool": lambda: image(L.ZeroPadding2D(((1, 0), (2, 1))), L.AveragePooling2D(3, strides=2)),
    "crop_sym": lambda: image(L.Cropping2D(2)),
    "crop_asym": lambda: image(L.Cropping2D(((1, 3), (0, 2)))),
    "crop_leading_only": lambda: image(L.Cropping2D(((2, 0), (1, 0)))),
    "crop_trailing_only": lambda: image(L.Cropping2D(((0, 2), (0, 1)))),
    "crop_rows_then_conv": lambda: image(L.Cropping2D(((1, 0), (0, 0))), L.Conv2D(12, 3)),
    "upsample_x2": lambda: image(L.UpSampling2D(2), size=(7, 8)),
    "upsample_2x3": lambda: image(L.UpSampling2D((2, 3)), size=(7, 8)),
    "upsample_then_conv": lambda: image(L.UpSampling2D(2), L.Conv2D(12, 3, padding="same"), size=(7, 8)),
    "upsample_bilinear": lambda: image(L.UpSampling2D(2, interpolation="bilinear"), size=(7, 8)),
    "upsample_bilinear_2x3": lambda: image(L.UpSampling2D((2, 3), interpolation="bilinear"), size=(7, 8)),
    "resizing_bilinear": lambda: image(L.Resizing(11, 19), size=(7, 8)),
    "resizing_bilinear_down": lambda: image(L.Resizing(4, 5), size=(7, 8)),
    "resizing_nearest": lambda: image(L.Resizing(11, 19, interpolation="nearest"), size=(7, 8)),
})
CASES.update({
    "transpose_k%d_s%d_%s" % (k, s, padding): (
        lambda k=k, s=s, padding=padding: image(L.Conv2DTranspose(6, k, strides=s, padding=padding),
                                                size=(7, 8)))
    for k, s, padding in itertools.product((2, 3, 4), (1, 2), ("same", "valid"))
})
REFUSED = {}

results, test_exact, test_refused = family_tests(CASES, REFUSED, "conv")

# Explicit [[top, bottom], [left, right]] conv padding (tf.nn.conv2d; no Keras layer has it):
# begin > end, end > begin by more than the stride, and stride 1.
EXPLICIT = {
    "explicit_0_1_0_1_s2": (((0, 1), (0, 1)), 2),
    "explicit_3_0_2_5_s2": (((3, 0), (2, 5)), 2),
    "explicit_0_2_1_0_s1": (((0, 2), (1, 0)), 1),
}


def explicit_padding_model(name, pads, stride) -> intermediate.Model:
    """ZeroPadding2D + a 'valid' Conv2D, exported, with the padding folded into the convolution
    as explicit padding: the same function, so TensorFlow's reference stays valid."""
    keras.utils.set_random_seed(0)
    model = model_to_intermediate(image(L.ZeroPadding2D(pads), L.Conv2D(12, 3, strides=stride)), name,
                                  per_layer=True)
    pad, conv = model.layers[1:3]
    assert (pad.type, conv.type) == ("pad2d", "conv2d")
    conv.config["padding"], conv.inputs = pad.config["padding"], pad.inputs
    activations = {layer: value for layer, value in model.reference_activations.items() if layer != pad.name}
    return intermediate.Model(name, [layer for layer in model.layers if layer is not pad], model.outputs,
                              model.attrs, model.reference_inputs, activations)


@pytest.fixture(scope="module")
def explicit_results(tmp_path_factory):
    models = {name: explicit_padding_model(name, *case) for name, case in EXPLICIT.items()}
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("conv_explicit"))


@pytest.mark.parametrize("name", sorted(EXPLICIT))
def test_explicit_padding_exact(explicit_results, name):
    assert_exact(explicit_results[name])


def test_odd_same_padding_is_cropped_not_shifted(results):
    """Stride 2 on an even side: pad begin + stride, then Slice off the first row."""
    prototxt = results["conv_k3_s2_same_16x15"].prototxt
    assert "pad_h: 2" in prototxt and "pad_w: 1" in prototxt
    assert prototxt.count('type: "Slice"') == 1 and "slice_point: 1" in prototxt


def test_only_bvlc_layers(results):
    # Reshape and InnerProduct: bilinear upsampling's per-axis interpolation matrices
    allowed = {"Input", "Convolution", "Deconvolution", "Slice", "Silence", "Split", "Pooling", "ReLU",
               "Reshape", "InnerProduct"}
    for name in CASES:
        assert set(results[name].caffe_types) <= allowed, (name, results[name].caffe_types)


# OpenCV 4.x runs a convolution with group == channels == num_output, a 3x3 kernel and pads <= 1
# through its own 3x3 depthwise kernel, which reads past an axis of ONE pixel (errors ~1 or
# garbage; pycaffe is exact). The last blocks of MobileNet(V2)/EfficientNet at 32x32 are 1x1.
SINGLE_PIXEL = {
    "depthwise_k3_s1_1x1": lambda: chain((1, 1, CHANNELS), L.DepthwiseConv2D(3, padding="same")),
    "depthwise_k3_s2_1x1": lambda: chain((1, 1, CHANNELS), L.DepthwiseConv2D(3, strides=2, padding="same")),
    "depthwise_k3_s1_1x6": lambda: chain((1, 6, CHANNELS), L.DepthwiseConv2D(3, padding="same")),
    "depthwise_k3_s2_5x1": lambda: chain((5, 1, CHANNELS), L.DepthwiseConv2D(3, strides=2, padding="same")),
    "depthwise_k3_dilation2_1x6": lambda: chain((1, 6, CHANNELS), L.DepthwiseConv2D(
        3, dilation_rate=2, padding="same")),
    "grouped_per_channel_k3_1x1": lambda: chain((1, 1, CHANNELS), L.Conv2D(CHANNELS, 3, padding="same",
                                                                          groups=CHANNELS)),
}


@pytest.fixture(scope="module")
def single_pixel_results(tmp_path_factory):
    return convert(SINGLE_PIXEL, tmp_path_factory.mktemp("conv_single_pixel"))


@pytest.mark.parametrize("name", sorted(SINGLE_PIXEL))
def test_depthwise_on_a_single_pixel_axis_exact_in_opencv(single_pixel_results, name):
    assert_exact(single_pixel_results[name])


# Layers no Keras layer exports, written by hand with TensorFlow's own reference:
# tf.nn.conv2d_transpose of every output size TensorFlow accepts for an input (tflearn's
# upscore_layer asks for (in - 1)·s + 1), and zero padding of the channel axis (tflearn's
# residual blocks widen their shortcut with tf.pad).
TRANSPOSED = {  # name -> (input size, kernel, stride, padding, output size)
    "transpose_same_k4_s2_short": ((5, 6), (4, 4), (2, 2), "same", (9, 11)),
    "transpose_same_k3_s3_shortest": ((4, 5), (3, 3), (3, 3), "same", (10, 13)),
    "transpose_same_k1_s2_short": ((4, 5), (1, 1), (2, 2), "same", (7, 9)),
    "transpose_valid_k3_s2_long": ((5, 6), (3, 3), (2, 2), "valid", (12, 14)),
    "transpose_valid_k2_s3_long": ((4, 5), (2, 2), (3, 3), "valid", (12, 14)),
}
PAD_CHANNELS = {"pad_channels_2_2": (2, 2), "pad_channels_0_3": (0, 3), "pad_channels_1_0": (1, 0)}


def _by_hand(name, x, layer: intermediate.Layer, y) -> intermediate.Model:
    shape = list(x.shape)
    layers = [intermediate.Layer("input", "input", [], {"shape": [None] + shape[1:]}, shape), layer]
    return intermediate.Model(name, layers, [layer.name], {
        "source_framework": "tensorflow", "source_version": "test", "tensorflow_version": "test",
        "source_path": "tests", "created_by": "tests"}, {"input": x},
        {"input": x, layer.name: np.asarray(y, np.float32)})


def transposed_model(name, size, kernel, stride, padding, out) -> intermediate.Model:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + size + (3,)).astype(np.float32)
    weights = rng.standard_normal(kernel + (5, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    y = tf.nn.conv2d_transpose(x, weights, (2,) + out + (5,), stride, padding.upper()) + bias
    layer = intermediate.Layer("deconv", "conv2d_transpose", ["input"], {
        "filters": 5, "kernel_size": list(kernel), "strides": list(stride), "padding": padding},
        list(y.shape), {"kernel": weights, "bias": bias})
    return _by_hand(name, x, layer, y)


def pad_channels_model(name, before, after) -> intermediate.Model:
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
    y = np.pad(x, [(0, 0), (0, 0), (0, 0), (before, after)])
    return _by_hand(name, x, intermediate.Layer("pad", "pad_channels", ["input"], {
        "padding": [before, after], "value": 0.0}, list(y.shape)), y)


@pytest.fixture(scope="module")
def by_hand_results(tmp_path_factory):
    models = {name: transposed_model(name, *case) for name, case in TRANSPOSED.items()}
    models.update({name: pad_channels_model(name, *case) for name, case in PAD_CHANNELS.items()})
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("conv_by_hand"))


@pytest.mark.parametrize("name", sorted(TRANSPOSED) + sorted(PAD_CHANNELS))
def test_by_hand_exact(by_hand_results, name):
    assert_exact(by_hand_results[name])


def test_transposed_output_size_tensorflow_would_refuse_is_refused(tmp_path):
    model = transposed_model("transpose_wrong_size", (5, 6), (3, 3), (2, 2), "same", (10, 12))
    model.layers[1].output_shape = [2, 12, 12, 5]
    model.reference_activations["deconv"] = np.random.default_rng(0).random((2, 12, 12, 5), np.float32)
    result = convert_intermediate_batch({"wrong": model}, tmp_path)["wrong"]
    assert result.error is not None and "'deconv'" in result.error
    assert "output size [12, 12] does not belong to a [5, 6] input" in result.error
