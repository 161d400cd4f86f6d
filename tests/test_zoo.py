"""All 40 image classifiers of keras.applications, converted and held to the project's bar:
logits within 1e-4 in pycaffe and OpenCV, every mapped layer within 1e-5.

Weights are random (nothing can be downloaded), seeded and conditioned like trained ones
(`condition_keras_model`: kernels at unit gain, BatchNorm statistics near their inputs', random
gamma/beta, LayerScale and biases): with Keras' initial values BatchNorm is the identity, biases
are zero and ConvNeXt's LayerScale of 1e-6 makes every block the identity, so a mapping that
drops or misorders them would still pass. The export also runs the same weights in float64 (each
layer's float64 twin), and Caffe is judged against that truth (measure.within): in deep nets,
TensorFlow's own float32 output can be further from it than the per-layer bar. Inputs are the
smallest each architecture accepts.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Tuple

import keras
import pytest

from harness import assert_exact, convert_keras_batch
from tf2caffe.export.conditioned import condition_keras_model

# Keras' application architectures: the longest conversions of the suite.
pytestmark = pytest.mark.slow

A = keras.applications
SEED = 0

# name -> (builder, input side): the minimum sizes are keras.applications' own checks.
ZOO: Dict[str, Tuple[Callable, int]] = {
    "convnext_tiny": (A.ConvNeXtTiny, 32),
    "convnext_small": (A.ConvNeXtSmall, 32),
    "convnext_base": (A.ConvNeXtBase, 32),
    "convnext_large": (A.ConvNeXtLarge, 32),
    "convnext_xlarge": (A.ConvNeXtXLarge, 32),
    "densenet121": (A.DenseNet121, 32),
    "densenet169": (A.DenseNet169, 32),
    "densenet201": (A.DenseNet201, 32),
    "efficientnet_b0": (A.EfficientNetB0, 32),
    "efficientnet_b1": (A.EfficientNetB1, 32),
    "efficientnet_b2": (A.EfficientNetB2, 32),
    "efficientnet_b3": (A.EfficientNetB3, 32),
    "efficientnet_b4": (A.EfficientNetB4, 32),
    "efficientnet_b5": (A.EfficientNetB5, 32),
    "efficientnet_b6": (A.EfficientNetB6, 32),
    "efficientnet_b7": (A.EfficientNetB7, 32),
    "efficientnet_v2_b0": (A.EfficientNetV2B0, 32),
    "efficientnet_v2_b1": (A.EfficientNetV2B1, 32),
    "efficientnet_v2_b2": (A.EfficientNetV2B2, 32),
    "efficientnet_v2_b3": (A.EfficientNetV2B3, 32),
    "efficientnet_v2_s": (A.EfficientNetV2S, 32),
    "efficientnet_v2_m": (A.EfficientNetV2M, 32),
    "efficientnet_v2_l": (A.EfficientNetV2L, 32),
    "inception_resnet_v2": (A.InceptionResNetV2, 75),
    "inception_v3": (A.InceptionV3, 75),
    "mobilenet": (A.MobileNet, 32),
    "mobilenet_v2": (A.MobileNetV2, 32),
    "mobilenet_v3_large": (A.MobileNetV3Large, 32),
    "mobilenet_v3_small": (A.MobileNetV3Small, 32),
    "nasnet_large": (A.NASNetLarge, 32),
    "nasnet_mobile": (A.NASNetMobile, 32),
    "resnet50": (A.ResNet50, 32),
    "resnet101": (A.ResNet101, 32),
    "resnet152": (A.ResNet152, 32),
    "resnet50_v2": (A.ResNet50V2, 32),
    "resnet101_v2": (A.ResNet101V2, 32),
    "resnet152_v2": (A.ResNet152V2, 32),
    "vgg16": (A.VGG16, 32),
    "vgg19": (A.VGG19, 32),
    "xception": (A.Xception, 71),
}
# What `make test` (CI) converts, twice (once written by each Caffe): one of each family and
# every construct the others add (hard-swish, CustomScaleLayer, LayerNorm/GELU/LayerScale).
# The rest are marked full_zoo: `make test-zoo` runs all 40 (~40 min on 2 cores).
IN_CI = {"vgg16", "resnet50", "inception_v3", "inception_resnet_v2", "mobilenet", "mobilenet_v2",
         "mobilenet_v3_large", "densenet121", "xception", "efficientnet_b0", "convnext_tiny"}
# Converted together (one Caffe subprocess each): groups keep the weights held at once small,
# and a CI run converts none of the others.
BATCHES = [batch for prefix in (
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge", "densenet",
    "efficientnet_b", "efficientnet_v2", "inception", "mobilenet", "nasnet", "resnet", "vgg", "xception")
    for in_ci in (True, False)
    for batch in [[name for name in ZOO if name.startswith(prefix) and (name in IN_CI) == in_ci]] if batch]
assert sorted(sum(BATCHES, [])) == sorted(ZOO)



def conditioned_zoo_model(name: str) -> keras.Model:
    make, side = ZOO[name]
    keras.utils.set_random_seed(SEED)
    model = make(weights=None, input_shape=(side, side, 3), classifier_activation=None)
    condition_keras_model(model, SEED)
    return model


class Converted:
    def __init__(self, result, seconds):
        self.result, self.seconds = result, seconds


class Zoo:
    """Converts a model's batch on first use, so that `-k name` converts only that batch."""

    def __init__(self, folder):
        self.folder = folder
        self.converted: Dict[str, Converted] = {}

    def __getitem__(self, name: str) -> Converted:
        if name not in self.converted:
            batch = next(batch for batch in BATCHES if name in batch)
            started = time.time()
            models = {member: conditioned_zoo_model(member) for member in batch}
            done = convert_keras_batch(models, self.folder / batch[0])
            seconds = (time.time() - started) / len(batch)
            self.converted.update({member: Converted(done[member], seconds)
                                   for member in batch})
            del models
            keras.backend.clear_session()
        return self.converted[name]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return Zoo(tmp_path_factory.mktemp("zoo"))


def _case(name):
    return pytest.param(name, marks=[] if name in IN_CI else [pytest.mark.full_zoo], id=name)


@pytest.mark.parametrize("name", [_case(name) for name in ZOO])
def test_exact(results, name):
    result = results[name].result
    assert result.per_layer or result.error, "%s: no per-layer errors reported" % name
    truth = result.float64.get(result.verified_with, {})
    assert all(layer in truth for layer in result.runtimes.get(result.verified_with, {})), (
        "%s: the export computed no float64 truth" % name)
    assert_exact(result)
