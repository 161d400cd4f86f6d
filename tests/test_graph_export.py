"""Graph-level export (tf2caffe/export/graph/): models that were never Keras models.

Sources, all built here, small and seeded: tflearn checkpoints (TF1 control flow, as TF1-era
tflearn wrote them, and v2 control flow, as tflearn writes them on TF 2 with the project's
shim), tf-slim networks saved as TF1 checkpoints (one with `Switch`/`Merge` conditionals and
reference variables, one with `If` conditionals and resource variables), a frozen `.pb`, a
SavedModel written by `tf.saved_model.save` from low-level code and one written by Keras 3's
`model.export()`. Each is mapped onto the
intermediate vocabulary, checked on the TensorFlow side, then converted end to end (one Caffe
subprocess for all) and measured in pycaffe and OpenCV.

Sources written under TF1 behaviour (`disable_v2_behavior` is process-wide) are built in a
subprocess, and converted in another fresh one that never saw the code that built them: this
module doubles as that script (`python tests/test_graph_export.py build-tf1|convert DIR`).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf2caffe import intermediate
from tf2caffe.errors import ConversionError, UnsupportedError
from tf2caffe.export import export, graph
from tflearn_cases import export_sources, finish, randomise_variables, save_tflearn, start_script

v1 = tf.compat.v1
SIZE = 32  # input height and width of the image models


# --------------------------------------------------------------------------- sources
def tflearn_network(tflearn, seed, logs: Path):
    """conv, batch norm, max pool, LRN, conv, avg pool, dense, dropout, dense + softmax,
    trained with Adam (so moving statistics and Adam slots exist)."""
    from tflearn.layers.conv import avg_pool_2d, conv_2d, max_pool_2d
    from tflearn.layers.core import dropout, fully_connected, input_data
    from tflearn.layers.estimator import regression
    from tflearn.layers.normalization import batch_normalization, local_response_normalization

    v1.set_random_seed(seed)
    net = input_data(shape=[None, 16, 16, 3], name="input")
    net = conv_2d(net, 8, 3, activation="relu")
    net = batch_normalization(net, decay=0.5)
    net = max_pool_2d(net, 2)
    net = local_response_normalization(net, depth_radius=2, bias=2.0, alpha=1e-2)
    net = conv_2d(net, 8, 3, strides=2, activation="relu")
    net = avg_pool_2d(net, 2)
    net = fully_connected(net, 16, activation="tanh")
    net = dropout(net, 0.8)
    net = fully_connected(net, 4, activation="softmax")
    net = regression(net, optimizer="adam", learning_rate=0.01, loss="categorical_crossentropy",
                     name="target")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 16, 16, 3)).astype(np.float32)
    y = np.eye(4)[rng.integers(0, 4, 32)]
    model = tflearn.DNN(net, tensorboard_dir=str(logs))
    model.fit({"input": x}, {"target": y}, n_epoch=3, batch_size=8, show_metric=False)
    return model, x[:2]


def slim_compat():
    """tf-slim 1.1.0 on TF 2.21: two names it uses moved."""
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_ops
    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    if not hasattr(control_flow_ops, "cond"):
        control_flow_ops.cond = v1.cond
    import tf_slim
    return tf_slim


def batch_norm_scope(slim, epsilon):
    # slim's batch_norm needs tf_keras unless it takes the fused path, which updates_collections=None forces.
    params = dict(decay=0.9, epsilon=epsilon, scale=True, updates_collections=None)
    return slim.arg_scope([slim.conv2d], normalizer_fn=slim.batch_norm, normalizer_params=params)


def train_and_save(session, images, labels, logits, is_training, folder: Path, name, seed):
    """One Adam step in training mode (Adam slots, a global step), then random statistics."""
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    step = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=v1.train.get_or_create_global_step())
    session.run(v1.global_variables_initializer())
    rng = np.random.default_rng(seed)
    feed = {images: rng.standard_normal((4,) + tuple(images.shape[1:])).astype(np.float32),
            labels: rng.integers(0, 10, 4), is_training: True}
    session.run(step, feed)
    randomise_variables(session, rng)  # statistics far from (0, 1): an identity batch norm fails
    v1.train.Saver().save(session, str(folder / (name + ".ckpt")))


def save_slim_inception(folder: Path):
    """Under TF1 behaviour: tf-slim's InceptionV1 stem up to Mixed_3c plus a dropout/1x1-conv
    head, with a bool `is_training` placeholder (no default): `Switch`/`Merge` conditionals
    and reference variables. Saved as a checkpoint, and frozen into a `.pb` that keeps the
    training flag, as a user freezing the training graph gets."""
    slim = slim_compat()
    from tf_slim.nets import inception
    with tf.Graph().as_default(), v1.Session() as session:
        v1.set_random_seed(2)
        images = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="images")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        is_training = v1.placeholder(tf.bool, [], name="is_training")
        with slim.arg_scope(inception.inception_v1_arg_scope()), batch_norm_scope(slim, 1e-3), \
                slim.arg_scope([slim.batch_norm], is_training=is_training):
            net, _ = inception.inception_v1_base(images, final_endpoint="Mixed_3c")
            net = tf.reduce_mean(net, [1, 2], keepdims=True, name="global_pool")
            net = slim.dropout(net, 0.7, is_training=is_training, scope="Dropout")
            net = slim.conv2d(net, 10, 1, activation_fn=None, normalizer_fn=None, scope="Logits")
        logits = tf.squeeze(net, [1, 2], name="SpatialSqueeze")
        tf.nn.softmax(logits, name="Predictions")
        train_and_save(session, images, labels, logits, is_training, folder, "slim_inception", seed=2)
        frozen = v1.graph_util.convert_variables_to_constants(
            session, session.graph.as_graph_def(), ["Predictions"])
        (folder / "slim_inception_frozen.pb").write_bytes(frozen.SerializeToString())


def save_slim_resnet(folder: Path):
    """Under TF2 behaviour: tf-slim's resnet_v1 (bottleneck units, conv2d_same's explicit
    padding, strided shortcuts) with two small blocks and `is_training` a
    placeholder_with_default: `If` conditionals and resource variables."""
    slim = slim_compat()
    from tf_slim.nets import resnet_utils, resnet_v1
    blocks = [resnet_v1.resnet_v1_block("block1", base_depth=8, num_units=2, stride=2),
              resnet_v1.resnet_v1_block("block2", base_depth=16, num_units=2, stride=1)]
    with tf.Graph().as_default(), v1.Session() as session:
        v1.set_random_seed(3)
        images = v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="images")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        with slim.arg_scope(resnet_utils.resnet_arg_scope()), batch_norm_scope(slim, 1e-5):
            net, _ = resnet_v1.resnet_v1(images, blocks, is_training=is_training, scope="resnet_small")
        net = tf.squeeze(net, [1, 2], name="squeeze")
        logits = slim.fully_connected(net, 10, activation_fn=None, scope="logits")
        tf.nn.softmax(logits, name="predictions")
        train_and_save(session, images, labels, logits, is_training, folder, "slim_resnet", seed=3)


class LowLevel(tf.Module):
    """tf.nn ops on tf.Variables: conv + bias + relu6, depthwise conv, tf.nn.batch_normalization
    (the unfused pattern), leaky relu, explicit pad + valid conv, fused batch norm, max pool,
    elu, transposed conv, avg pool, constant scale/shift, sigmoid, concat, mean, dense, softmax."""

    def __init__(self):
        super().__init__(name="lowlevel")
        rng = np.random.default_rng(4)

        def var(name, *shape, low=None):
            value = rng.uniform(low, 2.0, shape) if low else rng.normal(0, 0.3, shape)
            return tf.Variable(value.astype(np.float32), name=name)

        with self.name_scope:
            self.conv1 = var("conv1/kernel", 3, 3, 3, 8), var("conv1/bias", 8)
            self.depthwise = var("dw/depthwise_kernel", 3, 3, 8, 2), var("dw/bias", 16)
            self.bn = [var("bn/" + n, 16) for n in ("gamma", "beta", "mean")]
            self.bn.append(var("bn/variance", 16, low=0.5))
            self.conv2 = var("conv2/kernel", 1, 1, 16, 8)
            self.fbn = [var("fbn/" + n, 8) for n in ("gamma", "beta", "mean")]
            self.fbn.append(var("fbn/variance", 8, low=0.5))
            self.up = var("up/kernel", 3, 3, 4, 16)
            self.scale = var("scale", 4)
            self.dense = var("fc/kernel", 20, 5), var("fc/bias", 5)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def __call__(self, x):
        y = tf.nn.relu6(tf.nn.conv2d(x, self.conv1[0], 2, "SAME") + self.conv1[1])
        kernel, bias = self.depthwise
        y = tf.nn.bias_add(tf.nn.depthwise_conv2d(y, kernel, [1, 1, 1, 1], "SAME"), bias)
        gamma, beta, mean, variance = self.bn
        y = tf.nn.leaky_relu(tf.nn.batch_normalization(y, mean, variance, beta, gamma, 1e-3), 0.1)
        a = tf.nn.conv2d(tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]]), self.conv2, 1, "VALID")
        a = v1.nn.fused_batch_norm(a, *self.fbn, epsilon=1e-3, is_training=False)[0]
        a = tf.nn.elu(tf.nn.max_pool2d(a, 2, 2, "VALID"))
        b = tf.nn.conv2d_transpose(y, self.up, [tf.shape(y)[0], 16, 16, 4], 2, "SAME")
        b = tf.nn.sigmoid(tf.nn.avg_pool2d(b, 3, 3, "VALID") * 0.5 + 1.0) * self.scale
        z = tf.reduce_mean(tf.concat([a, b, a], axis=-1), axis=[1, 2])
        return {"probabilities": tf.nn.softmax(tf.matmul(z, self.dense[0]) + self.dense[1])}


def save_lowlevel(folder: Path):
    module = LowLevel()
    tf.saved_model.save(module, str(folder / "lowlevel"), signatures=module.__call__)


def save_keras_export(folder: Path):
    """A Keras 3 model written with `model.export()`: a plain SavedModel Keras cannot load back.
    Its UpSampling2D is tf.repeat (ExpandDims, Tile, Reshape), its swish an IdentityN."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(6)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.UpSampling2D(2, name="up")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", activation="swish", name="sep")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Dropout(0.3, name="drop")(layers.Flatten(name="flat")(x))
    model = keras.Model(inputs, layers.Dense(5, activation="softmax", name="dense")(x))
    rng = np.random.default_rng(6)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(0, 0.5, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    model.export(str(folder / "keras_export"), verbose=False)


def frozen_pb(folder: Path, name, build, shape=(None, 8, 8, 3)):
    """Freeze what `build(images)` computes from a placeholder of `shape` into NAME.pb."""
    with tf.Graph().as_default() as g, v1.Session() as session:
        v1.set_random_seed(5)
        outputs = build(v1.placeholder(tf.float32, shape, name="images"))
        session.run(v1.global_variables_initializer())
        frozen = v1.graph_util.convert_variables_to_constants(
            session, g.as_graph_def(), [t.op.name for t in outputs])
    path = folder / (name + ".pb")
    path.write_bytes(frozen.SerializeToString())
    return path


def conv(x, filters, name):
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [3, 3, int(x.shape[-1]), filters])
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), v1.get_variable("bias", [filters]))


