"""tflearn constructs from both sources: each row of CONSTRUCTS is a small tflearn net saved with
`model.save`, converted from the checkpoint alone and from an architecture module restoring it,
exact in pycaffe and OpenCV, and the same intermediate layers either way.

Rows: every activation of tflearn 0.5.0's activations.py (as `conv_2d(activation=...)`),
leaky_relu and prelu fused from their op patterns into one layer each, and prelu's ops mapped
one by one where an op of the pattern is also read elsewhere. The machinery is in
tflearn_cases.py.
"""
import numpy as np
import pytest

from tflearn_cases import SOURCES, Construct, convert_constructs, described_layers, exact_keys, mapped_layers


def conv(activation):
    return lambda tflearn, net: tflearn.conv_2d(net, 8, 3, activation=activation)


def prelu_and_its_magnitude(tflearn, net):
    """prelu(conv), concatenated with the |conv| it computes inside: the pattern's Abs has a
    second reader, so the pattern cannot fuse and its ops map one by one."""
    activated = tflearn.prelu(tflearn.conv_2d(net, 8, 3))
    magnitude = activated.graph.get_tensor_by_name(activated.scope.original_name_scope + "Abs:0")
    return tflearn.merge([activated, magnitude], "concat", axis=3)


def around_conv(*types):
    return ["input", "conv2d", *types, "flatten", "dense"]


CONSTRUCTS = {
    "linear": Construct(conv("linear"), around_conv()),
    "relu": Construct(conv("relu"), around_conv("activation")),
    "relu6": Construct(conv("relu6"), around_conv("activation")),
    "leaky_relu": Construct(conv("leaky_relu"), around_conv("activation")),
    "prelu": Construct(conv("prelu"), around_conv("prelu")),
    "elu": Construct(conv("elu"), around_conv("activation")),
    "crelu": Construct(conv("crelu"), around_conv("rescale", "concat", "activation")),
    "selu": Construct(conv("selu"), around_conv("activation")),
    "softplus": Construct(conv("softplus"), around_conv("activation")),
    "softsign": Construct(conv("softsign"), around_conv("activation")),
    "sigmoid": Construct(conv("sigmoid"), around_conv("activation")),
    "tanh": Construct(conv("tanh"), around_conv("activation")),
    "softmax": Construct(conv("softmax"), around_conv("activation")),
    # 0.2·x + 0.5 clipped to [0, 1] by tf.clip_by_value: the clip is a ReLU with max_value 1.
    "hard_sigmoid": Construct(conv("hard_sigmoid"), around_conv("rescale", "rescale", "activation")),
    # tanh's approximation 0.5·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715·x³))), op by op.
    "gelu": Construct(conv("gelu"), around_conv(
        "rescale", "activation", "rescale", "add", "rescale", "activation", "rescale", "multiply")),
    "prelu_op_by_op": Construct(prelu_and_its_magnitude, around_conv(
        "activation", "activation", "subtract", "rescale", "rescale", "add", "concat")),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return convert_constructs(__name__, CONSTRUCTS, tmp_path_factory.mktemp("tflearn_constructs"))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_maps_to_its_layer_types(results, name, source):
    assert results[name + source].error is None, results[name + source].error
    assert [layer.type for layer in mapped_layers(results[name + source])] == CONSTRUCTS[name].types


@pytest.mark.parametrize("key", exact_keys(CONSTRUCTS))
def test_exact_in_pycaffe_and_opencv(results, key):
    import harness
    harness.assert_exact(results[key])


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_architecture_and_checkpoint_give_the_same_layers(results, name):
    assert described_layers(results[name + ".architecture"]) == described_layers(results[name])


def test_leaky_relu_pattern_is_one_relu_with_tflearns_slope(results):
    layer = mapped_layers(results["leaky_relu"])[2]
    assert (layer.name, layer.config) == ("Conv2D/LeakyReLU", {
        "function": "leaky_relu", "alpha": float(np.float32(0.1))})  # tflearn's default alpha
    assert results["leaky_relu"].caffe_types.count("ReLU") == 1


def test_prelu_pattern_is_one_prelu_with_the_checkpoints_alphas(results):
    layer = mapped_layers(results["prelu"])[2]
    assert layer.name == "Conv2D/PReLU" and layer.tf_names == {"alpha": "Conv2D/PReLU/alphas:0"}
    alphas = layer.array("alpha")
    assert alphas.shape == (8,) and (alphas < 0).any() and (alphas > 0).any()
    assert "PReLU" in results["prelu"].caffe_types


def test_prelu_ops_one_by_one_read_abs(results):
    functions = [layer.config.get("function") for layer in mapped_layers(results["prelu_op_by_op"])]
    assert functions.count("relu") == 1 and functions.count("abs") == 1
    assert "AbsVal" in results["prelu_op_by_op"].caffe_types


@pytest.mark.parametrize("name, caffe_types", [
    ("selu", ["ELU", "Power"]), ("softplus", ["BNLL"]), ("softsign", ["AbsVal", "Power", "Eltwise"])])
def test_activation_functions_become_bvlc_layers(results, name, caffe_types):
    types = results[name].caffe_types
    assert types[types.index("Convolution") + 1:types.index("Flatten")] == caffe_types


def test_hard_sigmoid_clip_is_a_relu_with_max_value_1(results):
    clip = mapped_layers(results["hard_sigmoid"])[4]
    assert clip.config == {"function": "relu", "max_value": 1.0}
