"""The native .caffemodel writer, read back by real Caffe (runs inside the Caffe root).

python3 -m tf2caffe.environments caffe-run -- python3 -m pytest -q -p no:cacheprovider \
    tests/caffe_side/test_caffemodel.py
"""
from __future__ import annotations

import os

import caffe
import numpy as np
import pytest
from caffe.proto import caffe_pb2

from tf2caffe.caffe.caffemodel import MAX_CAFFEMODEL_BYTES, write_caffemodel
from tf2caffe.caffe.native_backend import save
from tf2caffe.caffe.netspec import CaffeLayer, LazyBlob, NetSpec
from tf2caffe.errors import ConversionError


def _conv(num_output, kernel, **extra):
    return {"num_output": num_output, "kernel_size": kernel, **extra}


def every_weighted_layer_net():
    """Convolution, Deconvolution, InnerProduct, BatchNorm + Scale and PReLU (per channel, and
    channel-shared with its 0-d slope), with weightless layers in between."""
    rng = np.random.RandomState(5)

    def blob(*shape):
        return np.asarray(rng.standard_normal(shape), dtype=np.float32)

    net = NetSpec("native_writer")
    layers = [
        CaffeLayer("data", "Input", tops=["data"],
                   params={"input_param": {"shape": {"dim": [2, 3, 8, 8]}}}),
        CaffeLayer("conv", "Convolution", ["data"], ["conv"],
                   {"convolution_param": _conv(6, 3, pad=1)}, [blob(6, 3, 3, 3), blob(6)]),
        CaffeLayer("bn", "BatchNorm", ["conv"], ["bn"], {},
                   [blob(6), np.abs(blob(6)), np.array([0.5], np.float32)]),
        CaffeLayer("scale", "Scale", ["bn"], ["bn"], {"scale_param": {"bias_term": True}},
                   [blob(6), blob(6)]),
        CaffeLayer("prelu", "PReLU", ["bn"], ["bn"], {}, [blob(6)]),
        CaffeLayer("pool", "Pooling", ["bn"], ["pool"],
                   {"pooling_param": {"pool": "MAX", "kernel_size": 2, "stride": 2}}),
        CaffeLayer("grouped", "Convolution", ["pool"], ["grouped"],
                   {"convolution_param": _conv(4, 1, group=2, bias_term=False)},
                   [blob(4, 3, 1, 1)]),
        CaffeLayer("shared_prelu", "PReLU", ["grouped"], ["grouped"],
                   {"prelu_param": {"channel_shared": True}}, [blob()]),
        CaffeLayer("deconv", "Deconvolution", ["grouped"], ["deconv"],
                   {"convolution_param": _conv(5, 2, stride=2)}, [blob(4, 5, 2, 2), blob(5)]),
        CaffeLayer("relu", "ReLU", ["deconv"], ["deconv"]),
        CaffeLayer("fc", "InnerProduct", ["deconv"], ["fc"],
                   {"inner_product_param": {"num_output": 7}}, [blob(7, 5 * 8 * 8), blob(7)]),
    ]
    for layer in layers:
        net.add(layer)
    return net


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The net saved natively, and the same weights saved by pycaffe's net.save."""
    folder = tmp_path_factory.mktemp("native")
    net = every_weighted_layer_net()
    paths = {name: str(folder / name) for name in ("net.prototxt", "native.caffemodel",
                                                   "pycaffe.caffemodel")}
    save(net, paths["net.prototxt"], paths["native.caffemodel"])
    reference = caffe.Net(paths["net.prototxt"], caffe.TEST)
    for layer in net.weighted_layers():
        for target, make in zip(reference.params[layer.name], layer.blobs):
            assert target.data.shape == make().shape, layer.name  # no broadcasting
            target.data[...] = make()
    reference.save(paths["pycaffe.caffemodel"])
    return net, paths


def _parse(path):
    message = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        message.ParseFromString(f.read())
    return message


def test_caffe_loads_every_blob_bit_for_bit(saved):
    net, paths = saved
    loaded = caffe.Net(paths["net.prototxt"], caffe.TEST, weights=paths["native.caffemodel"])
    assert set(loaded.params) == {layer.name for layer in net.weighted_layers()}
    for layer in net.weighted_layers():
        assert len(loaded.params[layer.name]) == len(layer.blobs), layer.name
        for index, (blob, make) in enumerate(zip(loaded.params[layer.name], layer.blobs)):
            expected = make()
            assert blob.data.shape == expected.shape, (layer.name, index)
            assert blob.data.tobytes() == expected.tobytes(), (layer.name, index)


