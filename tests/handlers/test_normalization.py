"""BatchNormalization, LayerNormalization, Rescaling, Normalization and LRN, with random statistics."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from harness import assert_exact, convert_intermediate_batch
from handler_batch import batch_norm, chain, family_tests
from tf2caffe.intermediate import Layer, Model

L = keras.layers

IMAGE = (5, 6, 4)


def layer_norm(**options) -> keras.layers.LayerNormalization:
    """LayerNormalization with random gamma and beta (ones and zeros would hide them)."""
    init = keras.initializers
    return keras.layers.LayerNormalization(
        gamma_initializer=init.RandomNormal(1.0, 0.3), beta_initializer=init.RandomNormal(0.0, 0.3), **options)

CASES = {
    "bn_epsilon_1e-3": lambda: chain(IMAGE, batch_norm()),
    "bn_epsilon_1e-5": lambda: chain(IMAGE, batch_norm(epsilon=1e-5)),
    "bn_center_false": lambda: chain(IMAGE, batch_norm(center=False)),
    "bn_scale_false": lambda: chain(IMAGE, batch_norm(scale=False)),
    "bn_center_scale_false": lambda: chain(IMAGE, batch_norm(center=False, scale=False)),
    "conv_bn_relu": lambda: chain(IMAGE, L.Conv2D(6, 3, use_bias=False), batch_norm(), L.ReLU()),
    "dense_bn": lambda: chain((10,), L.Dense(6), batch_norm()),
    "flatten_bn_dense": lambda: chain((3, 4, 5), L.Flatten(), batch_norm(), L.Dense(4)),
    "rescale_scalar": lambda: chain(IMAGE, L.Rescaling(1.0 / 127.5, offset=-1.0)),
    "rescale_per_channel": lambda: chain((5, 6, 3), L.Rescaling([0.5, 2.0, -1.5], offset=[0.25, 0.0, -3.0])),
    "rescale_per_channel_scalar_offset": lambda: chain((5, 6, 3), L.Rescaling([0.5, 2.0, -1.5], offset=0.5)),
    "normalization_per_channel": lambda: chain(
        (5, 6, 3), L.Normalization(mean=[0.5, -1.0, 2.0], variance=[0.25, 4.0, 0.5])),
    "normalization_scalar": lambda: chain(IMAGE, L.Normalization(axis=None, mean=0.3, variance=2.0)),
    # |mean| >> std: subtracting before scaling is what keeps this exact.
    "normalization_large_mean": lambda: chain(
        (5, 6, 3), L.Rescaling(0.05, offset=100.0), L.Normalization(mean=[100.0] * 3, variance=[0.0025] * 3)),
    "layer_norm": lambda: chain(IMAGE, L.Conv2D(6, 1), layer_norm()),
    "layer_norm_epsilon_1e-3_no_center": lambda: chain(IMAGE, layer_norm(epsilon=1e-3, center=False)),
    "layer_norm_no_scale": lambda: chain(IMAGE, layer_norm(scale=False)),
    "layer_norm_vector": lambda: chain((10,), L.Dense(6), layer_norm()),
    # the mean over the features is order-free, gamma and beta are permuted to Caffe's order
    "flatten_layer_norm_dense": lambda: chain((3, 4, 5), L.Flatten(), layer_norm(), L.Dense(4)),
    # |mean| = 10·std over the channels. (Keras computes x·inv - mean·inv, which in float32 loses
    # about |mean|/std ulps: at 200·std TensorFlow itself is 2.5e-5 off; the composition centres
    # first and is closer to the float64 result than TensorFlow there.)
    "layer_norm_offset_mean": lambda: chain(IMAGE, L.Rescaling(0.5, offset=5.0), layer_norm()),
    "flatten_rescale_per_feature_dense": lambda: chain(
        (1, 2, 3), L.Flatten(), L.Rescaling(list(np.linspace(-2, 2, 6)), offset=0.5), L.Dense(3)),
}


def lrn_model(name, depth_radius, bias, alpha, beta, shape=(2, 5, 6, 7), seed=0) -> Model:
    """input -> LRN, TensorFlow's tf.nn.lrn as the reference (Keras has no LRN layer)."""
    x = np.random.RandomState(seed).standard_normal(shape).astype(np.float32) * 2
    y = tf.nn.lrn(x, depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta).numpy()
    config = dict(depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)
    layers = [Layer("input", "input", [], {"shape": list(shape)}, shape),
              Layer("lrn", "lrn", ["input"], config, shape)]
    return Model(name, layers, ["lrn"], {"source_framework": "tests"}, {"input": x},
                 {"input": x, "lrn": y})


# Nothing here is refused by the import stage.
results, test_exact, _ = family_tests(CASES, {}, "normalization")


LRN_CASES = {
    "lrn_bias_1": dict(depth_radius=2, bias=1.0, alpha=0.2, beta=0.75),
    "lrn_bias_2": dict(depth_radius=2, bias=2.0, alpha=0.3, beta=0.75),
    "lrn_radius_1_beta_0_5": dict(depth_radius=1, bias=0.5, alpha=0.1, beta=0.5),
    "lrn_window_wider_than_channels": dict(depth_radius=5, bias=1.5, alpha=0.05, beta=0.75),
}


@pytest.fixture(scope="module")
def lrn_results(tmp_path_factory):
    models = {name: lrn_model(name, **config) for name, config in LRN_CASES.items()}
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("lrn"))


@pytest.mark.parametrize("name", sorted(LRN_CASES))
def test_lrn_exact(lrn_results, name):
    assert_exact(lrn_results[name])
    # OpenCV ignores lrn_param.k, so the portable form always writes k = 1.
    assert "k: 1.0" in lrn_results[name].prototxt


