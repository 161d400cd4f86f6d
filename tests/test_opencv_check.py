"""How OpenCV's Caffe runtime hands out named outputs (TensorFlow side, no Caffe needed: the
.caffemodel is written by tf2caffe's native writer)."""
import numpy as np

from tf2caffe import opencv_check
from tf2caffe.caffe import native_backend, verify
from tf2caffe.caffe.deploy import DeployOptions
from tf2caffe.caffe.emit import Blob
from tf2caffe.caffe.netspec import CaffeLayer, NetSpec, shape_param


def one_by_one(x, weight, bias):
    return np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias[None, :, None, None]


def conv_weights(rng, outputs, inputs):
    return rng.randn(outputs, inputs, 1, 1).astype(np.float32), rng.randn(outputs).astype(np.float32)


def saved_net(tmp_path, name, layers):
    """(net, prototxt, caffemodel) of `layers`, written by the native writer."""
    net = NetSpec(name)
    for layer in layers:
        net.add(layer)
    prototxt, caffemodel = str(tmp_path / (name + ".prototxt")), str(tmp_path / (name + ".caffemodel"))
    native_backend.save(net, prototxt, caffemodel)
    return net, prototxt, caffemodel


def test_outputs_of_in_place_layers_second_tops_and_renamed_convolutions(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 4, 5).astype(np.float32)
    (w1, b1), (w2, b2) = conv_weights(rng, 4, 3), conv_weights(rng, 2, 4)
    net, prototxt, caffemodel = saved_net(tmp_path, "fetch", [
        CaffeLayer("data", "Input", [], ["data"], {"input_param": {"shape": shape_param(x.shape)}}),
        CaffeLayer("conv_layer", "Convolution", ["data"], ["conv"],
                   {"convolution_param": {"num_output": 4, "kernel_size": 1}}, [w1, b1]),
        CaffeLayer("relu", "ReLU", ["conv"], ["conv"]),
        CaffeLayer("split", "Slice", ["conv"], ["first", "rest"], {"slice_param": {"axis": 2, "slice_point": [1]}}),
        CaffeLayer("silence", "Silence", ["first"], []),
        # OpenCV 4.x names a Convolution after its top: found through the blob name.
        CaffeLayer("conv2_layer", "Convolution", ["rest"], ["conv2"],
                   {"convolution_param": {"num_output": 2, "kernel_size": 1}}, [w2, b2]),
    ])

    relu = np.maximum(one_by_one(x, w1, b1), 0)
    expected = {"relu": relu, "rest": relu[:, :, 1:], "conv2": one_by_one(relu[:, :, 1:], w2, b2)}
    writers = verify.last_writers([(layer.name, layer.tops) for layer in net.layers])
    targets = {name: verify.Target(name, Blob(name if name != "relu" else "conv", value.shape),
                                   *writers[name if name != "relu" else "conv"])
               for name, value in expected.items()}
    assert (targets["relu"].caffe_layer, targets["rest"].top_index) == ("relu", 1)
    fetched = opencv_check.run(opencv_check.load(prototxt, caffemodel), {"data": x}, targets, prototxt)
    for name, value in expected.items():
        np.testing.assert_allclose(fetched[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_deployed_run_sees_what_fusion_breaks_and_names_the_fused_layers(tmp_path):
    """A conv + sigmoid output that a Concat reads too, written without the Split that emit puts
    there: fetched blob by blob (fusion off) OpenCV computes it right; as deployed (default
    settings, only the outputs asked for) it fuses conv + sigmoid and returns garbage. The
    deployed run must see that, and the report name the fused layers."""
    from tf2caffe import intermediate, report
    rng = np.random.RandomState(0)
    x = rng.randn(1, 3, 4, 4).astype(np.float32)
    (w1, b1), (w2, b2) = conv_weights(rng, 2, 3), conv_weights(rng, 2, 3)
    net, prototxt, caffemodel = saved_net(tmp_path, "fused", [
        CaffeLayer("data", "Input", [], ["data"], {"input_param": {"shape": shape_param(x.shape)}}),
        CaffeLayer("sig/logits", "Convolution", ["data"], ["sig/logits"],
                   {"convolution_param": {"num_output": 2, "kernel_size": 1}}, [w1, b1]),
        CaffeLayer("sig", "Sigmoid", ["sig/logits"], ["sig"]),
        CaffeLayer("other", "Convolution", ["data"], ["other"],
                   {"convolution_param": {"num_output": 2, "kernel_size": 1}}, [w2, b2]),
        CaffeLayer("cat", "Concat", ["sig", "other"], ["cat"]),
    ])
    sig = 1 / (1 + np.exp(-one_by_one(x, w1, b1)))
    cat = np.concatenate([sig, one_by_one(x, w2, b2)], axis=1)
    nhwc = lambda value: value.transpose(0, 2, 3, 1)  # noqa: E731
    model = intermediate.Model("fused", [
        intermediate.Layer("data", "input", [], {}, [1, 4, 4, 3]),
        intermediate.Layer("sig", "activation", ["data"], {"function": "linear"}, [1, 4, 4, 2]),
        intermediate.Layer("cat", "concat", ["sig", "data"], {"axis": 3}, [1, 4, 4, 4])],
        ["sig", "cat"], reference_inputs={"data": nhwc(x)},
        reference_activations={"sig": nhwc(sig), "cat": nhwc(cat)})
    writers = verify.last_writers([(layer.name, layer.tops) for layer in net.layers])
    targets = {name: verify.Target(name, Blob(name, value.shape), *writers[name])
               for name, value in {"sig": sig, "cat": cat}.items()}

    # Fetching the logits too (as verification compares them) keeps OpenCV from fusing them.
    logits = verify.Target("logits", Blob("sig/logits", sig.shape), *writers["sig/logits"])
    fetched = opencv_check.run(opencv_check.load(prototxt, caffemodel), {"data": x}, dict(targets, logits=logits),
                               prototxt)
    np.testing.assert_allclose(fetched["sig"], sig, rtol=1e-5, atol=1e-5)
    deployed, fused = opencv_check.deployed(model, {"data": "data"}, targets, prototxt, caffemodel, DeployOptions())
    assert not deployed["sig"]["max_rel"] <= 1e-4 and deployed["cat"]["max_rel"] < 1e-5, deployed  # garbage or NaN
    assert ["sig/logits", "sig"] in fused, fused

    result = report.FileResult("fused.h5", targets=verify.targets_to_json(targets), verified=True)
    result.add_runtime("OpenCV", report.runtime_errors(
        {"sig": report.layer_error(0.0, 1e-7)}, {}, None, deployed, fused), 1e-4)
    assert result.verified is False
    (failure,) = result.failures(1e-4)
    assert failure[:2] == ("OpenCV", "sig") and "it fuses sig/logits + sig" in failure[3], failure
