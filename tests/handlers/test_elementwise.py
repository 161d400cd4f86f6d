"""Element-wise merges and Concat of conv branches, squeeze-and-excitation gates, broadcasts."""
from __future__ import annotations

import keras
import pytest

from handler_batch import family_tests

L = keras.layers
SHAPE = (6, 7, 3)


def branches(merge, count=2, shape=SHAPE):
    """`merge` of `count` convolution branches of one input (4 channels each)."""
    inputs = keras.Input(shape)
    convs = [L.Conv2D(4, 3, padding="same"), L.Conv2D(4, 1), L.Conv2D(4, 3, padding="same", activation="relu")]
    return keras.Model(inputs, merge([conv(inputs) for conv in convs[:count]]))


def squeeze_excitation(gate, gate_first=False, channels=6):
    """features × gate(features), the gate (N, 1, 1, C) broadcast over H and W."""
    inputs = keras.Input(SHAPE)
    features = L.Conv2D(channels, 3, padding="same")(inputs)
    scale = gate(features, channels)
    return keras.Model(inputs, L.Multiply()([scale, features] if gate_first else [features, scale]))


def conv_gate(features, channels):
    pooled = L.GlobalAveragePooling2D(keepdims=True)(features)
    return L.Conv2D(channels, 1, activation="sigmoid")(pooled)


def dense_gate(features, channels):
    pooled = L.GlobalAveragePooling2D()(features)
    hidden = L.Dense(2, activation="relu")(pooled)
    return L.Reshape((1, 1, channels))(L.Dense(channels, activation="sigmoid")(hidden))


def broadcast(merge):
    """`merge` of features (N, H, W, C) and their global average (N, 1, 1, C)."""
    inputs = keras.Input(SHAPE)
    features = L.Conv2D(4, 3, padding="same")(inputs)
    return keras.Model(inputs, merge([features, L.GlobalAveragePooling2D(keepdims=True)(features)]))


def flattened(merge):
    """`merge` of two flattened conv branches, then a Dense."""
    inputs = keras.Input(SHAPE)
    flat = [L.Flatten()(L.Conv2D(4, 3)(inputs)), L.Flatten()(L.Conv2D(4, 3)(inputs))]
    return keras.Model(inputs, L.Dense(5)(merge(flat)))


def flattened_and_vector(merge):
    """A flattened (3, 4, 5) tensor merged with a plain vector of 60 features."""
    inputs = keras.Input((3, 4, 5))
    flat = L.Flatten()(inputs)
    return keras.Model(inputs, L.Dense(2)(merge([flat, L.Dense(60)(flat)])))


def vectors(merge):
    inputs = keras.Input((12,))
    return keras.Model(inputs, merge([L.Dense(5)(inputs), L.Dense(3)(inputs)]))


CASES = {
    "add": lambda: branches(L.Add()),
    "add_3": lambda: branches(L.Add(), 3),
    "subtract": lambda: branches(L.Subtract()),
    "multiply": lambda: branches(L.Multiply()),
    "multiply_3": lambda: branches(L.Multiply(), 3),
    "maximum": lambda: branches(L.Maximum()),
    "minimum": lambda: branches(L.Minimum()),
    "minimum_3": lambda: branches(L.Minimum(), 3),
    "average": lambda: branches(L.Average()),
    "average_3": lambda: branches(L.Average(), 3),
    "concat_axis_-1": lambda: branches(L.Concatenate(axis=-1), 3),
    "concat_axis_3": lambda: branches(L.Concatenate(axis=3)),
    "concat_axis_1": lambda: branches(L.Concatenate(axis=1)),
    "concat_axis_2": lambda: branches(L.Concatenate(axis=2)),
    "concat_vectors": lambda: vectors(L.Concatenate()),
    "se_conv_gate": lambda: squeeze_excitation(conv_gate),
    "se_conv_gate_first": lambda: squeeze_excitation(conv_gate, gate_first=True),
    "se_dense_reshape_gate": lambda: squeeze_excitation(dense_gate),
    "broadcast_add": lambda: broadcast(L.Add()),
    "broadcast_subtract": lambda: broadcast(L.Subtract()),
    "broadcast_maximum": lambda: broadcast(L.Maximum()),
    "broadcast_minimum": lambda: broadcast(L.Minimum()),
    "flattened_add": lambda: flattened(L.Add()),
    "flattened_multiply": lambda: flattened(L.Multiply()),
}
REFUSED = {
    "flatten_concat": (lambda: flattened(L.Concatenate(name="joined")), "joined", "Flatten of a 4-D tensor"),
    "flatten_concat_vector": (lambda: flattened_and_vector(L.Concatenate(name="mixed_concat")),
                              "mixed_concat", "Flatten of a 4-D tensor"),
    "flatten_add_vector": (lambda: flattened_and_vector(L.Add(name="mixed_add")),
                           "mixed_add", "Flatten of a 4-D tensor"),
}


results, test_exact, test_refused = family_tests(CASES, REFUSED, "elementwise")


@pytest.mark.parametrize("name", ["se_conv_gate", "se_conv_gate_first", "se_dense_reshape_gate"])
def test_squeeze_excitation_is_a_two_bottom_scale(results, name):
    assert "Scale" in results[name].caffe_types and "Eltwise" not in results[name].caffe_types
