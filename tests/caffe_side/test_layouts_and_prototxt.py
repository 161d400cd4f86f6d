"""Verification layouts against real Caffe layers, the prototxt writer against Caffe's parser,
and the hand-written prototxt helpers (inside the Caffe chroot)."""
import caffe
import numpy as np
import pytest
from caffe.proto import caffe_pb2

from tf2caffe.caffe import handwritten, verify
from tf2caffe.caffe.emit import Blob, nchw
from tf2caffe.caffe.layout import FlatOrder
from tf2caffe.caffe.netspec import CaffeLayer, NetSpec, Quoted, shape_param
from tf2caffe.errors import ConversionError
from tf2caffe.measure import relative_error


def caffe_net(tmp_path, spec: NetSpec):
    path = tmp_path / "net.prototxt"
    path.write_text(spec.to_prototxt())
    caffe.set_mode_cpu()
    return caffe.Net(str(path), caffe.TEST)


def test_to_caffe_matches_caffe_flatten_of_an_nchw_tensor(tmp_path):
    spec = NetSpec("flatten")
    spec.add(CaffeLayer("data", "Input", [], ["data"], {"input_param": {"shape": shape_param([2, 3, 4, 5])}}))
    spec.add(CaffeLayer("flat", "Flatten", ["data"], ["flat"]))
    net = caffe_net(tmp_path, spec)
    nhwc = np.random.RandomState(0).randn(2, 4, 5, 3).astype(np.float32)
    net.blobs["data"].data[...] = Blob("data", nchw(nhwc.shape)).to_caffe(nhwc)
    net.forward()
    tf_flat = nhwc.reshape(2, -1)  # TensorFlow flattens H, W, C
    np.testing.assert_array_equal(Blob("flat", [2, 60], FlatOrder.chw((4, 5, 3))).to_caffe(tf_flat), net.blobs["flat"].data)


def test_nhwc_to_nchw_is_a_transpose():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    caffe_x = Blob("x", nchw(x.shape)).to_caffe(x)
    assert caffe_x.shape == (2, 5, 3, 4)
    assert caffe_x[1, 4, 2, 3] == x[1, 2, 3, 4]


def test_prototxt_writer_round_trips_through_caffes_parser():
    spec = NetSpec("writer")
    spec.add(CaffeLayer("data", "Input", [], ["data"], {"input_param": {"shape": shape_param([1, 2, 3, 3])}}))
    spec.add(CaffeLayer("pool", "Pooling", ["data"], ["pool"], {"pooling_param": {
        "pool": "MAX", "kernel_h": 2, "kernel_w": 2, "stride": 1}}))
    spec.add(CaffeLayer("slice", "Slice", ["pool"], ["a", "b"], {"slice_param": {"axis": 2, "slice_point": [1]}}))
    spec.add(CaffeLayer("silence", "Silence", ["a"], []))
    spec.add(CaffeLayer("power", "Power", ["b"], ["power"], {"power_param": {"scale": -1.0, "shift": 0.5}}))
    spec.add(CaffeLayer("bn", "BatchNorm", ["power"], ["bn"], {"batch_norm_param": {
        "use_global_stats": True, "eps": 1e-3}, "param": [{"lr_mult": 0}, {"lr_mult": 0}, {"lr_mult": 0}]}))
    spec.add(CaffeLayer("py", "Python", ["bn"], ["py"], {"python_param": {"module": Quoted('my "mod"')}}))
    net = handwritten.parse(spec.to_prototxt(), "writer.prototxt")
    layers = {layer.name: layer for layer in net.layer}
    assert layers["pool"].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(layers["slice"].top) == ["a", "b"] and list(layers["slice"].slice_param.slice_point) == [1]
    assert layers["power"].power_param.scale == -1.0 and layers["power"].power_param.shift == 0.5
    assert layers["bn"].batch_norm_param.use_global_stats is True
    assert layers["bn"].batch_norm_param.eps == pytest.approx(1e-3)
    assert len(layers["bn"].param) == 3
    assert layers["py"].python_param.module == 'my "mod"'


