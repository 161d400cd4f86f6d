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
import numpy as np
import pytest

from zoo_batches import BATCHES, batch_of
from harness import assert_exact, convert_h5_batch, convert_intermediate_batch, convert_keras_batch
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
            batch = batch_of(name)
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


@pytest.mark.parametrize("name", list(ZOO))
def test_exact(results, name):
    result = results[name].result
    assert result.per_layer or result.error, "%s: no per-layer errors reported" % name
    truth = result.float64.get(result.verified_with, {})
    assert all(layer in truth for layer in result.runtimes.get(result.verified_with, {})), (
        "%s: the export computed no float64 truth" % name)
    assert_exact(result)


@pytest.mark.parametrize("name", [name for name in ZOO if name.startswith("convnext")])
def test_convnext_in_the_opencv_profile(results, name):
    """The same export imported with --profile opencv: GELU as OpenCV's own Gelu layer (bvlc
    composes it from erf's polynomial), so written natively and verified in OpenCV alone."""
    exported = results[name].result.h5
    result = convert_h5_batch({name: exported}, exported.parent / "opencv" / name, profile="opencv")[name]
    assert "Gelu" in result.caffe_types and list(result.runtimes) == ["OpenCV"], result
    assert_exact(result)


# A value this large keeps about OFFSET · 2^-24 ≈ 6e-4 of absolute precision in float32.
OFFSET = 1e4


def ill_conditioned_efficientnet_v2_s() -> keras.Model:
    """EfficientNetV2S, conditioned, then ill-conditioned as trained nets can be: top_bn adds
    OFFSET to channel 0 (its SiLU then passes the channel on unchanged, plus OFFSET) and the
    classifier's bias removes OFFSET times that channel's weights again, so its logits of order
    one are the difference of terms of order 1e4. The last layer: nothing amplifies the
    rounding further (inside the net, EfficientNetV2's SE blocks amplify a perturbation until
    float32 carries no digit of the logits, and no comparison can mean anything)."""
    model = conditioned_zoo_model("efficientnet_v2_s")
    top_bn, predictions = model.get_layer("top_bn"), model.get_layer("predictions")
    top_bn.beta.assign(np.asarray(top_bn.beta) + np.eye(top_bn.beta.shape[0], dtype=np.float32)[0] * OFFSET)
    kernel, bias = predictions.get_weights()
    predictions.set_weights([kernel, bias - OFFSET * kernel[0]])
    return model


def test_an_ill_conditioned_classifier_is_judged_against_the_float64_truth(tmp_path):
    """The float64 verdict on a whole classifier: TensorFlow float32 lands over the bar from the
    float64 truth, and so does a correct Caffe net, in each runtime; it is verified because it
    is no further from the truth than TensorFlow itself (measure.within), the report giving
    both distances. A wrong weight (the classifier's bias 1 % of the logits off) still fails."""
    from tf2caffe.export.keras import model_to_intermediate

    model = ill_conditioned_efficientnet_v2_s()
    exported = {name: model_to_intermediate(model, name, per_layer=True, seed=SEED) for name in ("correct", "wrong")}
    wrong = exported["wrong"].layer("predictions")
    wrong.arrays["bias"] = np.asarray(wrong.arrays["bias"]) + 1e-2 * np.abs(exported["wrong"].activation("predictions")).max()
    results = convert_intermediate_batch(exported, tmp_path)
    correct = results["correct"]
    assert_exact(correct)
    for runtime, errors in correct.runtimes.items():
        distances = correct.float64[runtime]["predictions"]
        assert errors["predictions"] > 1e-4 and distances["tensorflow"] > 1e-4, (runtime, errors, distances)
    assert results["wrong"].report["verified"] is False, results["wrong"].report
