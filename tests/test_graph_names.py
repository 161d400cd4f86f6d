"""Graph sources on the command line: the node names messages use are names --inputs/--outputs
accept (a SavedModel's nodes sit under `StatefulPartitionedCall/` scopes, which messages drop),
and --inputs cuts a graph at an internal tensor.

The SavedModels are low-level tf.Modules whose op between convolutions has no mapping (Cumsum,
as an audio model's preprocessing might)."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf2caffe import intermediate
from tf2caffe.api import convert
from tf2caffe.errors import UnsupportedError

SHAPE = [1, 8, 8, 3]


class Tail(tf.Module):
    """conv -> sigmoid ('gate') -> cumsum ('running'): the cumsum cannot be converted."""

    def __init__(self):
        self.w = tf.Variable(np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.3)

    @tf.function(input_signature=[tf.TensorSpec([None] + SHAPE[1:], tf.float32, name="image")])
    def __call__(self, x):
        gate = tf.sigmoid(tf.nn.conv2d(x, self.w, 1, "SAME"), name="gate")
        return tf.math.cumsum(gate, axis=1, name="running")


class FrontEnd(tf.Module):
    """cumsum ('front', unconvertible) -> conv -> relu: the CNN behind it converts on its own."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.w = tf.Variable(rng.standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.3)
        self.b = tf.Variable(rng.standard_normal(4).astype(np.float32) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([None] + SHAPE[1:], tf.float32, name="image")])
    def __call__(self, x):
        front = tf.math.cumsum(x, axis=1, name="front")
        return tf.nn.relu(tf.nn.conv2d(front, self.w, 1, "SAME") + self.b, name="features")


def saved(module, folder: Path) -> str:
    tf.saved_model.save(module, str(folder), signatures=module.__call__)
    return str(folder)


def test_the_output_named_in_a_refusal_is_accepted_back(tmp_path):
    source = saved(Tail(), tmp_path / "tail")
    with pytest.raises(UnsupportedError) as refused:
        convert(source, str(tmp_path / "a"), backend="native")
    message = str(refused.value)
    assert "'running' (Cumsum)" in message and "StatefulPartitionedCall" not in message
    converted = convert(source, str(tmp_path / "b"), backend="native", outputs="gate:0")
    assert converted.status == 0 and max(converted.runtimes()["OpenCV"].values()) <= 1e-4


def test_inputs_cut_the_graph_behind_an_unconvertible_front_end(tmp_path):
    """--inputs front:0 (an internal tensor, named as the refusal names it): the CNN behind it
    converts, its reference what the full graph computes there on the seeded input and the
    user's own (for the original placeholder)."""
    from tf2caffe.export.reference import reference_batch
    source = saved(FrontEnd(), tmp_path / "front")
    with pytest.raises(UnsupportedError, match=r"'front' \(Cumsum\)"):
        convert(source, str(tmp_path / "a"), backend="native")
    user = np.random.default_rng(5).uniform(-1, 1, [2] + SHAPE[1:]).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), user)
    converted = convert(source, str(tmp_path / "b"), backend="native", inputs="front:0",
                        reference_input=str(tmp_path / "x.npy"))
    assert converted.status == 0 and max(converted.runtimes()["OpenCV"].values()) <= 1e-4
    model = intermediate.read(converted.h5)
    assert [layer.type for layer in model.layers][0] == "input" and "Cumsum" not in str(model.layers)
    full = np.concatenate([reference_batch([SHAPE], seed=0)[0], user])
    assert np.allclose(model.reference_input(model.inputs[0]), np.cumsum(full, axis=1), rtol=1e-6, atol=1e-6)
