"""Flatten, Reshape and identity layers: exact where Caffe's element order agrees, refused where
it cannot (BVLC Caffe has no Permute)."""
from __future__ import annotations

import keras

from handler_batch import chain, family_tests

L = keras.layers


def conv():
    return L.Conv2D(3, 3, padding="same")


CASES = {
    "vector_to_1x1xC": lambda: chain((8,), L.Dense(6), L.Reshape((1, 1, 6)), conv()),
    "vector_to_HxWx1": lambda: chain((8,), L.Dense(12), L.Reshape((3, 4, 1)), conv()),
    "1x1xC_to_vector": lambda: chain((5, 6, 4), L.GlobalAveragePooling2D(keepdims=True), L.Reshape((4,)), L.Dense(3)),
    "HxWx1_to_WxHx1": lambda: chain((3, 4, 1), L.Reshape((4, 3, 1)), conv()),
    "flatten_then_unflatten": lambda: chain((3, 4, 5), L.Flatten(), L.ReLU(), L.Reshape((3, 4, 5)), conv()),
    "flatten_vector": lambda: chain((8,), L.Dense(6), L.Flatten(), L.Dense(3)),
    "dropout_noise_identity": lambda: chain((5, 6, 4), conv(), L.Dropout(0.5), L.GaussianNoise(1.0),
                                            L.SpatialDropout2D(0.5), L.ReLU()),
}
REFUSED = {
    "vector_to_HxWxC": (lambda: chain((12,), L.Reshape((2, 2, 3), name="to_image"), conv()),
                        "to_image", "element order differs"),
    "image_to_other_image": (lambda: chain((3, 4, 5), L.Reshape((5, 4, 3), name="reorder"), conv()),
                             "reorder", "element order differs"),
    "unflatten_to_other_shape": (lambda: chain((3, 4, 5), L.Flatten(), L.Reshape((6, 2, 5), name="reflow"), conv()),
                                 "reflow", "element order differs"),
    "to_3d": (lambda: chain((3, 4, 5), L.Reshape((12, 5), name="tokens"), L.Flatten(), L.Dense(2)),
              "tokens", "only reshapes between 2-D and 4-D"),
}


results, test_exact, test_refused = family_tests(CASES, REFUSED, "shape")


def test_identity_layers_emit_nothing(results):
    assert results["dropout_noise_identity"].caffe_types == ["Input", "Convolution", "ReLU"]
