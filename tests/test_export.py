"""The export stage on its own (TensorFlow side): vocabulary mapping, reference data, errors."""
import zipfile

import keras
import numpy as np
import pytest
from keras import layers

from tf2caffe import intermediate
from tf2caffe.errors import ConversionError, UnsupportedError
from tf2caffe.export import export
from tf2caffe.export.keras import model_to_intermediate


def functional(build, shape=(8, 8, 3), name="x"):
    inputs = keras.Input(shape, name=name)
    return keras.Model(inputs, build(inputs))


def by_name(model):
    return {layer.name: layer for layer in model.layers}


def test_fused_activation_is_split_into_its_own_layer():
    model = functional(lambda x: layers.Conv2D(4, 3, strides=2, dilation_rate=1, padding="same",
                                               activation="relu", name="conv")(x))
    result = model_to_intermediate(model, "m")
    conv, relu = by_name(result)["conv"], by_name(result)["conv/relu"]
    assert conv.type == "conv2d" and conv.inputs == ["x"]
    assert conv.config == dict(filters=4, kernel_size=[3, 3], strides=[2, 2], dilation=[1, 1],
                               padding="same", groups=1)
    assert conv.arrays["kernel"].shape == (3, 3, 3, 4) and conv.arrays["bias"].shape == (4,)
    assert conv.tf_names == {"kernel": "conv/kernel", "bias": "conv/bias"}
    assert relu.type == "activation" and relu.config == {"function": "relu"} and relu.inputs == ["conv"]
    assert result.outputs == ["conv/relu"]
    assert conv.output_shape == [1, 4, 4, 4]


def test_layer_options_are_recorded_in_vocabulary_terms():
    def build(x):
        a = layers.SeparableConv2D(6, 3, padding="same", use_bias=True, name="sep")(x)
        b = layers.BatchNormalization(center=False, scale=False, epsilon=0.01, name="bn")(a)
        c = layers.Concatenate(axis=-1, name="cat")([b, a])
        d = layers.Softmax(axis=-1, name="soft")(c)
        e = layers.Dropout(0.5, name="drop")(d)
        f = layers.ReLU(max_value=6.0, name="r6")(e)
        return layers.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(f)

    layer = by_name(model_to_intermediate(functional(build), "m"))
    assert layer["sep/depthwise"].type == "depthwise_conv2d" and set(layer["sep/depthwise"].arrays) == {"kernel"}
    assert layer["sep"].type == "conv2d" and layer["sep"].arrays["kernel"].shape == (1, 1, 3, 6)
    assert layer["sep"].inputs == ["sep/depthwise"] and layer["sep"].tf_names["kernel"] == "sep/pointwise_kernel"
    assert layer["bn"].config == {"epsilon": 0.01} and set(layer["bn"].arrays) == {"moving_mean", "moving_variance"}
    assert layer["cat"].config == {"axis": 3} and layer["cat"].inputs == ["bn", "sep"]
    assert layer["soft"].config == {"function": "softmax", "axis": 3}
    assert layer["drop"].type == "identity" and "Dropout" in layer["drop"].config["reason"]
    assert layer["r6"].config == {"function": "relu6"}
    assert layer["pad"].config == {"padding": [[1, 0], [2, 1]], "mode": "constant", "value": 0.0}


def test_reference_activations_are_tensorflows_for_a_seeded_input():
    model = functional(lambda x: layers.Dense(5, activation="softmax", name="out")(
        layers.Flatten(name="flat")(layers.Conv2D(3, 3, name="conv")(x))))
    result = model_to_intermediate(model, "m", seed=3)
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(result.reference_inputs["x"], x)
    assert sorted(result.reference_activations) == ["out", "out/softmax"]  # output and its logits
    np.testing.assert_allclose(result.reference_activations["out/softmax"], model(x), rtol=1e-6)
    assert len(model_to_intermediate(model, "m", per_layer=True).reference_activations) == 5