def test_blobs_equal_those_pycaffe_saves(saved):
    _, paths = saved
    ours, theirs = _parse(paths["native.caffemodel"]), _parse(paths["pycaffe.caffemodel"])
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in ours.layer] == \
        [(l.name, l.type, list(l.bottom), list(l.top)) for l in theirs.layer]
    for our_layer, their_layer in zip(ours.layer, theirs.layer):
        assert [b.SerializeToString() for b in our_layer.blobs] == \
            [b.SerializeToString() for b in their_layer.blobs], our_layer.name


def test_file_is_protobufs_own_encoding(saved):
    """Same bytes as protobuf writes for the same message: every length prefix is right."""
    _, paths = saved
    with open(paths["native.caffemodel"], "rb") as f:
        data = f.read()
    assert _parse(paths["native.caffemodel"]).SerializeToString() == data


def test_returns_the_size_and_leaves_a_normal_file(tmp_path):
    net = every_weighted_layer_net()
    path = tmp_path / "m.caffemodel"
    size = write_caffemodel(str(path), net.name, net.layers)
    assert size == path.stat().st_size
    assert os.listdir(str(tmp_path)) == ["m.caffemodel"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


class ShapedBlob:
    """A blob callable that declares its shape and counts its calls."""

    def __init__(self, shape, value=None):
        self.shape = tuple(shape)
        self.value = value
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_refuses_a_model_caffe_cannot_read_before_creating_anything(tmp_path):
    huge = ShapedBlob((4096, MAX_CAFFEMODEL_BYTES // 4 // 4096 + 1))
    layer = CaffeLayer("fc", "InnerProduct", ["data"], ["fc"], blobs=[huge])
    with pytest.raises(ConversionError, match=r"would be 21474\d{5} bytes .*2 GiB - 2") as error:
        write_caffemodel(str(tmp_path / "big.caffemodel"), "big", [layer])
    assert "\n" not in str(error.value)
    assert huge.calls == 0
    assert os.listdir(str(tmp_path)) == []


def test_declared_shapes_spare_the_sizing_call(tmp_path):
    value = np.arange(6, dtype=np.float64).reshape(2, 3)
    declared = ShapedBlob(value.shape, value)
    undeclared_calls = []

    def undeclared():
        undeclared_calls.append(1)
        return value

    layer = CaffeLayer("fc", "InnerProduct", ["data"], ["fc"], blobs=[declared, undeclared])
    write_caffemodel(str(tmp_path / "m.caffemodel"), "m", [layer])
    assert (declared.calls, len(undeclared_calls)) == (1, 2)
    blobs = _parse(str(tmp_path / "m.caffemodel")).layer[0].blobs
    assert [list(b.data) for b in blobs] == [list(value.ravel())] * 2


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(b"previous")
    lying = ShapedBlob((2, 3), np.zeros((3, 2), np.float32))
    layer = CaffeLayer("fc", "InnerProduct", ["data"], ["fc"], blobs=[lying])
    with pytest.raises(ConversionError, match=r"layer 'fc': weight blob 0 has shape \[3, 2\], not the \[2, 3\]"):
        write_caffemodel(str(path), "m", [layer])
    assert path.read_bytes() == b"previous"
    assert os.listdir(str(tmp_path)) == ["m.caffemodel"]


def test_blocks_are_written_as_the_whole_blob_would_be(tmp_path):
    value = np.random.RandomState(3).standard_normal((7, 2, 3)).astype(np.float32)
    calls = []

    def blocks():
        calls.append(1)
        return (value[start:start + 3] for start in range(0, 7, 3))  # 3 + 3 + 1 rows

    streamed = LazyBlob(value.shape, blocks=blocks)
    for name, blob in (("streamed", streamed), ("whole", LazyBlob(value.shape, lambda: value))):
        write_caffemodel(str(tmp_path / name), "m", [CaffeLayer("conv", "Convolution", blobs=[blob])])
    assert len(calls) == 1
    assert (tmp_path / "streamed").read_bytes() == (tmp_path / "whole").read_bytes()
    assert np.array_equal(streamed(), value)  # pycaffe's whole array, from the same blocks


@pytest.mark.parametrize("rows", [(3, 3), (3, 3, 3), (7, 1)])
def test_blocks_that_do_not_fill_the_declared_shape_leave_nothing(tmp_path, rows):
    blocks = lambda: (np.zeros((count, 2), np.float32) for count in rows)
    layer = CaffeLayer("fc", "InnerProduct", blobs=[LazyBlob((7, 2), blocks=blocks)])
    with pytest.raises(ConversionError, match=r"layer 'fc': weight blob 0 has shape \[\d+, 2\], not the \[7, 2\]"):
        write_caffemodel(str(tmp_path / "m.caffemodel"), "m", [layer])
    assert os.listdir(str(tmp_path)) == []
