"""Activation handlers: every function and its awkward settings, exact in pycaffe and OpenCV."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from handler_batch import build, family_tests
from harness import assert_exact, convert_intermediate_batch, convert_keras_batch
from tf2caffe.intermediate import Layer, Model

L = keras.layers
SPREAD = 4.0  # widens the reference input so every kink (0, 6, max_value, ±3) is crossed


def on_image(activation, shape=(5, 6, 4)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, activation(L.Rescaling(SPREAD)(inputs)))


def on_vector(activation, features=12):
    inputs = keras.Input((features,))
    return keras.Model(inputs, activation(L.Dense(7)(inputs)))


CASES = {
    "relu": lambda: on_image(L.ReLU()),
    "relu_max_value_6": lambda: on_image(L.ReLU(max_value=6.0)),
    "relu_max_value_3_5": lambda: on_image(L.ReLU(max_value=3.5)),
    "relu_negative_slope": lambda: on_image(L.ReLU(negative_slope=0.1)),
    "relu_negative_slope_max_value": lambda: on_image(L.ReLU(negative_slope=0.1, max_value=4.0)),
    "relu6": lambda: on_image(L.Activation("relu6")),
    # Small activations (deep untrained nets): a clip that rounds values to ulp(6) fails here.
    "relu6_small_values": lambda: keras.Model(*(lambda x: (x, L.ReLU(max_value=6.0)(
        L.Rescaling(1e-3)(x))))(keras.Input((5, 6, 4)))),
    "leaky_relu": lambda: on_image(L.LeakyReLU(negative_slope=0.2)),
    "prelu_shared_hw": lambda: on_image(L.PReLU(
        alpha_initializer=keras.initializers.RandomUniform(-0.5, 0.5), shared_axes=[1, 2])),
    "prelu_vector": lambda: on_vector(L.PReLU(alpha_initializer=keras.initializers.RandomUniform(-0.5, 0.5))),
    "elu": lambda: on_image(L.Activation("elu")),
    "elu_alpha": lambda: on_image(L.ELU(alpha=0.7)),
    "selu": lambda: on_image(L.Activation("selu")),
    "softplus": lambda: on_image(L.Activation("softplus")),
    "softsign": lambda: on_image(L.Activation("softsign")),
    "sigmoid": lambda: on_image(L.Activation("sigmoid")),
    "tanh": lambda: on_image(L.Activation("tanh")),
    "softmax_axis_-1": lambda: on_image(L.Softmax(axis=-1)),
    "softmax_axis_3": lambda: on_image(L.Softmax(axis=3)),
    "softmax_axis_1": lambda: on_image(L.Softmax(axis=1)),
    "softmax_vector": lambda: on_vector(L.Softmax()),
    "swish": lambda: on_image(L.Activation("swish")),
    "mish": lambda: on_image(L.Activation("mish")),
    "hard_sigmoid": lambda: on_image(L.Activation("hard_sigmoid")),
    "hard_swish": lambda: on_image(L.Activation("hard_swish")),
    "gelu": lambda: on_image(L.Activation("gelu")),  # the erf form
    "gelu_small_values": lambda: keras.Model(*(lambda x: (x, L.Activation("gelu")(
        L.Rescaling(1e-3)(x))))(keras.Input((5, 6, 4)))),
    "gelu_large_values": lambda: keras.Model(*(lambda x: (x, L.Activation("gelu")(
        L.Rescaling(20.0)(x))))(keras.Input((5, 6, 4)))),
    "gelu_tanh": lambda: on_image(lambda x: keras.ops.gelu(x, approximate=True)),
    "linear": lambda: on_image(L.Activation("linear")),
    "dense_fused_tanh": lambda: on_vector(lambda x: L.Dense(5, activation="tanh")(x)),
}
REFUSED = {
    "relu_threshold": (lambda: on_image(L.ReLU(threshold=0.5, name="thresholded")),
                       "thresholded", "threshold"),
    "prelu_unshared": (lambda: on_image(L.PReLU(
        alpha_initializer=keras.initializers.RandomUniform(-0.5, 0.5), name="prelu_hwc")),
                       "prelu_hwc", "vary over H or W"),
}
# Emitted for the opencv profile as single layers: verified in each runtime that has the layer
# (the source-built Caffe has ReLU6, bullseye's Swish, OpenCV both).
OPENCV_PROFILE = {
    "relu6": ("ReLU6", CASES["relu6"]),
    "relu_max_value_6": ("ReLU6", CASES["relu_max_value_6"]),
    "swish": ("Swish", CASES["swish"]),
    "mish": ("Mish", CASES["mish"]),
    "hard_sigmoid": ("ReLU6", CASES["hard_sigmoid"]),
    "hard_swish": ("HardSwish", CASES["hard_swish"]),
    "gelu": ("Gelu", CASES["gelu"]),
    "gelu_large_values": ("Gelu", CASES["gelu_large_values"]),
}


results, test_exact, test_refused = family_tests(CASES, REFUSED, "activation")


def test_gelu_composed_from_bvlc_layers(results):
    """erf by Abramowitz-Stegun from AbsVal, Power, Exp and Eltwise; no TanH (the tanh form)."""
    types = set(results["gelu"].caffe_types)
    assert {"AbsVal", "Power", "Exp", "Eltwise"} <= types and "TanH" not in types, types


def test_relu6_composed_from_bvlc_layers(results):
    types = results["relu6"].caffe_types
    assert "ReLU6" not in types and types.count("ReLU") == 2 and types.count("Power") >= 2


@pytest.fixture(scope="module")
def opencv_profile_results(tmp_path_factory):
    return convert_keras_batch(build({name: make for name, (_, make) in OPENCV_PROFILE.items()}),
                               tmp_path_factory.mktemp("activation_opencv"), profile="opencv")


@pytest.mark.parametrize("name", sorted(OPENCV_PROFILE))
def test_opencv_profile(opencv_profile_results, name):
    result = opencv_profile_results[name]
    assert_exact(result)
    assert OPENCV_PROFILE[name][0] in result.caffe_types


def keras2_hard_sigmoid() -> Model:
    """Keras 2's hard_sigmoid, clip(0.2·x + 0.5, 0, 1), as an intermediate model with a numpy
    reference (Keras 3, which the exporter runs, has slope 1/6)."""
    shape = [3, 5, 6, 4]
    x = (SPREAD * np.random.RandomState(0).standard_normal(shape)).astype(np.float32)
    y = np.clip(np.float32(0.2) * x + np.float32(0.5), 0, 1)
    layers = [Layer("input", "input", [], {"shape": [None] + shape[1:]}, shape),
              Layer("hard", "activation", ["input"], {"function": "hard_sigmoid", "slope": 0.2, "offset": 0.5},
                    shape)]
    return Model("keras2_hard_sigmoid", layers, ["hard"], {
        "source_framework": "numpy", "source_version": "test", "tensorflow_version": "none",
        "source_path": "numpy", "created_by": "tests"}, {"input": x}, {"input": x, "hard": y})


@pytest.mark.parametrize("profile, caffe_types", [("opencv", ["HardSigmoid"]), ("bvlc", ["Power", "ReLU"])])
def test_keras2_hard_sigmoid(tmp_path, profile, caffe_types):
    """OpenCV's own HardSigmoid where the profile has it, else the BVLC composition; exact in every
    runtime that has the layers."""
    result = convert_intermediate_batch({"hard": keras2_hard_sigmoid()}, tmp_path, profile=profile)["hard"]
    assert_exact(result)
    prototxt = result.prototxt
    assert all('type: "%s"' % kind in prototxt for kind in caffe_types), prototxt
    assert ("HardSigmoid" in prototxt) == (profile == "opencv")