def test_input_shape_fills_undefined_dimensions_and_is_required_for_them():
    model = functional(lambda x: layers.Conv2D(2, 3, name="conv")(x), shape=(None, None, 3), name="img")
    with pytest.raises(ConversionError, match="input 'img' has undefined dimensions"):
        model_to_intermediate(model, "m")
    result = model_to_intermediate(model, "m", input_shape=(2, 10, 12, 3))
    assert by_name(result)["conv"].output_shape == [2, 8, 10, 2]


def test_every_unsupported_layer_is_reported_at_once():
    model = functional(lambda x: layers.Conv2D(2, 1, activation="log_softmax", name="conv")(
        layers.LayerNormalization(axis=1, name="norm")(x)))
    with pytest.raises(UnsupportedError) as raised:
        model_to_intermediate(model, "m")
    problems = raised.value.problems
    assert len(problems) == 2
    assert "'norm' (LayerNormalization)" in problems[0] and "'conv' (Conv2D)" in problems[1]
    assert "only the last" in problems[0] and "log_softmax" in problems[1]


def test_keras_file_exports_to_a_readable_intermediate(tmp_path):
    model = functional(lambda x: layers.MaxPooling2D(2, name="pool")(layers.Conv2D(2, 3, name="conv")(x)))
    model.save(tmp_path / "small.keras")
    path = export(tmp_path / "small.keras", tmp_path / "out", per_layer=True)
    assert path == tmp_path / "out" / "small.h5"
    model = intermediate.read(str(path))
    assert [layer.name for layer in model.layers] == ["x", "conv", "pool"]
    assert model.attrs["source_framework"] == "keras" and model.attrs["source_path"].endswith("small.keras")


def test_legacy_h5_exports_and_is_never_overwritten(tmp_path):
    model = functional(lambda x: layers.Dense(3, name="fc")(layers.GlobalMaxPooling2D(name="gmp")(x)))
    model.save(tmp_path / "legacy.h5")
    with pytest.raises(ConversionError, match="legacy.h5: the intermediate would overwrite the source"):
        export(tmp_path / "legacy.h5", tmp_path)
    model = intermediate.read(str(export(tmp_path / "legacy.h5", tmp_path / "out")))
    assert [layer.type for layer in model.layers] == ["input", "global_max_pool2d", "dense"]


def test_lambda_layers_are_refused_by_name(tmp_path):
    model = functional(lambda x: layers.Lambda(lambda t: t * 2, name="double")(x))
    model.save(tmp_path / "code.keras")
    with pytest.raises(ConversionError, match=r"code\.keras: 1 unsupported layer\(s\): 'double' \(Lambda\): holds "
                                              r"Python code"):
        export(tmp_path / "code.keras", tmp_path)


def test_a_lambda_is_refused_with_every_layer_whose_class_has_no_mapping(tmp_path):
    """The model is never loaded (it would run the Lambda's code): the others come from its config."""
    inputs = keras.Input((6, 4))
    x = layers.LSTM(3, return_sequences=True, name="recurrent")(inputs)
    x = layers.Lambda(lambda t: t * 2, name="double")(x)
    keras.Model(inputs, layers.Dense(2, name="head")(x)).save(tmp_path / "code.keras")
    with pytest.raises(ConversionError) as refused:
        export(tmp_path / "code.keras", tmp_path)
    message = str(refused.value)
    assert "2 unsupported layer(s)" in message and "'double' (Lambda)" in message
    assert "'recurrent' (LSTM): layer class LSTM is not supported" in message and "'head'" not in message


def bad_source(folder, kind):
    if kind == "plain directory":
        (folder / "plain").mkdir()
        return folder / "plain"
    if kind == "directory":
        (folder / "folder.keras").mkdir()
        return folder / "folder.keras"
    contents = {"truncated": ("m.keras", b"PK\x03\x04 truncated"), "extension": ("m.onnx", b"")}
    if kind in contents:
        name, data = contents[kind]
        (folder / name).write_bytes(data)
        return folder / name
    return folder / "absent.keras"


