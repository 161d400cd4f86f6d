"""The float64 truth (export/graph/float64.py, export/keras.py float64_truth, measure.within):
graph and Keras sources also record every compared layer computed in float64, and verification
tells a wrong conversion from float32 rounding that TensorFlow has as well.
"""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf2caffe import intermediate
from tf2caffe.export import graph
from tf2caffe.export.graph.float64 import float64_copy, float64_run
from tf2caffe.export.graph.session import run_graph_def
from test_graph_export import frozen_pb
from tf2caffe.measure import FLOAT32_NOISE_MULTIPLE, relative_error, within

v1 = tf.compat.v1
SHAPE = [2, 16, 16, 3]
BIG = 1e4


def frozen(folder: Path, name, build) -> Path:
    return frozen_pb(folder, name, build, shape=(None, 16, 16, 3))


def conv(x, filters, name, size=1, padding="SAME", kernel=None, bias=None):
    with v1.variable_scope(name):
        kernel = (v1.get_variable("kernel", [size, size, int(x.shape[-1]), filters]) if kernel is None
                  else v1.get_variable("kernel", initializer=kernel))
        bias = v1.get_variable("bias", initializer=np.zeros(filters, np.float32) if bias is None else bias)
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, padding), bias, name=name)


def cancelling(x):
    """Every output is a sum of order one hiding terms of 1e4 that cancel: a constant 1e4 channel
    through a 2x2 kernel, and a bias taking it away again. Partial sums near 1e4 are rounded to
    1e-3, in TensorFlow and in Caffe alike, but in different orders, so the two land ~1e-3 apart
    on outputs of order one, as far from each other as each is from the float64 truth. (2x2: a
    3x3 would be a Winograd convolution in OpenCV, whose transforms add more rounding still.)"""
    rng = np.random.default_rng(0)
    k1 = rng.normal(0.0, 0.3, (3, 3, 3, 8)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    k1[..., 7], b1[7] = 0.0, BIG
    k2 = rng.normal(0.0, 0.3, (2, 2, 8, 4)).astype(np.float32)
    b2 = (-BIG * k2[:, :, 7, :].sum(axis=(0, 1))).astype(np.float32)
    features = conv(x, 8, "features", kernel=k1, bias=b1)
    return [conv(features, 4, "out", padding="VALID", kernel=k2, bias=b2)]


def test_within():
    assert within(1e-5, 1e-4) and not within(2e-4, 1e-4)
    # Further from TensorFlow's float32 than the tolerance, but as close to the truth as it is.
    assert within(3e-4, 1e-4, {"caffe": 2e-4, "tensorflow": 2e-4})
    assert within(1.0, 1e-4, {"caffe": 5e-5, "tensorflow": 1e-7})
    assert not within(1e-3, 1e-4, {"caffe": 1e-3, "tensorflow": 1e-3 / FLOAT32_NOISE_MULTIPLE / 1.01})
    assert not within(0.5, 1e-4, {"caffe": 0.5, "tensorflow": 1e-7})  # a wrong conversion
    # Within the bar of TensorFlow float32, though further from the truth than 3x TensorFlow's own
    # (tiny) distance: two float32 runs, one of which happened to round closer (EfficientNetB6).
    assert within(8.9e-6, 1e-5, {"caffe": 1.2e-5, "tensorflow": 3e-6})


def test_ops_without_float64_kernels_stay_float32_between_casts(tmp_path):
    """LRN and FusedBatchNormV3 exist for float32 only: the copy casts around them, and its
    result is the float32 one to float32 precision."""
    def build(x):
        y = tf.nn.lrn(conv(x, 4, "c", 3), depth_radius=1, bias=2.0, alpha=0.1, beta=0.75, name="lrn")
        y, _, _ = v1.nn.fused_batch_norm(y, tf.ones([4]), tf.zeros([4]), mean=tf.fill([4], 0.1),
                                         variance=tf.fill([4], 2.0), is_training=False, name="bn")
        return [tf.nn.relu(y, name="out")]
    graph_def = graph.load_graph(frozen(tmp_path, "lrn_bn", build))[0]
    copy = float64_copy(graph_def)
    casts = {node.name for node in copy.node if node.op == "Cast"}
    assert {"lrn", "bn", "lrn/float32_input_0", "bn/float32_input_0"} <= casts
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    float32 = run_graph_def(graph_def, {"images:0": x}, ["out:0"])[0]
    truths, why_not = float64_run(graph_def, {"images:0": x}, ["out:0"])
    assert why_not is None
    assert truths["out:0"].dtype == np.float64
    assert 0 < relative_error(float32, truths["out:0"]) < 1e-6


def test_graph_export_records_the_truth_of_every_recorded_layer(tmp_path):
    model = graph.source_to_intermediate(frozen(tmp_path, "cancel", cancelling), per_layer=True,
                                            input_shape=SHAPE)
    assert set(model.reference_float64) == set(model.reference_activations)
    intermediate.write(str(tmp_path / "cancel.h5"), model)
    back = intermediate.read(str(tmp_path / "cancel.h5"))
    try:
        truth = back.truth("out")
        assert truth.dtype == np.float64
        # The input is float32 and the weights are too: only the arithmetic differs.
        assert relative_error(back.activation("out"), truth) > 1e-4
    finally:
        back.file.close()


@pytest.mark.chroot
def test_float32_noise_is_not_a_conversion_error_but_a_wrong_conversion_is(tmp_path):
    """Caffe is over the tolerance from TensorFlow's float32 output, yet as close to the truth as
    TensorFlow itself: verified, with both distances in the report. Without the truth the same
    net fails; with wrong weights it fails despite the truth."""
    import harness

    model = graph.source_to_intermediate(frozen(tmp_path, "cancel", cancelling), per_layer=True,
                                            input_shape=SHAPE)
    without_truth = graph.source_to_intermediate(frozen(tmp_path, "cancel", cancelling), per_layer=True,
                                            input_shape=SHAPE)
    without_truth.reference_float64 = {}
    wrong = graph.source_to_intermediate(frozen(tmp_path, "cancel", cancelling), per_layer=True,
                                            input_shape=SHAPE)
    layer = wrong.layer("out")  # a bias 1 % of the output off
    layer.arrays["bias"] = np.asarray(layer.arrays["bias"]) + 1e-2 * np.abs(wrong.activation("out")).max()
    results = harness.convert_intermediate_batch(
        {"with_truth": model, "without_truth": without_truth, "wrong": wrong}, tmp_path / "caffe")

    verified = results["with_truth"]
    assert verified.report["verified"] is True, verified.report
    for runtime, errors in verified.runtimes.items():
        float64 = verified.float64[runtime]["out"]
        assert errors["out"] > 1e-4 and float64["tensorflow"] > 1e-4, (runtime, errors, float64)
        assert float64["caffe"] <= FLOAT32_NOISE_MULTIPLE * float64["tensorflow"], (runtime, float64)
    harness.assert_exact(verified)
    assert results["without_truth"].report["verified"] is False
    assert results["wrong"].report["verified"] is False


def keras_cancelling(dtype="float32"):
    """`cancelling` as a Keras model, with a fused activation, BatchNorm and keras.ops nodes in
    front so that each kind of node runs as its float64 twin."""
    import keras

    rng = np.random.default_rng(0)
    keras.config.set_dtype_policy(dtype)
    try:
        x = keras.Input(SHAPE[1:], name="images")
        y = keras.layers.Conv2D(3, 1, activation="tanh", name="mix")(x)
        y = keras.layers.BatchNormalization(name="bn")(y) * 0.5 + 1.0
        features = keras.layers.Conv2D(8, 3, padding="same", name="features")(y)
        model = keras.Model(x, keras.layers.Conv2D(4, 2, name="out")(features))
    finally:
        keras.config.set_dtype_policy("float32")
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 3), rng.normal(0, 0.3, 3),
                                       rng.normal(0, 0.3, 3), rng.uniform(0.5, 2, 3)])
    (k1, _), (k2, _) = [model.get_layer(name).get_weights() for name in ("features", "out")]
    k1, b1 = rng.normal(0.0, 0.3, k1.shape), np.zeros(8)
    k1[..., 7], b1[7] = 0.0, BIG
    k2 = rng.normal(0.0, 0.3, k2.shape).astype(np.float32)
    model.get_layer("features").set_weights([k1, b1])
    model.get_layer("out").set_weights([k2, -BIG * k2[:, :, 7, :].sum(axis=(0, 1))])
    return model


