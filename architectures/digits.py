"""A small CNN for scikit-learn's 8x8 digits, trained at export time in about a second.

The data set ships inside scikit-learn (nothing is downloaded). The split is fixed (stratified,
20 % held out = 360 images); `seed` drives initialisation and batch order.
"""
import contextlib
import io
import tempfile

import numpy as np
import tensorflow as tf
import tflearn

DEFAULT_INPUT_SHAPE = (1, 8, 8, 1)
CAFFE_NAMES = {}  # the prototxt is generated
EPOCHS = 10


def _split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    return train_test_split(images, digits.target, test_size=0.2, random_state=0,
                            stratify=digits.target)


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 16, 3, activation="relu")
    net = tflearn.max_pool_2d(net, 2)
    net = tflearn.conv_2d(net, 32, 3, activation="relu")
    net = tflearn.fully_connected(net, 64, activation="relu")
    net = tflearn.dropout(net, 0.5)
    return tflearn.fully_connected(net, 10, activation="softmax")


def reference_data(input_shape, seed):
    _, test_images, _, test_labels = _split()
    return test_images, test_labels


def train(seed):
    """Fit in the current (fresh) default graph; returns {variable name: value}."""
    images, _, labels, _ = _split()
    targets = np.eye(10, dtype=np.float32)[labels]
    tf.compat.v1.set_random_seed(seed)
    net = tflearn.regression(build(DEFAULT_INPUT_SHAPE), optimizer="adam", learning_rate=0.01,
                             loss="categorical_crossentropy")
    # tflearn's own shuffling draws from numpy's global generator in a feeder thread, which
    # makes training irreproducible; each epoch's order is drawn here instead.
    order = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as logs:
        model = tflearn.DNN(net, tensorboard_verbose=0, tensorboard_dir=logs)
        with contextlib.redirect_stdout(io.StringIO()):  # tflearn prints every training step
            for _ in range(EPOCHS):
                epoch = order.permutation(len(images))
                model.fit(images[epoch], targets[epoch], n_epoch=1, batch_size=64, shuffle=False,
                          show_metric=False)
        variables = tf.compat.v1.global_variables()
        return model.session.run({v.op.name: v for v in variables})
