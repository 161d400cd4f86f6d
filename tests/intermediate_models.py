"""Small intermediate models built with numpy alone, with TensorFlow's reference computed in numpy.

They need neither TensorFlow nor Caffe, so the same fixtures serve the TensorFlow-side tests and
the Caffe-side ones (run inside the chroot with Python 3.9 / numpy 1.19).
"""
from __future__ import annotations

import numpy as np

from tf2caffe import intermediate
from tf2caffe.intermediate import Layer, Model


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mlp(name="mlp", batch=4, features=6, hidden=5, classes=3, seed=0) -> Model:
    """input -> dense -> relu -> dense (logits) -> softmax, with labels; layer names carry '/'."""
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, features).astype(np.float32)
    k1 = rng.randn(features, hidden).astype(np.float32)
    b1 = rng.randn(hidden).astype(np.float32)
    k2 = rng.randn(hidden, classes).astype(np.float32)
    b2 = rng.randn(classes).astype(np.float32)
    h = x.dot(k1) + b1
    r = np.maximum(h, 0)
    logits = r.dot(k2) + b2
    layers = [
        Layer("input", "input", [], {"shape": [None, features]}, [batch, features]),
        Layer("dense_1", "dense", ["input"], {"units": hidden}, [batch, hidden],
              {"kernel": k1, "bias": b1}, {"kernel": "dense_1/kernel:0", "bias": "dense_1/bias:0"}, "fc1"),
        Layer("dense_1/relu", "activation", ["dense_1"], {"function": "relu"}, [batch, hidden],
              caffe_name="relu1"),
        Layer("dense_2", "dense", ["dense_1/relu"], {"units": classes}, [batch, classes],
              {"kernel": k2, "bias": b2}, {"kernel": "dense_2/kernel:0", "bias": "dense_2/bias:0"}, "fc2"),
        Layer("dense_2/softmax", "activation", ["dense_2"], {"function": "softmax", "axis": 1},
              [batch, classes], caffe_name="prob"),
    ]
    activations = {"input": x, "dense_1": h, "dense_1/relu": r, "dense_2": logits,
                   "dense_2/softmax": softmax(logits)}
    return Model(name, layers, ["dense_2/softmax"],
                 {"source_framework": "keras", "source_version": "test", "tensorflow_version": "none",
                  "source_path": "numpy", "created_by": "tests"},
                 {"input": x}, activations, labels=np.argmax(logits, axis=1) % classes)


def write(model: Model, folder) -> str:
    path = str(folder / ("%s.h5" % model.name))
    intermediate.write(path, model)
    return path


# A hand-written prototxt for mlp(): Caffe names from the models' caffe_name, in-place ReLU,
# an input size that import must replace.
MLP_PROTOTXT = """name: "mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 99 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""
