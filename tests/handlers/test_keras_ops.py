"""Keras 3 operation nodes (`x + 3.0`, `ops.mean(x, axis)`, ...) in functional graphs, nested
Sequential models and the keras.applications blocks (LayerScale, CustomScaleLayer,
StochasticDepth): each converted exactly in pycaffe and OpenCV, or refused by name. Layout
operations (slicing, split, stack, transpose) map onto the slice, concat, reshape and permute
layers."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from handler_batch import build, family_tests
from harness import assert_exact, convert_keras_batch
from tf2caffe.errors import UnsupportedError

L = keras.layers
SHAPE = (5, 6, 4)
SPREAD = 4.0  # crosses the kinks of relu6 and hard_sigmoid (±3, 6)


def on_image(apply, shape=SHAPE):
    """`apply` to a widened conv output (the operation's tensor comes from a layer)."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, apply(L.Conv2D(4, 3, padding="same")(L.Rescaling(SPREAD)(inputs))))


def with_gate(apply):
    """`apply(features, gate)`: features (N, H, W, C), gate their global mean (N, 1, 1, C)."""
    def build_model():
        inputs = keras.Input(SHAPE)
        features = L.Conv2D(4, 3, padding="same")(inputs)
        return keras.Model(inputs, apply(features, L.GlobalAveragePooling2D(keepdims=True)(features)))
    return build_model


PER_CHANNEL = np.array([0.5, -2.0, 1.5, 3.0], np.float32)


def custom_scale_block():
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = keras.Input(SHAPE)
    x = L.Conv2D(4, 3, padding="same")(inputs)
    residual = L.Conv2D(4, 1)(x)
    return keras.Model(inputs, CustomScaleLayer(0.17)([x, residual]))


def convnext_block(drop_path_rate):
    """ConvNeXt's block, random LayerScale (its 1e-6 start would hide the branch)."""
    from keras.src.applications.convnext import LayerScale, StochasticDepth

    inputs = keras.Input(SHAPE)
    x = L.Conv2D(4, 3, padding="same")(inputs)
    branch = L.Conv2D(4, 7, padding="same", groups=4)(x)
    branch = L.LayerNormalization(epsilon=1e-6, beta_initializer="random_normal",
                                  gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5))(branch)
    branch = L.Dense(16)(branch)
    branch = L.Activation("gelu")(branch)
    branch = L.Dense(4)(branch)
    scale = LayerScale(0.5, 4)
    branch = scale(branch)
    scale.gamma.assign(np.random.RandomState(0).uniform(0.5, 1.5, 4).astype(np.float32))
    if drop_path_rate:
        branch = StochasticDepth(drop_path_rate)(branch)
    return keras.Model(inputs, x + branch)


def nested_sequential():
    inputs = keras.Input(SHAPE)
    stem = keras.Sequential([L.Conv2D(6, 2, strides=2), L.LayerNormalization(epsilon=1e-6),
                             L.Activation("hard_swish")], name="stem")
    return keras.Model(inputs, L.Conv2D(3, 1)(stem(inputs)))


CASES = {
    # arithmetic with constants: x·scale + offset (Power), per channel (Scale)
    "add_constant": lambda: on_image(lambda x: x + 3.0),
    "constant_add": lambda: on_image(lambda x: 3.0 + x),
    "subtract_constant": lambda: on_image(lambda x: x - 1.5),
    "constant_subtract": lambda: on_image(lambda x: 1.5 - x),
    "multiply_constant": lambda: on_image(lambda x: x * (1.0 / 6.0)),
    "divide_constant": lambda: on_image(lambda x: x / 6.0),
    "constant_divide": lambda: on_image(lambda x: 2.0 / (L.ReLU()(x) + 1.0)),
    "multiply_per_channel": lambda: on_image(lambda x: x * PER_CHANNEL),
    "add_per_channel": lambda: on_image(lambda x: ops.add(x, PER_CHANNEL.reshape(1, 1, 1, 4))),
    # arithmetic of two tensors, (N, 1, 1, C) broadcast over (N, H, W, C)
    "add_tensors": lambda: on_image(lambda x: x + L.Conv2D(4, 1)(x)),
    "subtract_tensors": lambda: on_image(lambda x: x - L.Conv2D(4, 1)(x)),
    "multiply_tensors": lambda: on_image(lambda x: x * L.Conv2D(4, 1)(x)),
    "multiply_gate": with_gate(lambda x, gate: x * ops.sigmoid(gate)),
    "add_gate": with_gate(lambda x, gate: gate + x),
    "maximum_tensors": lambda: on_image(lambda x: ops.maximum(x, L.Conv2D(4, 1)(x))),
    # activations
    "relu": lambda: on_image(ops.relu),
    "relu6": lambda: on_image(ops.relu6),
    "sigmoid": lambda: on_image(ops.sigmoid),
    "silu": lambda: on_image(ops.silu),
    "hard_sigmoid": lambda: on_image(ops.hard_sigmoid),
    "hard_silu": lambda: on_image(ops.hard_silu),
    "gelu_tanh": lambda: on_image(ops.gelu),  # ops.gelu's default: approximate=True
    "gelu_erf": lambda: on_image(lambda x: ops.gelu(x, approximate=False)),
    "softmax": lambda: on_image(lambda x: ops.softmax(x, axis=-1)),
    # MobileNetV3's hard_sigmoid: relu6(x + 3) · (1/6) from two operations and a layer
    "mobilenet_v3_hard_swish": lambda: on_image(lambda x: x * (L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))),
    # reductions, concatenation, reshapes Caffe holds in TensorFlow's order
    "mean_spatial_keepdims": lambda: on_image(lambda x: ops.mean(x, axis=[1, 2], keepdims=True)),
    "mean_channels": lambda: on_image(lambda x: ops.mean(x, axis=-1, keepdims=True)),
    "max_spatial": lambda: on_image(lambda x: ops.max(x, axis=(1, 2))),
    "sum_rows_keepdims": lambda: on_image(lambda x: ops.sum(x, axis=1, keepdims=True)),
    "concatenate": lambda: on_image(lambda x: ops.concatenate([x, L.Conv2D(2, 1)(x)], axis=-1)),
    "reshape_1x1xC_to_vector": lambda: on_image(lambda x: ops.reshape(ops.mean(x, axis=[1, 2], keepdims=True), (-1, 4))),
    "squeeze_1x1xC": lambda: on_image(lambda x: ops.squeeze(ops.max(x, axis=[1, 2], keepdims=True), axis=[1, 2])),
    "reshape_vector_to_1x1xC": lambda: on_image(lambda x: ops.reshape(ops.mean(x, axis=[1, 2]), (-1, 1, 1, 4))),
    # slicing (the slice handler): x[...] keys, ops.slice, split and unstack outputs
    "getitem_channels": lambda: on_image(lambda x: x[:, :, :, 1:3]),
    "getitem_rows_strided_ellipsis": lambda: on_image(lambda x: x[:, 1:, ::2, ...]),
    "getitem_negative_bounds": lambda: on_image(lambda x: x[..., -3:-1]),
    "getitem_drops_channels": lambda: on_image(lambda x: x[..., 2]),
    "slice_op": lambda: on_image(lambda x: ops.slice(x, (0, 1, 2, 0), (1, 3, 4, 4))),
    "split_channels_both_read": lambda: on_image(lambda x: ops.multiply(*ops.split(x, 2, axis=-1))),
    "split_one_read": lambda: on_image(lambda x: ops.split(x, [2], axis=1)[1]),
    "unstack_channels": lambda: on_image(lambda x: ops.add(*ops.unstack(x[..., :2], axis=-1))),
    # stack: concatenated, then reshaped where the new axis precedes an existing one
    "stack_vectors": lambda: on_image(lambda x: ops.stack([ops.mean(x, axis=[1, 2]),
                                                            ops.max(x, axis=[1, 2])], axis=1)),
    # layers of keras.applications and nested Sequential models
    "custom_scale_layer": custom_scale_block,
    "convnext_block": lambda: convnext_block(0.0),
    "convnext_block_stochastic_depth": lambda: convnext_block(0.1),
    "nested_sequential": nested_sequential,
}