def test_keras_export_records_the_truth_of_every_recorded_layer():
    """Each layer's float64 twin (export/keras.py float64_twin) computes what the whole model
    built under a float64 dtype policy computes, to the last bit."""
    from tf2caffe.export.keras import model_to_intermediate

    model = keras_cancelling()
    exported = model_to_intermediate(model, "cancel", per_layer=True)
    assert "float64_reference" not in exported.attrs
    assert set(exported.reference_float64) == set(exported.reference_activations)
    assert all(value.dtype == np.float64 for value in exported.reference_float64.values())
    exact = keras_cancelling("float64")
    exact.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    x = exported.reference_inputs["images"].astype(np.float64)
    assert relative_error(exported.reference_float64["out"], np.asarray(exact(x, training=False))) == 0.0
    assert relative_error(exported.reference_activations["out"], exported.reference_float64["out"]) > 1e-4


@pytest.mark.chroot
def test_keras_float32_noise_is_not_a_conversion_error(tmp_path):
    import harness
    from tf2caffe.export.keras import model_to_intermediate

    model = model_to_intermediate(keras_cancelling(), "cancel", per_layer=True)
    verified = harness.convert_intermediate_batch({"cancel": model}, tmp_path / "caffe")["cancel"]
    for runtime, errors in verified.runtimes.items():
        assert errors["out"] > 1e-4 and verified.float64[runtime]["out"]["tensorflow"] > 1e-4, runtime
    harness.assert_exact(verified)