@pytest.mark.parametrize("kind, message", [
    ("missing", "absent.keras: no such file"),
    ("directory", "folder.keras: is a directory"),
    ("truncated", "m.keras: not a valid .keras"),
    ("extension", "m.onnx: unknown model type '.onnx'"),
    ("plain directory", "plain: is a directory, not a model file"),
])
def test_bad_sources_are_one_line_errors_naming_the_file(tmp_path, kind, message):
    with pytest.raises(ConversionError, match=message) as raised:
        export(bad_source(tmp_path, kind), tmp_path / "out")
    assert "\n" not in str(raised.value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ConversionError, match="nowhere.tfl: no such checkpoint"):
        export("architectures/digits.py", tmp_path, checkpoint=tmp_path / "nowhere.tfl")


def test_corrupt_member_of_a_keras_zip_is_reported(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(ConversionError, match="bad.keras: not a valid .keras file"):
        export(tmp_path / "bad.keras", tmp_path)


def test_tflearn_vgg19_maps_every_layer_onto_the_hand_written_prototxt_names(tmp_path):
    path = export("architectures/vgg19.py", tmp_path, input_shape=(1, 32, 32, 3))
    model = intermediate.read(str(path))
    names = [layer.name for layer in model.layers]
    convs = ["Conv2D"] + ["Conv2D_%d" % i for i in range(1, 16)]
    assert [n for n in names if n.startswith("Conv2D") and "/" not in n] == convs
    # Dropout is the identity at inference: no layer.
    assert names[-7:] == ["FullyConnected/flatten", "FullyConnected", "FullyConnected/relu",
                          "FullyConnected_1", "FullyConnected_1/relu", "FullyConnected_2",
                          "FullyConnected_2/softmax"]
    layer = by_name(model)
    assert layer["Conv2D"].caffe_name == "conv1_1" and layer["Conv2D_15"].caffe_name == "conv5_4"
    assert layer["MaxPool2D_4"].caffe_name == "pool5" and layer["FullyConnected_2"].caffe_name == "fc8"
    assert layer["MaxPool2D"].config == {"pool_size": [2, 2], "strides": [2, 2], "padding": "same"}
    assert layer["Conv2D_1"].tf_names == {"kernel": "Conv2D_1/W:0", "bias": "Conv2D_1/b:0"}
    assert layer["FullyConnected"].arrays["kernel"].shape == (512, 4096)
    assert model.outputs == ["FullyConnected_2/softmax"]
    assert sorted(model.reference_activations) == ["FullyConnected_2", "FullyConnected_2/softmax"]
    assert model.attrs["weights_source"] == "seeded random (seed 0)"


def test_digits_trains_at_export_to_over_90_percent(tmp_path, capsys):
    model = intermediate.read(str(export("architectures/digits.py", tmp_path)))
    logits = model.activation("FullyConnected_1")
    accuracy = np.mean(np.argmax(logits, axis=1) == model.labels)
    assert len(model.labels) == 360 and accuracy > 0.9
    assert "TensorFlow accuracy on the 360 reference samples" in capsys.readouterr().out


SMALL_ARCHITECTURE = '''
import tflearn

DEFAULT_INPUT_SHAPE = (2, 6, 6, 3)
CAFFE_NAMES = {}


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 4, 3, strides=2, padding="valid", activation="tanh", name="conv")
    net = tflearn.batch_normalization(net, epsilon=1e-3, name="bn")
    net = tflearn.local_response_normalization(net, depth_radius=2, bias=2.0, alpha=1e-3, beta=0.5)
    net = tflearn.avg_pool_2d(net, 2, strides=1)
    return tflearn.fully_connected(net, 3, name="fc")
'''


def test_tflearn_checkpoint_weights_and_layer_options_are_exported(tmp_path):
    from tf2caffe.export.tflearn_compat import import_tflearn
    import tensorflow as tf

    tflearn = import_tflearn()
    (tmp_path / "small.py").write_text(SMALL_ARCHITECTURE)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(7)
        exec(compile(SMALL_ARCHITECTURE, "small.py", "exec"), namespace := {})
        dnn = tflearn.DNN(namespace["build"]((2, 6, 6, 3)), tensorboard_dir=str(tmp_path))
        moving_mean = tf.compat.v1.global_variables("bn/moving_mean")[0]
        dnn.session.run(moving_mean.assign([0.1, 0.2, 0.3, 0.4]))
        saved = dnn.session.run({v.op.name: v for v in tf.compat.v1.global_variables()})
        dnn.save(str(tmp_path / "small.tfl"))
    model = intermediate.read(str(export(tmp_path / "small.py", tmp_path / "out",
                                         checkpoint=tmp_path / "small.tfl", per_layer=True)))
    layer = by_name(model)
    np.testing.assert_array_equal(layer["conv"].array("kernel"), saved["conv/W"])
    np.testing.assert_array_equal(layer["fc"].array("kernel"), saved["fc/W"])
    np.testing.assert_array_equal(layer["bn"].array("moving_mean"), np.float32([0.1, 0.2, 0.3, 0.4]))
    assert layer["conv"].config["strides"] == [2, 2] and layer["conv"].config["padding"] == "valid"
    assert layer["conv/tanh"].type == "activation"
    # float32 graph constants: recorded as TensorFlow uses them
    assert layer["bn"].config == {"epsilon": pytest.approx(1e-3)} and layer["bn"].inputs == ["conv/tanh"]
    assert layer["LocalResponseNormalization"].config == pytest.approx(
        dict(depth_radius=2, bias=2.0, alpha=1e-3, beta=0.5))
    assert layer["AvgPool2D"].config == {"pool_size": [2, 2], "strides": [1, 1], "padding": "same"}
    assert [l.name for l in model.layers][-2:] == ["fc/flatten", "fc"] and model.outputs == ["fc"]
    assert model.attrs["weights_source"].startswith("checkpoint")


class OwnScale(layers.Layer):
    """A layer class of the user's own: refused, whatever it computes."""

    def call(self, x):
        return x * 2.0


def test_refusals_of_one_type_and_reason_are_one_group():
    def build(x):
        for index in range(5):
            x = OwnScale(name="own_scale" + ("_%d" % index if index else ""))(x)
        return layers.ReLU(name="relu")(x)

    with pytest.raises(UnsupportedError) as raised:
        model_to_intermediate(functional(build), "m")
    assert len(raised.value.problems) == 5
    assert str(raised.value) == ("5 unsupported layer(s): OwnScale ×5 (own_scale, own_scale_1, "
                                 "own_scale_2, …): class OwnScale is not a built-in Keras class")


def test_a_failing_supported_layer_is_an_export_failure_not_unsupported(monkeypatch):
    from tf2caffe.export import keras as keras_export

    def broken(layer, call):
        raise RuntimeError("the mapper broke\nsecond line")

    monkeypatch.setitem(keras_export.MAPPERS, "Conv2D", broken)
    model = functional(lambda x: OwnScale(name="own")(layers.Conv2D(2, 1, name="conv")(x)))
    with pytest.raises(UnsupportedError) as raised:
        model_to_intermediate(model, "m")
    assert str(raised.value) == ("1 unsupported layer(s): 'own' (OwnScale): class OwnScale is not a "
                                 "built-in Keras class; export failed: 'conv' (Conv2D): the mapper broke")
    assert isinstance(raised.value.__cause__, RuntimeError)  # the traceback --debug shows


def test_an_export_failure_is_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    """No traceback: `tf2caffe export` prints the one line (the traceback only with --debug)."""
    from tf2caffe import cli
    from tf2caffe.export import keras as keras_export

    def broken(layer, call):
        raise RuntimeError("the mapper broke")

    monkeypatch.setitem(keras_export.MAPPERS, "Conv2D", broken)
    functional(lambda x: layers.Conv2D(2, 1, name="conv")(x)).save(str(tmp_path / "m.keras"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", str(tmp_path / "m.keras"), "-o", str(tmp_path / "out")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export failed: 'conv' (Conv2D): the mapper broke" in err, err
