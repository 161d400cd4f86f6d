"""Permute and reshapes whose element order differs between TensorFlow and Caffe.

In every profile a Permute whose consumers are all flattens read by Dense layers (nets ported
from Caffe: Permute((3, 1, 2)) -> Flatten -> Dense) emits nothing: its order goes into the
Dense's weights. These cases run in bvlc, exact in pycaffe (bullseye) and OpenCV. Every other
Permute, and a reshape whose element order differs, needs Caffe's Permute layer: refused in
bvlc with the reason, and in the opencv and ssd profiles emitted as Permute (and Permute ->
Reshape -> Permute), verified in every runtime that has Permute (OpenCV, the source-built
Caffe; bullseye's pycaffe has none).
"""
from __future__ import annotations

import keras
import pytest

from handler_batch import batch_norm, build, chain, family_tests
from harness import assert_exact, convert_keras_batch

L = keras.layers


def conv(filters=5, kernel=1):
    return L.Conv2D(filters, kernel, padding="same", bias_initializer=keras.initializers.RandomNormal(0.0, 0.5))


def two_heads(shape, *layers):
    """`layers` then Flatten, read by two Dense heads (both model outputs)."""
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    flat = L.Flatten()(x)
    return keras.Model(inputs, [L.Dense(3)(flat), L.Dense(2)(flat)])


CASES = {  # bvlc: pycaffe and OpenCV
    "channels_first_flatten_dense": lambda: chain((3, 4, 5), conv(), L.Permute((3, 1, 2)), L.Flatten(), L.Dense(6)),
    "swap_hw_flatten_dense": lambda: chain((3, 4, 5), conv(), L.Permute((2, 1, 3)), L.Flatten(), L.Dense(6)),
    "any_order_flatten_dense": lambda: chain((3, 4, 5), conv(), L.Permute((2, 3, 1)), L.Flatten(), L.Dense(6)),
    "permute_two_heads": lambda: two_heads((3, 4, 5), conv(), L.Permute((3, 1, 2))),
    "permute_flatten_dropout_bn_dense": lambda: chain((3, 4, 5), conv(), L.Permute((3, 1, 2)), L.Flatten(),
                                                      L.Dropout(0.5), batch_norm(), L.Dense(6)),
    "sequence_permute_flatten_dense": lambda: chain((6, 4), L.Permute((2, 1)), L.Flatten(), L.Dense(3)),
    "permute_reshape_to_vector_dense": lambda: chain((3, 4, 5), conv(), L.Permute((3, 2, 1)), L.Reshape((60,)),
                                                     L.Dense(6)),
    # (N, T, F) -> (N, T, F, 1) (ExpandDims): Caffe's orders agree, a plain Reshape
    "sequence_to_image": lambda: chain((6, 4), L.Reshape((6, 4, 1)), conv(3, 3)),
    "image_to_sequence": lambda: chain((3, 4, 1), conv(1, 3), L.Reshape((12, 1)), L.Flatten(), L.Dense(3)),
}
REFUSED = {
    "permute_then_conv": (lambda: chain((3, 4, 5), conv(), L.Permute((2, 1, 3), name="swap"), conv()),
                          "swap", "has no Permute layer"),
    "permute_output": (lambda: chain((3, 4, 5), conv(), L.Permute((3, 1, 2), name="chw")), "chw", "has no Permute"),
    "reshape_to_tokens": (lambda: chain((3, 4, 5), conv(), L.Reshape((12, 5), name="tokens"), L.Flatten(), L.Dense(2)),
                          "tokens", "no Permute"),
}

results, test_exact, test_refused = family_tests(CASES, REFUSED, "layout")


def test_folded_permute_emits_nothing(results):
    assert results["channels_first_flatten_dense"].caffe_types == ["Input", "Convolution", "Flatten", "InnerProduct"]


def ssd_heads():
    inputs = keras.Input((6, 8, 3))
    small = conv(4, 3)(inputs)
    large = conv(6, 3)(L.MaxPooling2D()(small))
    return keras.Model(inputs, L.Concatenate()([L.Flatten()(small), L.Flatten()(large)]))


def two_outputs():
    inputs = keras.Input((3, 4, 5))
    flat = L.ReLU()(L.Flatten()(conv()(inputs)))
    return keras.Model(inputs, [flat, L.Dense(3)(flat)])


PERMUTE_CASES = {  # opencv and ssd profiles: OpenCV only
    "permute_then_conv": lambda: chain((3, 4, 5), conv(), L.Permute((2, 1, 3)), conv()),
    "permute_output": lambda: chain((3, 4, 5), conv(), L.Permute((3, 1, 2))),
    "permute_cyclic_then_conv": lambda: chain((3, 4, 5), conv(), L.Permute((2, 3, 1)), conv(3, 3)),
    "sequence_permute": lambda: chain((6, 4), L.Permute((2, 1)), L.Reshape((4, 6, 1)), conv(2, 3)),
    "reshape_image_to_other_image": lambda: chain((3, 4, 5), conv(), L.Reshape((5, 4, 3)), conv(2, 3)),
    "reshape_to_tokens": lambda: chain((3, 4, 5), conv(), L.Reshape((12, 5)), L.Flatten(), L.Dense(2)),
    "tokens_to_image": lambda: chain((12, 5), L.Reshape((3, 4, 5)), conv(2, 3)),
    # SSD's heads: each flattened in TensorFlow's order (Permute first), concatenated, an output
    "flatten_concat_heads": ssd_heads,
    "flatten_output": lambda: chain((3, 4, 5), conv(), L.Flatten()),
    "flatten_relu_output_and_dense": two_outputs,
}


@pytest.fixture(scope="module", params=["opencv", "ssd"])
def permuted(request, tmp_path_factory):
    return convert_keras_batch(build(PERMUTE_CASES), tmp_path_factory.mktemp("permute_" + request.param),
                               profile=request.param)


@pytest.mark.parametrize("name", sorted(PERMUTE_CASES))
def test_permute_layer(permuted, name):
    assert_exact(permuted[name])
    assert "Permute" in permuted[name].caffe_types