NET = """name: "n"
layer { name: "data" type: "Input" top: "data" top: "extra" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "train_data" type: "Data" top: "data" top: "label" include { phase: TRAIN } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" exclude { phase: TEST } }
"""


def test_check_ignores_training_only_layers():
    net = handwritten.parse(NET, "n.prototxt")
    handwritten.check(net, "n.prototxt", caffe.layer_type_list())
    assert [name for name, _ in handwritten.layer_tops(net)] == ["data", "ip"]


def test_check_refuses_repeated_layer_names():
    net = handwritten.parse(NET.replace('name: "ip"', 'name: "data"'), "n.prototxt")
    with pytest.raises(ConversionError, match="layer name 'data' is used twice"):
        handwritten.check(net, "n.prototxt", caffe.layer_type_list())


def test_set_input_shapes_keeps_the_shape_of_other_tops():
    net = handwritten.parse(NET, "n.prototxt")
    handwritten.set_input_shapes(net, {"data": [4, 7]})
    shapes = [list(shape.dim) for shape in net.layer[0].input_param.shape]
    assert shapes == [[4, 7], [1, 3]]


def test_set_input_shapes_legacy_input_shape():
    net = handwritten.parse('input: "x"\ninput_shape { dim: 1 dim: 2 }\n', "legacy.prototxt")
    handwritten.set_input_shapes(net, {"x": [5, 3, 8, 8]})
    assert list(net.input_shape[0].dim) == [5, 3, 8, 8]


def test_match_inputs_by_caffe_name_or_the_only_input():
    net = handwritten.parse(NET, "n.prototxt")
    assert handwritten.match_inputs(net, {"in": "extra"}, "n.prototxt") == {"in": "extra"}
    single = handwritten.parse('layer { name: "d" type: "Input" top: "d" }', "s.prototxt")
    assert handwritten.match_inputs(single, {"input_1": "input_1"}, "s.prototxt") == {"input_1": "d"}
    with pytest.raises(ConversionError, match="no input named 'img'"):
        handwritten.match_inputs(net, {"img": "img"}, "n.prototxt")


def test_last_writers_follow_in_place_layers():
    layers = [("conv", ["conv"]), ("relu", ["conv"]), ("slice", ["a", "b"])]
    assert verify.last_writers(layers) == {"conv": ("relu", 0), "a": ("slice", 0), "b": ("slice", 1)}


def test_relative_error_and_degenerate_reference():
    tf = np.array([1.0, -2.0, 4.0], dtype=np.float32)
    assert relative_error(tf + np.float32(0.004), tf) == pytest.approx(1e-3, rel=1e-3)
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
    assert relative_error(np.ones(2), np.zeros(2)) == float("inf")
    assert relative_error(np.zeros(2), np.zeros(3)) == float("inf")  # shapes differ
    with pytest.raises(ConversionError, match="degenerate"):
        verify.check_not_degenerate("prob", np.full((2, 3), 0.25, dtype=np.float32), "m.h5")
    verify.check_not_degenerate("logits", tf, "m.h5")


def test_first_over_follows_model_order():
    errors = {"b": 2e-5, "a": 1e-7, "c": 1.0, "d": float("nan")}
    assert verify.first_over(errors, ["a", "b", "c"]) == "b"
    assert verify.first_over({"d": float("nan")}, ["d"]) == "d"
    assert verify.first_over({"a": 1e-7}, ["a"]) is None


def test_accuracy_counts_agreement():
    labels = np.array([0, 1, 1])
    tf = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    caffe_out = np.array([[2.0, 1.0], [1.0, 0.0], [3.0, 1.0]])
    assert verify.accuracy(caffe_out, tf, labels) == {
        "caffe": pytest.approx(1 / 3), "tensorflow": pytest.approx(2 / 3), "agreement": pytest.approx(2 / 3), "count": 3}


