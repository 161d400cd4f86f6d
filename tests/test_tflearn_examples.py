"""tflearn's own example image networks (architectures/tflearn_*.py), each exported with its
seeded, conditioned weights (`train(seed)`: BatchNorm statistics randomised, kernels at unit
gain), imported in one Caffe subprocess and verified in pycaffe and OpenCV to the project's bar.

Also: the GoogLeNet into its hand-written BVLC-style prototxt (a multi-branch net in the
hand-written flow), and a legacy V1 version of architectures/vgg19.prototxt.

Examples the architecture path cannot convert yet are marked xfail(strict=True) with the reason,
so that they flip to failures (remove the mark) once the construct lands.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from harness import PROJECT_ROOT, assert_exact, convert_h5_batch

ARCHITECTURES = PROJECT_ROOT / "architectures"
SEED = 0
NOT_YET = "the architecture path maps tflearn layers one input at a time: "
VARIANCE_SCALING = ("tflearn's variance_scaling initialiser raises NotImplementedError on TensorFlow "
                    "2.21 (shimmed here); then ")
RESIDUAL = ("standalone tflearn.activation layers are refused ('TensorFlow ops Relu are not a layer'), "
            "and the residual addition and channel tf.pad are not tflearn layers, so the next layer "
            "reads two")
# example -> why it cannot convert yet (None: it converts).
EXAMPLES = {
    "alexnet": None,
    "vgg_network": None,
    "convnet_cifar10": None,
    "convnet_mnist": None,
    "network_in_network": None,
    "googlenet": NOT_YET + "merge (a concat of four branches) is refused",
    "residual_network_cifar10": VARIANCE_SCALING + RESIDUAL,
    "residual_network_mnist": VARIANCE_SCALING + RESIDUAL,
    "resnext_cifar10": VARIANCE_SCALING + RESIDUAL + "; grouped_conv_2d (DepthwiseConv2dNative) is "
                                                     "not mapped",
    "densenet": VARIANCE_SCALING + "standalone activations are refused and densenet_block's tf.concat "
                                   "is not a tflearn layer",
    "convnet_highway_mnist": "highway_conv_2d (Conv2D, Elu, Sigmoid, Mul, Sub, AddV2: a gated sum) is "
                             "not a known layer",
    "dcgan_generator": "upsample_2d (ResizeNearestNeighbor) is not mapped, and tf.nn.tanh and "
                       "tf.reshape between tflearn layers are not tflearn layers",
}


def _example(name, xfail_reason):
    marks = [pytest.mark.xfail(strict=True, reason=xfail_reason)] if xfail_reason else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def tflearn_shimmed():
    """tflearn imported through tf2caffe; its variance_scaling initialiser (which raises
    NotImplementedError on TensorFlow 2.21) replaced for this module's tests while the project's
    own shim is missing. The weights come from train() anyway."""
    import tensorflow as tf

    from tf2caffe.export.tflearn import import_tflearn

    tflearn = import_tflearn()
    initializations = tflearn.initializations
    try:
        initializations.variance_scaling()
        yield tflearn
        return
    except NotImplementedError:
        pass

    def variance_scaling(factor=2.0, mode="FAN_IN", uniform=False, seed=None, dtype=tf.float32):
        return tf.compat.v1.variance_scaling_initializer(
            scale=factor, mode=mode.lower(), distribution="uniform" if uniform else "truncated_normal",
            seed=seed, dtype=dtype)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(initializations, "variance_scaling", variance_scaling)
        yield tflearn


def _export(path, out_dir, **options):
    """Export an architecture in-process; the written .h5, or the one-line reason it failed."""
    from tf2caffe import intermediate
    from tf2caffe.export.tflearn import architecture_to_intermediate

    h5 = Path(out_dir) / (Path(path).stem + ".h5")
    try:
        model = architecture_to_intermediate(path, per_layer=True, seed=SEED, **options)
    except Exception as error:  # recorded: the test names it
        return None, "%s: %s" % (type(error).__name__, " ".join(str(error).split()))
    intermediate.write(str(h5), model)
    return h5, None


@pytest.fixture(scope="module")
def results(tmp_path_factory, tflearn_shimmed):
    out = tmp_path_factory.mktemp("tflearn_examples")
    files, export_errors = {}, {}
    for name in EXAMPLES:
        h5, error = _export(ARCHITECTURES / ("tflearn_%s.py" % name), out)
        if error:
            export_errors[name] = error
        else:
            files[name] = h5
    converted = convert_h5_batch(files, out) if files else {}
    return converted, export_errors


@pytest.mark.parametrize("name", [_example(name, reason) for name, reason in EXAMPLES.items()])
def test_tflearn_example_converts_exactly(results, name):
    converted, export_errors = results
    assert name not in export_errors, "export failed: %s" % export_errors.get(name)
    assert_exact(converted[name])


def test_every_example_module_builds_and_declares_its_interface(tflearn_shimmed):
    """Independent of the converter: each module builds in TensorFlow at its default shape and
    says it generates its prototxt (only the GoogLeNet has a hand-written one)."""
    import tensorflow as tf

    from tf2caffe.export.tflearn import load_architecture

    for name in EXAMPLES:
        module = load_architecture(ARCHITECTURES / ("tflearn_%s.py" % name))
        with tf.Graph().as_default():
            output = module.build(list(module.DEFAULT_INPUT_SHAPE))
        assert output.shape[0] is None and output.shape.rank >= 2, name
        assert hasattr(module, "train"), name
        assert bool(module.CAFFE_NAMES) == (ARCHITECTURES / ("tflearn_%s.prototxt" % name)).exists(), name


def _googlenet_through_the_graph_path(out_dir):
    """The GoogLeNet with its conditioned weights saved as a tflearn checkpoint and exported by the
    graph path (which already maps merges), named by CAFFE_NAMES as an architecture export will
    name it once architectures go through the graph mapper."""
    import tensorflow as tf

    from tf2caffe import intermediate
    from tf2caffe.export.graph.model import source_to_intermediate
    from tf2caffe.export.tflearn import import_tflearn, load_architecture

    tflearn = import_tflearn()
    module = load_architecture(ARCHITECTURES / "tflearn_googlenet.py")
    with tf.Graph().as_default():
        values = module.train(SEED)
    checkpoint = Path(out_dir) / "googlenet.tfl"
    with tf.Graph().as_default(), tempfile.TemporaryDirectory() as logs:
        dnn = tflearn.DNN(module.build(list(module.DEFAULT_INPUT_SHAPE)), tensorboard_dir=logs)
        for variable in tf.compat.v1.global_variables():
            if variable.op.name in values:
                variable.load(values[variable.op.name], dnn.session)
        dnn.save(str(checkpoint))
    model = source_to_intermediate(checkpoint, input_shape=list(module.DEFAULT_INPUT_SHAPE),
                                   per_layer=True, seed=SEED)
    unknown = set(module.CAFFE_NAMES) - {layer.name for layer in model.layers}
    assert not unknown, "CAFFE_NAMES names layers the graph path does not produce: %s" % sorted(unknown)
    for layer in model.layers:
        layer.caffe_name = module.CAFFE_NAMES.get(layer.name, layer.name)
    h5 = Path(out_dir) / "googlenet_handwritten.h5"
    intermediate.write(str(h5), model)
    return h5


def test_googlenet_fills_its_hand_written_prototxt(tmp_path, tflearn_shimmed):
    prototxt = ARCHITECTURES / "tflearn_googlenet.prototxt"
    h5 = _googlenet_through_the_graph_path(tmp_path)
    result = convert_h5_batch({"googlenet_handwritten": h5}, tmp_path,
                              extra=["--prototxt", str(prototxt)])["googlenet_handwritten"]
    assert_exact(result)
    assert result.caffe_types.count("Concat") == 9 and result.caffe_types.count("Convolution") == 57
    assert "inception_5b/output" in result.prototxt and "dim: 33" in result.prototxt


@pytest.mark.xfail(strict=True, reason=NOT_YET + "merge is refused, so the architecture export "
                                              "cannot produce the graph-path names CAFFE_NAMES uses")
def test_googlenet_architecture_export_into_its_hand_written_prototxt(tmp_path, tflearn_shimmed):
    h5, error = _export(ARCHITECTURES / "tflearn_googlenet.py", tmp_path)
    assert error is None, error
    result = convert_h5_batch({"googlenet": h5}, tmp_path,
                              extra=["--prototxt", str(ARCHITECTURES / "tflearn_googlenet.prototxt")])
    assert_exact(result["googlenet"])


# V2 layer type -> the legacy V1 enum, for the types vgg19.prototxt uses.
V1_TYPES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING",
            "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}


def v1_prototxt(v2_text: str) -> str:
    """architectures/vgg19.prototxt in the legacy V1 format of the original VGG release: the input
    as `input:`/`input_dim:` fields, `layers` entries with enum types, and the release's learning
    rate and decay multipliers on every weighted layer."""
    v2_text = re.sub(r"layer \{\s*name: \"data\"\s*type: \"Input\".*?\n\}\n", "", v2_text, flags=re.S)
    header = 'input: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n'
    text = re.sub(r'(name: "VGG_ILSVRC_19_layers"\n)', r"\1" + header, v2_text)
    text = re.sub(r"^layer \{", "layers {", text, flags=re.M)
    text = re.sub(r'type: "(\w+)"', lambda match: "type: " + V1_TYPES[match.group(1)], text)
    return re.sub(r"(type: (CONVOLUTION|INNER_PRODUCT)\n)",
                  r"\1  blobs_lr: 1\n  blobs_lr: 2\n  weight_decay: 1\n  weight_decay: 0\n", text)


def test_vgg19_into_a_legacy_v1_prototxt(tmp_path, tflearn_shimmed):
    v1 = v1_prototxt((ARCHITECTURES / "vgg19.prototxt").read_text())
    assert "layer {" not in v1 and "type: CONVOLUTION" in v1 and "input_dim: 224" in v1
    prototxt = tmp_path / "vgg19_v1.prototxt"
    prototxt.write_text(v1)
    h5, error = _export(ARCHITECTURES / "vgg19.py", tmp_path, input_shape=[2, 32, 32, 3])
    assert error is None, error
    result = convert_h5_batch({"vgg19_v1": h5}, tmp_path, extra=["--prototxt", str(prototxt)])["vgg19_v1"]
    assert_exact(result)
    # The written prototxt is the upgraded (V2) net, with the input shape of the export.
    assert "layers {" not in result.prototxt and 'type: "Convolution"' in result.prototxt
    assert "lr_mult: 2" in result.prototxt and "input_dim: 32" in result.prototxt
    assert result.caffe_types.count("Convolution") == 16
