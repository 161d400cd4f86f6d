"""Dense -> InnerProduct, alone and after every way of flattening a 4-D tensor."""
from __future__ import annotations

import keras
import numpy as np

from handler_batch import chain, family_tests
from tf2caffe.caffe.handlers.dense import inner_product_blocks
from tf2caffe.caffe.layout import FlatOrder

L = keras.layers
RANDOM_BIAS = keras.initializers.RandomNormal(stddev=0.5)


def dense(units=6, use_bias=True):
    return L.Dense(units, use_bias=use_bias, bias_initializer=RANDOM_BIAS)


CASES = {
    "vector": lambda: chain((12,), dense()),
    "vector_no_bias": lambda: chain((12,), dense(use_bias=False)),
    "vector_fused_relu": lambda: chain((12,), L.Dense(6, activation="relu", bias_initializer=RANDOM_BIAS), dense(3)),
    "flatten_3x4x5": lambda: chain((3, 4, 5), L.Flatten(), dense()),
    "flatten_3x4x5_no_bias": lambda: chain((3, 4, 5), L.Flatten(), dense(use_bias=False)),
    "flatten_1x1x8": lambda: chain((1, 1, 8), L.Flatten(), dense()),
    "flatten_3x4x1": lambda: chain((3, 4, 1), L.Flatten(), dense()),
    "reshape_to_vector": lambda: chain((3, 4, 5), L.Reshape((60,)), dense()),
    "flatten_dropout_relu_dense": lambda: chain((3, 4, 5), L.Flatten(), L.Dropout(0.5), L.ReLU(), dense()),
    "flatten_twice": lambda: chain((3, 4, 5), L.Flatten(), L.Flatten(), dense()),
    "conv_flatten_dense": lambda: chain((6, 5, 3), L.Conv2D(4, 3), L.Flatten(), dense(10), dense(3)),
}
REFUSED = {
    "flatten_is_output": (lambda: chain((3, 4, 5), L.Flatten(name="flat_out")), "flat_out", "model output"),
    "flatten_relu_is_output": (lambda: chain((3, 4, 5), L.Flatten(name="flat"), L.ReLU(name="relu_out")),
                               "relu_out", "model output"),
}


results, test_exact, test_refused = family_tests(CASES, REFUSED, "dense")


def test_flatten_permutation_matches_caffe_order():
    """Caffe's input element (c, h, w) must meet the TensorFlow kernel row of (h, w, c)."""
    h, w, c, units = 3, 4, 5, 2
    kernel = np.arange(h * w * c * units, dtype=np.float32).reshape(h * w * c, units)
    weights = np.concatenate(list(inner_product_blocks(kernel, FlatOrder.chw((h, w, c)))))
    for ch, row, col in np.ndindex(c, h, w):
        np.testing.assert_array_equal(weights[:, (ch * h + row) * w + col], kernel[(row * w + col) * c + ch])
    # Any other order (a permute folded in): Caffe's element (w, h, c) meets the row of (h, w, c).
    weights = np.concatenate(list(inner_product_blocks(kernel, FlatOrder((h, w, c), (1, 0, 2)))))
    for col, row, ch in np.ndindex(w, h, c):
        np.testing.assert_array_equal(weights[:, (col * h + row) * c + ch], kernel[(row * w + col) * c + ch])