def test_generated_targets_share_an_identitys_blob_but_not_an_overwritten_one():
    from tf2caffe.intermediate import Layer, Model
    model = Model("m", [Layer("x", "input", [], {"shape": [1, 2]}, [1, 2]),
                        Layer("fc", "dense", ["x"], {"units": 2}, [1, 2]),
                        Layer("drop", "identity", ["fc"], {"reason": "Dropout"}, [1, 2]),
                        Layer("relu", "activation", ["drop"], {"function": "relu"}, [1, 2])], ["relu"])
    separate = {"x": Blob("x", [1, 2]), "fc": Blob("fc", [1, 2]), "drop": Blob("fc", [1, 2]),
                "relu": Blob("relu", [1, 2])}
    targets = verify.generated_targets(model, separate, [("x", ["x"]), ("fc", ["fc"]), ("relu", ["relu"])])
    assert sorted(targets) == ["drop", "fc", "relu"]
    assert targets["drop"].caffe_layer == "fc"
    in_place = dict(separate, relu=Blob("fc", [1, 2]))
    targets = verify.generated_targets(model, in_place, [("x", ["x"]), ("fc", ["fc"]), ("relu", ["fc"])])
    assert sorted(targets) == ["relu"] and targets["relu"].caffe_layer == "relu"


V1_NET = '''
name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" param: "shared" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" include { phase: TEST } }
'''


def test_a_v1_prototxt_is_upgraded_as_caffe_upgrades_it(tmp_path):
    net = handwritten.parse(V1_NET, "v1.prototxt")
    assert not net.layers
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("conv", "Convolution"), ("relu", "ReLU"), ("pool", "Pooling"), ("fc", "InnerProduct"),
        ("prob", "Softmax")]
    conv = net.layer[0]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 4 and list(conv.convolution_param.pad) == [1]
    assert net.layer[3].param[0].name == "shared"
    assert net.layer[4].include[0].phase == caffe_pb2.TEST
    assert list(net.input) == ["data"] and list(net.input_dim) == [1, 3, 8, 8]
    # Caffe's own upgrade of the V1 file builds the same net as the upgraded text.
    v1_file, upgraded_file = tmp_path / "v1.prototxt", tmp_path / "v2.prototxt"
    v1_file.write_text(V1_NET)
    upgraded_file.write_text(handwritten.to_text(net))
    caffe.set_mode_cpu()
    original, upgraded = caffe.Net(str(v1_file), caffe.TEST), caffe.Net(str(upgraded_file), caffe.TEST)
    assert list(original._layer_names) == list(upgraded._layer_names)
    assert [layer.type for layer in original.layers] == [layer.type for layer in upgraded.layers]
    assert {k: v.data.shape for k, v in original.blobs.items()} == {k: v.data.shape for k, v in upgraded.blobs.items()}


def test_v1_data_layers_move_their_transformation_into_transform_param():
    net = handwritten.parse('layers { name: "d" type: DATA top: "d" data_param { source: "db" '
                            'scale: 0.5 mirror: true batch_size: 4 } }', "data.prototxt")
    layer = net.layer[0]
    assert layer.type == "Data" and layer.data_param.source == "db" and layer.data_param.batch_size == 4
    assert not layer.data_param.HasField("scale") and not layer.data_param.HasField("mirror")
    assert layer.transform_param.scale == 0.5 and layer.transform_param.mirror


@pytest.mark.parametrize("text, message", [
    ('layers { layer { name: "c" type: "conv" } }', "V0 format"),
    ('layers { name: "a" type: RELU }\nlayer { name: "b" type: "ReLU" }', "mixes the legacy V1"),
])
def test_v0_and_mixed_prototxts_are_refused_in_one_line(text, message):
    with pytest.raises(ConversionError, match=message):
        handwritten.parse(text, "old.prototxt")
