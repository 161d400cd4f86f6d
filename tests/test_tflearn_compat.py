"""tflearn 0.5.0 on the pinned TensorFlow (tf2caffe/export/tflearn_compat.py).

Every image-network layer builder tflearn has, conv_2d with every initializer it accepts and
every activation, and merge in every mode, built side by side in one fresh tf.Graph and run in
one session with the variables initialised, in inference and in training mode. The tables are
checked against tflearn's own source, so a builder, initializer, activation or merge mode that
they miss fails too.
"""
import ast
import inspect
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from tf2caffe.export.tflearn_compat import import_tflearn

tflearn = import_tflearn()
conv = tflearn.layers.conv
v1 = tf.compat.v1
INPUT_SHAPE = (2, 8, 8, 4)

# Every name tflearn.initializations.get accepts, and every tflearn.activations function.
INITIALIZERS = ["zeros", "uniform", "uniform_scaling", "normal", "truncated_normal", "xavier",
                "variance_scaling"]
ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "prelu", "elu", "crelu", "selu", "softplus",
               "softsign", "sigmoid", "tanh", "softmax", "hard_sigmoid", "gelu"]
# Every mode of tflearn.merge: (mode, whether it merges booleans).
MERGE_MODES = [("concat", False), ("elemwise_sum", False), ("elemwise_mul", False), ("sum", False),
               ("mean", False), ("prod", False), ("max", False), ("min", False), ("and", True),
               ("or", True)]

# name -> builder on the (None, 8, 8, 4) input.
LAYERS = {
    **{"conv_2d weights_init=%s" % name: (lambda x, name=name: tflearn.conv_2d(x, 4, 3, weights_init=name))
       for name in INITIALIZERS},
    **{"conv_2d activation=%s" % name: (lambda x, name=name: tflearn.conv_2d(x, 4, 3, activation=name))
       for name in ACTIVATIONS},
    **{"merge %s" % mode: (lambda x, mode=mode, logical=logical: tflearn.merge(
        [tf.greater(x, 0.0), tf.less(x, 0.5)] if logical else [x, tflearn.conv_2d(x, 4, 1)], mode, axis=3))
       for mode, logical in MERGE_MODES},
    "conv_2d_transpose": lambda x: tflearn.conv_2d_transpose(x, 3, 3, [16, 16], strides=2),
    "atrous_conv_2d": lambda x: conv.atrous_conv_2d(x, 4, 3, rate=2),
    "grouped_conv_2d": lambda x: conv.grouped_conv_2d(x, 2, 3),
    "highway_conv_2d": lambda x: conv.highway_conv_2d(x, 4, 3),
    "max_pool_2d": lambda x: tflearn.max_pool_2d(x, 3, strides=2),
    "avg_pool_2d": lambda x: tflearn.avg_pool_2d(x, 3, strides=2),
    "global_avg_pool": lambda x: tflearn.global_avg_pool(x),
    "global_max_pool": lambda x: conv.global_max_pool(x),
    "upsample_2d": lambda x: tflearn.upsample_2d(x, 2),
    "upscore_layer": lambda x: conv.upscore_layer(x, 3, kernel_size=4, strides=2),
    "residual_block": lambda x: tflearn.residual_block(x, 2, 4),
    "residual_block downsample": lambda x: tflearn.residual_block(x, 1, 8, downsample=True),
    "residual_bottleneck": lambda x: tflearn.residual_bottleneck(x, 2, 2, 8),
    "residual_bottleneck downsample": lambda x: tflearn.residual_bottleneck(x, 1, 2, 8, downsample=True),
    "resnext_block": lambda x: conv.resnext_block(x, 1, 8, 2),
    "densenet_block": lambda x: conv.densenet_block(x, 2, 4),
    "batch_normalization": lambda x: tflearn.batch_normalization(x),
    "local_response_normalization": lambda x: tflearn.local_response_normalization(x),
    "l2_normalize": lambda x: tflearn.layers.normalization.l2_normalize(x, 3),
    "fully_connected": lambda x: tflearn.fully_connected(x, 5),
    "highway": lambda x: tflearn.highway(tflearn.flatten(x), 256),
    "dropout": lambda x: tflearn.dropout(x, 0.5),
    "flatten": lambda x: tflearn.flatten(x),
    "reshape": lambda x: tflearn.reshape(x, [-1, 16, 16]),
}
# Builders of tflearn.layers.conv/normalization that are not for 2-D images, or not layers.
NOT_IMAGE_LAYERS = {"conv_1d", "max_pool_1d", "avg_pool_1d", "highway_conv_1d", "conv_3d",
                    "conv_3d_transpose", "max_pool_3d", "avg_pool_3d", "upscore_layer3d", "get"}


