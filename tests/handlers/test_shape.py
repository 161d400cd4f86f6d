"""Flatten, Reshape and identity layers: exact where Caffe's element order agrees or a Dense layer
can take the order into its weights (a DCGAN generator's Dense -> Reshape to (H, W, C)), refused
where it cannot (BVLC Caffe has no Permute)."""
from __future__ import annotations

import keras

from handler_batch import batch_norm, chain, family_tests

L = keras.layers
init = keras.initializers
IMAGE = (3, 4, 5)  # what the vectors are reshaped to: H, W, C all different


def conv():
    return L.Conv2D(3, 3, padding="same")


def dense(units=60, name=None):
    return L.Dense(units, bias_initializer=init.RandomNormal(0.0, 0.5), name=name)


def branching(*, to_image, to_vector):
    """A (8,) input through a Dense whose output goes two ways: `to_image` (a reshape first)
    and `to_vector`, both model outputs."""
    inputs = keras.Input((8,))
    hidden = dense()(inputs)
    return keras.Model(inputs, [branch(hidden) for branch in (to_image, to_vector)])


def then(*layers):
    def apply(x):
        for layer in layers:
            x = layer(x)
        return x
    return apply


CASES = {
    "vector_to_1x1xC": lambda: chain((8,), L.Dense(6), L.Reshape((1, 1, 6)), conv()),
    "vector_to_HxWx1": lambda: chain((8,), L.Dense(12), L.Reshape((3, 4, 1)), conv()),
    "1x1xC_to_vector": lambda: chain((5, 6, 4), L.GlobalAveragePooling2D(keepdims=True), L.Reshape((4,)), L.Dense(3)),
    "HxWx1_to_WxHx1": lambda: chain((3, 4, 1), L.Reshape((4, 3, 1)), conv()),
    "flatten_then_unflatten": lambda: chain((3, 4, 5), L.Flatten(), L.ReLU(), L.Reshape((3, 4, 5)), conv()),
    "flatten_vector": lambda: chain((8,), L.Dense(6), L.Flatten(), L.Dense(3)),
    # The Dense emits its columns (and the layers after it their per-feature vectors) in C,H,W order.
    "dense_to_HxWxC": lambda: chain((8,), dense(), L.Reshape(IMAGE), conv()),
    "dense_bn_relu_to_HxWxC": lambda: chain((8,), dense(), batch_norm(), L.ReLU(), L.Reshape(IMAGE), conv()),
    "dense_prelu_dropout_to_HxWxC": lambda: chain(
        (8,), dense(), L.PReLU(alpha_initializer=init.RandomUniform(-0.5, 0.5)), L.Dropout(0.5),
        L.Reshape(IMAGE), conv()),
    "dense_bn_tanh_to_HxWxC_upsample": lambda: chain(
        (8,), dense(), batch_norm(), L.Activation("tanh"), L.Reshape(IMAGE), L.UpSampling2D(2),
        L.Conv2DTranspose(2, 3, strides=2, padding="same")),
    "dense_softmax_to_HxWxC": lambda: chain((8,), dense(), L.Softmax(), L.Reshape(IMAGE), conv()),
    "dense_sum_to_HxWxC": lambda: keras.Model(*(lambda x: (x, conv()(L.Reshape(IMAGE)(
        L.Add()([dense()(x), L.ReLU()(dense()(x))])))))(keras.Input((8,)))),
    "flatten_dense_to_HxWxC": lambda: chain((2, 3, 4), L.Flatten(), dense(), L.Reshape(IMAGE), conv()),
    # a Dense after the reshaped one reads its input rows in C,H,W order
    "dense_to_HxWxC_and_dense": lambda: branching(to_image=then(L.Reshape(IMAGE), conv()),
                                                  to_vector=then(L.ReLU(), dense(4))),
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
    "dense_to_two_images": (lambda: branching(to_image=then(L.Reshape(IMAGE), conv()),
                                              to_vector=then(L.Reshape((5, 4, 3), name="other_image"), conv())),
                            "other_image", "element order differs"),
    "dense_concat_to_HxWxC": (lambda: keras.Model(*(lambda x: (x, conv()(L.Reshape((3, 4, 10), name="joined_image")(
        L.Concatenate()([dense()(x), dense()(x)])))))(keras.Input((8,)))), "joined_image", "element order differs"),
    "dense_also_output": (lambda: branching(to_image=then(L.Reshape(IMAGE), conv()),
                                            to_vector=L.ReLU(name="vector_out")), "vector_out", "model output"),
    "dense_also_concat": (lambda: branching(to_image=then(L.Reshape(IMAGE), conv()),
                                            to_vector=lambda x: L.Concatenate(name="with_input")([x, x])),
                          "with_input", "Dense layer"),
    "to_3d": (lambda: chain((3, 4, 5), L.Reshape((12, 5), name="tokens"), L.Flatten(), L.Dense(2)),
              "tokens", "element order differs"),
}


results, test_exact, test_refused = family_tests(CASES, REFUSED, "shape")


def test_identity_layers_emit_nothing(results):
    assert results["dropout_noise_identity"].caffe_types == ["Input", "Convolution", "ReLU"]
