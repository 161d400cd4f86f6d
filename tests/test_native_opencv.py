"""A net saved by the native backend (no Caffe) loads in OpenCV and computes what numpy does."""
from __future__ import annotations

import cv2
import numpy as np

from tf2caffe.caffe import caffemodel
from tf2caffe.caffe.native_backend import save
from tf2caffe.caffe.netspec import CaffeLayer, NetSpec


def conv_relu_fc(rng):
    """Weights come as the handlers produce them: a transposed (non-contiguous) TensorFlow
    kernel, a float64 bias and an int bias."""
    kernel_hwio = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    weights = {
        "conv": [kernel_hwio.transpose(3, 2, 0, 1), rng.standard_normal(4)],
        "fc": [rng.standard_normal((5, 4 * 5 * 5)).astype(np.float32), np.arange(5) - 2],
    }
    net = NetSpec("conv_relu_fc")
    net.add(CaffeLayer("data", "Input", tops=["data"],
                       params={"input_param": {"shape": {"dim": [2, 3, 9, 9]}}}))
    net.add(CaffeLayer("conv", "Convolution", ["data"], ["conv"],
                       {"convolution_param": {"num_output": 4, "kernel_size": 3, "stride": 2,
                                              "pad": 1}}, weights["conv"]))
    net.add(CaffeLayer("relu", "ReLU", ["conv"], ["conv"]))
    net.add(CaffeLayer("fc", "InnerProduct", ["conv"], ["fc"],
                       {"inner_product_param": {"num_output": 5}}, weights["fc"]))
    return net, weights


def numpy_forward(x, weights):
    kernel, bias = weights["conv"]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.empty((x.shape[0], 4, 5, 5))
    for i in range(5):
        for j in range(5):
            window = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", window, kernel) + bias
    fc_weights, fc_bias = weights["fc"]
    return np.maximum(conv, 0).reshape(x.shape[0], -1) @ fc_weights.T + fc_bias


def test_opencv_reads_the_native_caffemodel(tmp_path, monkeypatch):
    # Small chunks, so blobs are written in several pieces, as big ones are.
    monkeypatch.setattr(caffemodel, "CHUNK_BYTES", 64)
    rng = np.random.default_rng(7)
    net, weights = conv_relu_fc(rng)
    prototxt, weights_path = str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")
    save(net, prototxt, weights_path)

    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    reader = cv2.dnn.readNetFromCaffe(prototxt, weights_path)
    reader.setInput(x)
    got = reader.forward("fc")
    expected = numpy_forward(x, weights)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) <= 1e-5
