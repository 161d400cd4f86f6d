"""OpenCV as deployed: the layer-fusion patterns of OpenCV 4.x at model outputs and branch points.

OpenCV fuses an activation, BatchNorm/Scale or Eltwise into the convolution before it, and a
convolution into the Concat after it, unless the fused layers' blobs are fetched. Each case here
has an output that is such a fused layer's result and also feeds another layer. Every case is
verified by tf2caffe (assert_exact: its OpenCV run as deployed included) and here once more as
a user runs it: default settings, `net.forward(<the TF output names>)`, against TensorFlow.
Before the Split that emit.deployable_outputs puts after a shared output, the activation cases
feeding a Concat came back from OpenCV 4.14 as garbage (sigmoid ~1e35, relu NaN, BN + ReLU 0.83).
"""
import cv2
import keras
import numpy as np
import pytest

from harness import assert_exact
from handlers.handler_batch import batch_norm, convert
from tf2caffe import intermediate
from tf2caffe.measure import relative_error

L = keras.layers


def conv(name=None, activation=None):
    return L.Conv2D(4, 3, padding="same", activation=activation, name=name)


def head(x):
    return L.Conv2D(2, 1, name="head")(x)


def activation_into_concat(function):
    def make():
        x = keras.Input((8, 8, 3))
        out = conv("out", function)(x)
        return keras.Model(x, [out, head(L.Concatenate()([out, conv()(x)]))])
    return make


def bn_relu_into_concat():
    x = keras.Input((8, 8, 3))
    out = L.ReLU(name="out")(batch_norm()(conv()(x)))
    return keras.Model(x, [out, head(L.Concatenate()([out, conv()(x)]))])


def activation_into_conv():
    x = keras.Input((8, 8, 3))
    out = conv("out", "relu")(x)
    return keras.Model(x, [out, head(out)])


def batch_norm_into_conv():
    x = keras.Input((8, 8, 3))
    out = batch_norm(name="out")(conv()(x))
    return keras.Model(x, [out, head(out)])


def conv_before_batch_norm():
    x = keras.Input((8, 8, 3))
    out = conv("out")(x)
    return keras.Model(x, [out, head(L.ReLU()(batch_norm()(out)))])


def eltwise_into_conv():
    x = keras.Input((8, 8, 3))
    a = conv()(x)
    out = L.Add(name="out")([a, conv()(a)])
    return keras.Model(x, [out, head(out)])


def conv_into_eltwise():
    x = keras.Input((8, 8, 3))
    a = conv()(x)
    out = conv("out")(a)
    return keras.Model(x, [out, head(L.ReLU()(L.Add()([a, out])))])


def eltwise_relu_into_concat():
    x = keras.Input((8, 8, 3))
    a = conv()(x)
    out = L.ReLU(name="out")(L.Add()([a, conv()(a)]))
    return keras.Model(x, [out, head(L.Concatenate()([out, a]))])


def concat_is_an_output():
    x = keras.Input((8, 8, 3))
    out = conv("out", "tanh")(x)
    return keras.Model(x, [out, L.Concatenate(name="cat")([conv()(x), out])])


def probabilities_read_further():
    x = keras.Input((8,))
    probs = L.Dense(6, activation="softmax", name="probs")(x)
    return keras.Model(x, [probs, L.Dense(2, name="head")(probs)])


CASES = {
    "sigmoid_into_concat": activation_into_concat("sigmoid"),
    "relu_into_concat": activation_into_concat("relu"),
    "tanh_into_concat": activation_into_concat("tanh"),
    "bn_relu_into_concat": bn_relu_into_concat,
    "activation_into_conv": activation_into_conv,
    "batch_norm_into_conv": batch_norm_into_conv,
    "conv_before_batch_norm": conv_before_batch_norm,
    "eltwise_into_conv": eltwise_into_conv,
    "conv_into_eltwise": conv_into_eltwise,
    "eltwise_relu_into_concat": eltwise_relu_into_concat,
    "concat_is_an_output": concat_is_an_output,
    "probabilities_read_further": probabilities_read_further,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return convert(CASES, tmp_path_factory.mktemp("deployed"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_verified_as_deployed(results, name):
    assert_exact(results[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_opencv_default_settings_by_output_name(results, name):
    result = results[name]
    assert result.error is None, result.error
    model = intermediate.read(str(result.h5))
    try:
        (tf_input,) = model.inputs
        x = model.reference_input(tf_input)
        net = cv2.dnn.readNetFromCaffe(result.files["prototxt"], result.files["caffemodel"])
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))
        names = model.output_names()
        assert "head" in names or "cat" in names or "probs" in names
        for tf_name, layer, value in zip(names, model.outputs, net.forward(names)):
            expected = model.activation(layer)
            expected = expected.transpose(0, 3, 1, 2) if expected.ndim == 4 else expected
            assert relative_error(np.asarray(value).reshape(expected.shape), expected) <= 1e-5, (name, tf_name)
    finally:
        model.file.close()
