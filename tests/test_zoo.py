"""Whole real architectures from keras.applications, converted in one batch and held to the
project's bar: logits within 1e-4 in pycaffe and OpenCV, every mapped layer within 1e-5.

Weights are random (nothing can be downloaded) and seeded. BatchNorm's moving statistics,
gamma, beta and every bias are randomised too: with Keras' initial values BatchNorm is the
identity and biases are zero, and a mapping that drops or misorders them would still pass.
Inputs are the smallest each architecture accepts, to keep the suite fast on two cores.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import keras
import numpy as np
import pytest

from harness import assert_exact, convert_keras_batch

# Keras' application architectures: the longest conversions of the suite.
pytestmark = pytest.mark.slow

A = keras.applications

# name -> (builder, input side): the minimum sizes are keras.applications' own checks.
ZOO: Dict[str, Tuple[Callable, int]] = {
    "vgg16": (A.VGG16, 32),
    "resnet50": (A.ResNet50, 32),
    "inception_v3": (A.InceptionV3, 75),
    "mobilenet": (A.MobileNet, 32),
    "mobilenet_v2": (A.MobileNetV2, 32),
    "densenet121": (A.DenseNet121, 32),
    "xception": (A.Xception, 71),
    "efficientnet_b0": (A.EfficientNetB0, 32),
}


def randomise_statistics(model: keras.Model, rng: np.random.Generator) -> None:
    """Moving mean ~ N(0, 0.1), moving variance ~ U(0.5, 1.5), gamma ~ U(0.5, 1.5),
    beta ~ N(0, 0.1) in every BatchNormalization; every bias ~ N(0, 0.1)."""
    draws = {
        "moving_mean": lambda shape: rng.normal(0.0, 0.1, shape),
        "moving_variance": lambda shape: rng.uniform(0.5, 1.5, shape),
        "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
        "beta": lambda shape: rng.normal(0.0, 0.1, shape),
        "bias": lambda shape: rng.normal(0.0, 0.1, shape),
    }
    for layer in model.layers:
        for variable in layer.weights:
            role = variable.path.rsplit("/", 1)[-1]
            if role in draws and (role == "bias" or isinstance(layer, keras.layers.BatchNormalization)):
                variable.assign(draws[role](tuple(variable.shape)).astype(np.float32))


def build_zoo_model(name: str, seed: int = 0) -> keras.Model:
    make, side = ZOO[name]
    keras.utils.set_random_seed(seed)
    model = make(weights=None, input_shape=(side, side, 3), classifier_activation=None)
    randomise_statistics(model, np.random.default_rng(seed))
    return model


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return convert_keras_batch({name: build_zoo_model(name) for name in ZOO},
                               tmp_path_factory.mktemp("zoo"))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_exact(results, name):
    assert results[name].per_layer or results[name].error, "%s: no per-layer errors reported" % name
    assert_exact(results[name])
