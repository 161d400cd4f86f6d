"""Run by tests/test_source_caffe.py in the source-built Caffe's python (tf2caffe/source_caffe.py),
not in the chroot: prints one JSON object.

- ``conv_relu_fc``: a conv -> ReLU -> fc net with random weights against numpy (relative error);
- ``layer_types``: ``caffe.layer_type_list()``.

Each layer type of the target profiles is tested on its own, in this Caffe too, by
tests/test_layer_types.py (with tests/one_layer_nets.py).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

import caffe

rng = np.random.default_rng(0)


def net_from(prototxt: str) -> caffe.Net:
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(prototxt)
    try:
        return caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)


def inputs(*named_shapes) -> str:
    return "".join('input: "%s"\ninput_shape { %s }\n' % (name, " ".join("dim: %d" % d for d in shape))
                   for name, shape in named_shapes)


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def conv_relu_fc() -> float:
    net = net_from(inputs(("data", (2, 3, 8, 8))) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
""")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 3
    b = rng.standard_normal(4).astype(np.float32)
    fw = rng.standard_normal((5, 4 * 8 * 8)).astype(np.float32) / 16
    fb = rng.standard_normal(5).astype(np.float32)
    for blob, value in zip(list(net.params["conv"]) + list(net.params["fc"]), (w, b, fw, fb)):
        blob.data[...] = value
    net.blobs["data"].data[...] = x
    got = net.forward()["fc"]

    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).astype(np.float64)
    conv = np.zeros((2, 4, 8, 8)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            conv += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + 8, dx:dx + 8], w[:, :, dy, dx])
    want = np.maximum(conv, 0).reshape(2, -1) @ fw.T + fb
    return relative_error(got, want)


if __name__ == "__main__":
    caffe.set_mode_cpu()
    json.dump({"python": sys.version.split()[0], "numpy": np.__version__,
               "conv_relu_fc": conv_relu_fc(), "layer_types": sorted(caffe.layer_type_list())}, sys.stdout)