# --------------------------------------------------------------------------- the two scripts
def build_tf1_sources(folder: Path):
    """Sources as TF1 code writes them (run as a script: TF1 behaviour is process-wide)."""
    v1.disable_v2_behavior()
    from tf2caffe.export.tflearn_compat import import_tflearn
    save_tflearn(import_tflearn(), folder, "tflearn_classic", tflearn_network)
    save_slim_inception(folder)


TF1_SOURCES = {"tflearn_classic": "tflearn_classic.tfl", "slim_inception": "slim_inception.ckpt",
               "slim_inception_frozen": "slim_inception_frozen.pb"}
MODELS = list(TF1_SOURCES) + ["tflearn_v2", "slim_resnet", "lowlevel", "keras_export"]


# --------------------------------------------------------------------------- fixtures
# The tests that use it are marked slow: it builds, trains and exports every source.
@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Every source model, exported with per-layer activations. The TF1 sources are built and
    converted in subprocesses, meanwhile the others here."""
    folder = tmp_path_factory.mktemp("graph_sources")
    builder = start_script(__file__, "build-tf1", folder)
    from tf2caffe.export.tflearn_compat import import_tflearn
    save_tflearn(import_tflearn(), folder, "tflearn_v2", tflearn_network)
    save_slim_resnet(folder)
    save_lowlevel(folder)
    save_keras_export(folder)
    finish(builder, "building the TF1 sources")
    converter = start_script(__file__, "convert", folder, *TF1_SOURCES.values())
    export_sources(folder, ["tflearn_v2.tfl", "slim_resnet.ckpt", "lowlevel", "keras_export"])
    finish(converter, "converting the TF1 sources")
    return {"folder": folder, "paths": {name: folder / "out" / (name + ".h5") for name in MODELS}}


def read(sources, name):
    return intermediate.read(str(sources["paths"][name]))


def types(model):
    return [layer.type for layer in model.layers]


def meta_graph_ops(path: Path) -> set:
    from tensorflow.core.protobuf import meta_graph_pb2
    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(path.read_bytes())
    return {node.op for node in meta.graph_def.node}


# --------------------------------------------------------------------------- TF-side tests
TFLEARN_TYPES = ["input", "conv2d", "activation", "batch_norm", "max_pool2d", "lrn", "conv2d",
                 "activation", "avg_pool2d", "flatten", "dense", "activation", "dense", "activation"]


@pytest.mark.slow
@pytest.mark.parametrize("name, conditional", [("tflearn_classic", "Switch"), ("tflearn_v2", "If")])
def test_tflearn_checkpoint_from_the_meta_graph_alone(sources, name, conditional):
    ops = meta_graph_ops(sources["folder"] / (name + ".tfl.meta"))
    assert {conditional, "Placeholder"} <= ops and ops & {"ApplyAdam", "ResourceApplyAdam"}
    model = read(sources, name)
    assert types(model) == TFLEARN_TYPES
    layer = {l.name: l for l in model.layers}
    assert layer["Conv2D"].tf_names == {"kernel": "Conv2D/W:0", "bias": "Conv2D/b:0"}
    # tflearn's own layer names, as from an architecture module
    assert layer["Conv2D/relu"].inputs == ["Conv2D"]
    assert set(layer["BatchNormalization"].tf_names.values()) == {
        "BatchNormalization/%s:0" % v for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    assert layer["BatchNormalization"].config == {"epsilon": pytest.approx(1e-5)}
    assert layer["LocalResponseNormalization"].config == {
        "depth_radius": 2, "bias": 2.0, "alpha": pytest.approx(1e-2), "beta": 0.75}
    assert layer["Conv2D_1"].config["strides"] == [2, 2]
    assert layer["FullyConnected"].inputs == ["FullyConnected/flatten"]  # tflearn's flatten
    assert model.outputs == ["FullyConnected_1/softmax"]
    assert model.compared_layers() == ["FullyConnected_1", "FullyConnected_1/softmax"]
    assert model.attrs["source_framework"] == "tflearn"
    moving_variance = layer["BatchNormalization"].array("moving_variance")
    assert not np.allclose(moving_variance, 1.0), "training should have moved the statistics"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tflearn_classic", "tflearn_v2"])
def test_tflearn_inference_graph_reproduces_tflearn_predict(sources, name):
    folder = sources["folder"]
    graph_def, inputs, outputs = graph.load_graph(folder / (name + ".tfl"))
    assert (inputs, outputs) == (["input/X:0"], ["FullyConnected_1/Softmax:0"])
    assert not {n.op for n in graph_def.node} & {"Switch", "Merge", "If", "StatelessIf", "VariableV2",
                                                  "VarHandleOp", "ApplyAdam", "ResourceApplyAdam"}
    x = np.load(folder / (name + ".x.npy"))
    (got,) = graph.run_graph_def(graph_def, {inputs[0]: x}, outputs)
    np.testing.assert_allclose(got, np.load(folder / (name + ".predictions.npy")), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_slim_checkpoint_with_switch_merge_conditionals(sources):
    assert {"Switch", "Merge", "VariableV2"} <= meta_graph_ops(sources["folder"] / "slim_inception.ckpt.meta")
    model = read(sources, "slim_inception")
    layer = {l.name: l for l in model.layers}
    assert model.inputs == ["images"] and model.outputs == ["Predictions"]
    stem = layer["InceptionV1/Conv2d_1a_7x7"]
    assert stem.type == "conv2d" and stem.config["strides"] == [2, 2] and stem.config["padding"] == "same"
    assert stem.tf_names == {"kernel": "InceptionV1/Conv2d_1a_7x7/weights:0"}
    assert layer["InceptionV1/Conv2d_1a_7x7/BatchNorm"].type == "batch_norm"
    assert layer["InceptionV1/Mixed_3b/concat"].type == "concat"
    assert layer["InceptionV1/Mixed_3b/concat"].config == {"axis": 3}
    assert len(layer["InceptionV1/Mixed_3b/concat"].inputs) == 4
    assert layer["global_pool"].type == "global_avg_pool2d"
    assert layer["global_pool"].config == {"keepdims": True}
    # Dropout's conditional resolved to its inference branch: the head reads the pooling.
    assert layer["Logits"].inputs == ["global_pool"] and layer["Logits"].has("bias")
    assert layer["SpatialSqueeze"].type == "flatten"
    assert types(model).count("batch_norm") == 15 and types(model).count("concat") == 2


@pytest.mark.slow
def test_frozen_pb_keeping_the_training_flag(sources):
    checkpoint, frozen = read(sources, "slim_inception"), read(sources, "slim_inception_frozen")
    assert [(l.name, l.type) for l in frozen.layers] == [(l.name, l.type) for l in checkpoint.layers]
    x = next(iter(checkpoint.reference_inputs.values()))[()]
    assert np.array_equal(x, next(iter(frozen.reference_inputs.values()))[()])
    np.testing.assert_allclose(frozen.activation("Predictions"), checkpoint.activation("Predictions"),
                               rtol=1e-6, atol=1e-7)
    assert frozen.attrs["source_framework"] == "tf1-graph"


@pytest.mark.slow
def test_slim_checkpoint_with_v2_conditionals_and_resource_variables(sources):
    assert {"If", "VarHandleOp"} <= meta_graph_ops(sources["folder"] / "slim_resnet.ckpt.meta")
    model = read(sources, "slim_resnet")
    layer = {l.name: l for l in model.layers}
    unit = "resnet_small/block1/unit_1/bottleneck_v1"
    assert layer[unit + "/shortcut"].type == "conv2d"
    shortcut_bn = layer[unit + "/shortcut/BatchNorm"]
    assert shortcut_bn.tf_names["moving_mean"] == unit + "/shortcut/BatchNorm/moving_mean:0"
    assert layer[unit + "/add"].type == "add"
    assert layer["resnet_small/Pad"].type == "pad2d"  # conv2d_same: explicit pad, then 'valid'
    assert layer["resnet_small/conv1"].config["padding"] == "valid"
    assert layer["resnet_small/pool5"].type == "global_avg_pool2d"
    assert types(model).count("batch_norm") == 15 and types(model).count("add") == 4
    assert layer["squeeze"].type == "flatten" and layer["logits"].type == "dense"
    assert model.outputs == ["predictions"] and model.compared_layers() == ["logits", "predictions"]


@pytest.mark.slow
def test_lowlevel_saved_model(sources):
    model = read(sources, "lowlevel")
    layer = {l.name: l for l in model.layers}
    assert layer["lowlevel/conv1"].tf_names == {"kernel": "lowlevel/conv1/kernel:0",
                                                "bias": "lowlevel/conv1/bias:0"}
    assert layer["lowlevel/dw"].type == "depthwise_conv2d"
    assert layer["lowlevel/dw"].config["depth_multiplier"] == 2
    assert layer["lowlevel/bn"].type == "batch_norm"  # tf.nn.batch_normalization's mul/add pattern
    assert layer["lowlevel/bn"].config == {"epsilon": pytest.approx(1e-3)}
    assert layer["lowlevel/fbn"].type == "batch_norm"
    assert layer["lowlevel/up"].type == "conv2d_transpose"
    assert layer["lowlevel/up"].config["strides"] == [2, 2]
    assert layer["Pad"].config == {"padding": [[1, 1], [1, 1]], "mode": "constant", "value": 0.0}
    assert layer["LeakyRelu"].config == {"function": "leaky_relu", "alpha": pytest.approx(0.1)}
    assert [layer[n].config for n in ("mul", "add_1")] == [{"scale": 0.5, "offset": 0.0},
                                                             {"scale": 1.0, "offset": 1.0}]
    assert layer["mul_1"].type == "rescale" and len(layer["mul_1"].config["scale"]) == 4
    assert sorted(set(types(model))) == sorted([
        "input", "conv2d", "activation", "depthwise_conv2d", "batch_norm", "pad2d", "max_pool2d",
        "conv2d_transpose", "avg_pool2d", "rescale", "concat", "global_avg_pool2d", "dense"])
    assert model.outputs == ["Softmax"] and model.compared_layers() == ["lowlevel/fc", "Softmax"]


@pytest.mark.slow
def test_keras_exported_saved_model(sources):
    model = read(sources, "keras_export")
    layer = {l.name: l for l in model.layers}
    assert layer["conv"].tf_names == {"kernel": "conv/kernel:0", "bias": "conv/bias:0"}
    repeats = [l for l in model.layers if l.type == "upsample2d"]
    assert [l.config for l in repeats] == [{"size": [2, 1], "interpolation": "nearest"},
                                           {"size": [1, 2], "interpolation": "nearest"}]
    assert layer["bn"].type == "batch_norm" and layer["sep"].type == "depthwise_conv2d"
    sigmoid = next(l for l in model.layers if l.config.get("function") == "sigmoid")
    assert model.consumers(sigmoid.name)[0].type == "multiply"  # swish through its IdentityN
    assert "identity" not in types(model) and model.compared_layers()[0] == "dense"


def test_ambiguous_outputs_name_the_candidates(tmp_path):
    path = frozen_pb(tmp_path, "two_towers", lambda x: [
        tf.nn.relu(conv(x, 4, "left"), name="left_out"), tf.nn.relu(conv(x, 4, "right"), name="right_out")])
    with pytest.raises(ConversionError) as error:
        graph.load_graph(path)
    message = str(error.value)
    assert "left_out" in message and "right_out" in message and "--outputs" in message
    graph_def, inputs, outputs = graph.load_graph(path, outputs="right_out")
    assert (inputs, outputs) == (["images:0"], ["right_out:0"])
    assert "left/Conv2D" not in {n.name for n in graph_def.node}


def test_predictions_win_over_logits_that_only_the_loss_reads(tmp_path):
    def build(x):
        logits = tf.reduce_mean(conv(x, 4, "c"), [1, 2], name="logits")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
        return [tf.nn.softmax(tf.reshape(logits, [-1, 1, 1, 4]), name="predictions"), loss]
    _, inputs, outputs = graph.load_graph(frozen_pb(tmp_path, "logits_and_loss", build))
    assert (inputs, outputs) == (["images:0"], ["predictions:0"])


def test_outputs_depending_on_a_scalar_placeholder_are_refused(tmp_path):
    def build(x):
        keep = v1.placeholder(tf.float32, [], name="keep_prob")
        return [tf.nn.softmax(tf.nn.dropout(conv(x, 4, "c"), rate=1 - keep), name="out")]
    with pytest.raises(ConversionError, match=r"keep_prob \(float32, rank 0\)"):
        graph.load_graph(frozen_pb(tmp_path, "keep_prob", build))


def test_unsupported_ops_are_all_listed_at_once(tmp_path):
    def build(x):
        y = tf.nn.relu(conv(x, 4, "c"))
        y = tf.cos(tf.math.cumsum(y, axis=-1))
        return [tf.sin(tf.nn.max_pool2d(y, 2, 2, "VALID"), name="out")]
    path = frozen_pb(tmp_path, "odd_ops", build)
    with pytest.raises(UnsupportedError) as error:
        export(path, tmp_path / "out")
    ops = {problem.split("(")[1].split(")")[0] for problem in error.value.problems}
    assert {"Cumsum", "Cos", "Sin"} <= ops
    assert all(problem.startswith("'") for problem in error.value.problems)
    assert "output found: out:0; pass --outputs" in str(error.value)
    assert not (tmp_path / "out" / "odd_ops.h5").exists()


def test_l2_normalize_and_reductions(tmp_path):
    """tf.math.l2_normalize's Square/Sum/Maximum/Rsqrt/Mul chain is one layer; reductions over
    any axes are `reduce` layers, except a mean or max over H and W (global pooling)."""
    def build(x):
        y = tf.math.l2_normalize(conv(x, 4, "c"), axis=-1, name="unit")
        pooled = tf.reduce_max(y, [1, 2], name="pooled")
        return [tf.concat([tf.reduce_prod(y, [1, 3], name="prod"), pooled], 1, name="out")]
    model = graph.source_to_intermediate(frozen_pb(tmp_path, "reductions", build))
    layer = {l.name: l for l in model.layers}
    assert (layer["unit"].type, layer["unit"].config) == (
        "l2_normalize", {"axes": [3], "epsilon": pytest.approx(1e-12)})
    assert layer["unit"].inputs == ["c"]
    assert (layer["prod"].type, layer["prod"].config) == (
        "reduce", {"operation": "prod", "axes": [1, 3], "keepdims": False})
    assert layer["pooled"].type == "global_max_pool2d"


def test_atrous_convolutions_become_dilated_convolutions(tmp_path):
    """SpaceToBatchND -> Conv2D/DepthwiseConv2dNative -> BatchToSpaceND (padded to a multiple
    of the rate, cropped again on a 9x11 input) is one dilated convolution."""
    def build(x):
        y = tf.nn.depthwise_conv2d(x, v1.get_variable("dw", [3, 3, 3, 2]), [1, 1, 1, 1], "SAME",
                                   dilations=[2, 2])
        y = tf.nn.atrous_conv2d(y, v1.get_variable("kernel", [3, 3, 6, 4]), 2, "SAME")
        return [tf.nn.relu(tf.nn.atrous_conv2d(y, v1.get_variable("k", [3, 3, 4, 4]), 3, "VALID"), name="out")]
    model = graph.source_to_intermediate(frozen_pb(tmp_path, "atrous", build, shape=(None, 9, 11, 3)))
    assert [(l.type, l.config.get("dilation"), l.config.get("padding")) for l in model.layers[1:]] == [
        ("depthwise_conv2d", [2, 2], "same"), ("conv2d", [2, 2], "same"), ("conv2d", [3, 3], "valid"),
        ("activation", None, None)]
    assert model.activation("out").shape == (1, 3, 5, 4)


def test_transpose_and_expand_dims(tmp_path):
    """A Transpose to channels-first before a flatten and a MatMul (a head ported from Caffe) is a
    permute folded into the dense; ExpandDims of a sequence (N, T, F) -> (N, T, F, 1) is a
    reshape. Both exact in bvlc."""
    import harness

    def head(x):
        y = tf.transpose(conv(x, 4, "c"), [0, 3, 1, 2], name="chw")
        return [tf.matmul(tf.reshape(y, [-1, 4 * 8 * 8]), v1.get_variable("w", [256, 3]), name="out")]

    def sequence(x):
        return [tf.nn.relu(conv(tf.expand_dims(x, -1, name="image"), 2, "c"), name="out")]
    models = {name: graph.source_to_intermediate(frozen_pb(tmp_path, name, build, shape))
              for name, build, shape in (("transpose_head", head, (None, 8, 8, 3)),
                                         ("expand_sequence", sequence, (None, 6, 5)))}
    chw = models["transpose_head"].layer("chw")
    assert (chw.type, chw.config) == ("permute", {"dims": [3, 1, 2]})
    image = models["expand_sequence"].layer("image")
    assert (image.type, image.config) == ("reshape", {"target_shape": [6, 5, 1]})
    for result in harness.convert_intermediate_batch(models, tmp_path / "caffe").values():
        harness.assert_exact(result)


def test_conditionals_on_the_input_are_refused(tmp_path):
    def build(x):
        y = conv(x, 4, "c")
        return [tf.cond(tf.reduce_mean(y) > 0, lambda: tf.nn.relu(y), lambda: tf.tanh(y), name="out")]
    with pytest.raises(UnsupportedError, match=r"'out' \((Stateless)?If\): control flow"):
        export(frozen_pb(tmp_path, "data_cond", build), tmp_path / "out")


def test_unknown_input_dimensions_need_an_input_shape(tmp_path):
    path = frozen_pb(tmp_path, "any_size", lambda x: [tf.nn.relu(conv(x, 4, "c"), name="out")],
                     shape=(None, None, None, 3))
    with pytest.raises(ConversionError, match=r"unknown dimensions.*--input-shape"):
        graph.load_graph(path)
    model = graph.source_to_intermediate(path, input_shape=[2, 6, 10, 3])
    assert model.layer("images").output_shape == [2, 6, 10, 3]
    assert model.activation("out").shape == (2, 6, 10, 4)


@pytest.mark.slow
def test_unknown_signature_lists_the_signatures(sources):
    with pytest.raises(ConversionError, match=r"no signature 'predict' \(signatures: serving_default\)"):
        graph.load_graph(sources["folder"] / "lowlevel", signature="predict")


def test_output_file_stems():
    sources = ("x/model.tfl", "x/model.ckpt-1000", "x/my.net.pb", "x/model.ckpt.meta")
    assert [graph.model_stem(p) for p in sources] == ["model", "model", "my.net", "model"]


def test_missing_source():
    with pytest.raises(ConversionError, match="no such file"):
        graph.load_graph("/nonexistent/model.ckpt")


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    import harness
    return harness.convert_h5_batch(sources["paths"], tmp_path_factory.mktemp("graph_caffe"))


@pytest.mark.slow
@pytest.mark.chroot
@pytest.mark.parametrize("name", MODELS)
def test_end_to_end_in_pycaffe_and_opencv(converted, name):
    import harness
    harness.assert_exact(converted[name])


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "build-tf1":
        build_tf1_sources(folder)
    elif command == "convert":
        export_sources(folder, sys.argv[3:])


def test_keras2_saved_model_with_a_legacy_optimizer(tmp_path):
    """A Keras 2 (tf_keras) model trained with a legacy optimizer and saved as a SavedModel: its
    Adam slots made TensorFlow's loader fail ('_UserObject' has no attribute 'add_slot')."""
    import tf_keras

    from harness import assert_exact, convert_h5_batch

    tf_keras.utils.set_random_seed(7)
    L = tf_keras.layers
    inputs = L.Input((12, 12, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    model = tf_keras.Model(inputs, L.Dense(5, name="dense")(x))
    model.compile(tf_keras.optimizers.legacy.Adam(), "mse")
    rng = np.random.default_rng(7)
    model.fit(rng.standard_normal((8, 12, 12, 3)), rng.standard_normal((8, 5)), epochs=2, verbose=0)
    model.save(str(tmp_path / "keras2"))
    h5 = export(tmp_path / "keras2", tmp_path / "out", per_layer=True)
    exported = intermediate.read(str(h5))
    dense = next(layer for layer in exported.layers if layer.type == "dense")
    np.testing.assert_array_equal(dense.array("kernel"), model.get_layer("dense").kernel.numpy())
    exported.file.close()
    assert_exact(convert_h5_batch({"keras2": h5}, tmp_path / "out")["keras2"])