results, test_exact, _ = family_tests(CASES, {}, "keras_ops")


def test_constants_become_power_and_scale_layers(results):
    assert results["add_constant"].caffe_types.count("Power") == 2  # the Rescaling's and x + 3's
    assert "Scale" in results["multiply_per_channel"].caffe_types


def test_custom_scale_is_one_eltwise_with_coefficients(results):
    assert "coeff: 0.17" in results["custom_scale_layer"].prototxt


def test_split_emits_the_outputs_read(results):
    assert results["split_one_read"].caffe_types.count("Slice") == 1
    assert results["split_channels_both_read"].prototxt.count('type: "Slice"') == 2


# Permutations need Caffe's Permute: the opencv profile has it (bvlc refuses it, test_layout.py).
PERMUTE_CASES = {
    "transpose_hw": lambda: on_image(lambda x: ops.transpose(x, (0, 2, 1, 3))),
    "swapaxes_then_conv": lambda: on_image(lambda x: L.Conv2D(3, 1)(ops.swapaxes(x, 1, 3))),
    "moveaxis_channels_first": lambda: on_image(lambda x: ops.moveaxis(x, 3, 1)),
    "stack_new_last_axis": lambda: on_image(lambda x: ops.stack([ops.mean(x, axis=[1, 2]),
                                                                 ops.max(x, axis=[1, 2])], axis=-1)),
    # dropping the rows axis: Caffe's element order differs (Permute -> Reshape -> Permute)
    "getitem_drops_rows": lambda: on_image(lambda x: x[:, 2]),
    "unstack_rows": lambda: on_image(lambda x: ops.add(*ops.unstack(x[:, :2], axis=1))),
}


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    return convert_keras_batch(build(PERMUTE_CASES), tmp_path_factory.mktemp("keras_ops_permute"),
                               profile="opencv")


@pytest.mark.parametrize("name", sorted(PERMUTE_CASES))
def test_permute(permuted, name):
    assert_exact(permuted[name])
    assert "Permute" in permuted[name].caffe_types


# name -> (model builder, refused node, reason)
REFUSED = {
    "transpose_batch": (lambda: on_image(lambda x: ops.transpose(x, (1, 0, 2, 3))), "transpose",
                        "moves the batch axis"),
    "reversed_slice": (lambda: on_image(lambda x: x[:, ::-1]), "get_item", "not a forward stride"),
    "stack_batch": (lambda: on_image(lambda x: ops.stack([x, x], axis=0)), "stack", "batch axis"),
    "divide_tensors": (lambda: on_image(lambda x: x / (L.ReLU()(x) + 1.0)), "true_divide", "division of two tensors"),
    "constant_of_other_shape": (lambda: on_image(lambda x: x + np.ones((5, 1, 1), np.float32)), "add",
                                "constant operand of shape"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_name(name):
    from tf2caffe.export.keras import model_to_intermediate

    make, node, reason = REFUSED[name]
    with pytest.raises(UnsupportedError) as refused:
        model_to_intermediate(build({name: make})[name], name)
    message = str(refused.value)
    assert "'%s" % node in message and reason in message, message