def defined_functions(module) -> set:
    """The functions a module defines at top level (not the ones it imports)."""
    return {node.name for node in ast.parse(inspect.getsource(module)).body
            if isinstance(node, ast.FunctionDef)}


def test_the_tables_cover_all_of_tflearn():
    assert defined_functions(tflearn.initializations) - {"get"} == set(INITIALIZERS)
    assert defined_functions(tflearn.activations) - {"get"} == set(ACTIVATIONS)
    merge_modes = re.findall(r"mode == '(\w+)'", inspect.getsource(tflearn.layers.merge_ops.merge))
    assert sorted(merge_modes) == sorted(mode for mode, _ in MERGE_MODES)
    builders = (defined_functions(conv) | defined_functions(tflearn.layers.normalization)) - NOT_IMAGE_LAYERS
    assert builders <= {name.split()[0] for name in LAYERS}, builders


def test_import_leaves_tensorflow_in_v2_mode():
    assert tf.executing_eagerly() and v1.resource_variables_enabled()


def test_every_image_layer_builds_and_runs():
    graph = tf.Graph()
    failed = {}
    with graph.as_default():
        v1.set_random_seed(0)
        x = tflearn.input_data(shape=[None, *INPUT_SHAPE[1:]])
        outputs = {}
        for name, build in LAYERS.items():
            try:
                outputs[name] = build(x)
            except Exception as error:  # noqa: BLE001  (every failing builder, listed at once)
                failed[name] = "%s: %s" % (type(error).__name__, str(error).strip().splitlines()[0])
        assert not failed, "\n".join("%s: %s" % failure for failure in failed.items())
        feed = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            # Inference (what export runs) and training mode (batch statistics, dropout on).
            for training in (False, True):
                tflearn.is_training(training, session=session)
                values = session.run(outputs, {x: feed})
                for name, value in values.items():
                    assert value.shape[0] == INPUT_SHAPE[0] and np.all(np.isfinite(value)), (name, training)


# The mended initializers draw what tflearn documents: Var(w) = factor / n, n = fan_in, fan_out or
# their mean; uniform within sqrt(3 factor / n), truncated normal within two of its stddevs.
KERNEL = [3, 3, 32, 64]
FAN_IN, FAN_OUT = 3 * 3 * 32, 3 * 3 * 64
INITIALIZER_STATISTICS = [
    ("variance_scaling", {}, 2.0 / FAN_IN, False),
    ("variance_scaling", dict(factor=1.0, mode="FAN_OUT", uniform=True), 1.0 / FAN_OUT, True),
    ("variance_scaling", dict(factor=1.0, mode="FAN_AVG"), 2.0 / (FAN_IN + FAN_OUT), False),
    ("xavier", {}, 2.0 / (FAN_IN + FAN_OUT), True),
    ("xavier", dict(uniform=False), 2.0 / (FAN_IN + FAN_OUT), False),
]


def test_mended_initializers_draw_the_documented_distribution():
    with tf.Graph().as_default():
        kernels = [getattr(tflearn.initializations, name)(seed=1, **options)(KERNEL)
                   for name, options, _, _ in INITIALIZER_STATISTICS]
        with v1.Session() as session:
            values = session.run(kernels)
    for (name, options, variance, uniform), value in zip(INITIALIZER_STATISTICS, values):
        # 18432 draws: the sample variance is within 3 % of the true one far beyond 6 sigma.
        assert value.var() == pytest.approx(variance, rel=0.03), (name, options)
        bound = math.sqrt(3 * variance) if uniform else 2 * math.sqrt(variance) / 0.87962566103423978
        assert np.abs(value).max() <= bound * (1 + 1e-6), (name, options)
