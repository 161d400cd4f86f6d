"""Network In Network as tflearn's example builds it (examples/images/network_in_network.py),
unchanged at its own 32x32 CIFAR-10 input; like the example, its output is the flattened
8x8-average-pooled ReLU of ten 1x1 filters (the loss applies the softmax). Weights are seeded and
conditioned like trained ones (tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 32, 32, 3)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    network = tflearn.conv_2d(network, 192, 5, activation="relu")
    network = tflearn.conv_2d(network, 160, 1, activation="relu")
    network = tflearn.conv_2d(network, 96, 1, activation="relu")
    network = tflearn.max_pool_2d(network, 3, strides=2)
    network = tflearn.dropout(network, 0.5)
    network = tflearn.conv_2d(network, 192, 5, activation="relu")
    network = tflearn.conv_2d(network, 192, 1, activation="relu")
    network = tflearn.conv_2d(network, 192, 1, activation="relu")
    network = tflearn.avg_pool_2d(network, 3, strides=2)
    network = tflearn.dropout(network, 0.5)
    network = tflearn.conv_2d(network, 192, 3, activation="relu")
    network = tflearn.conv_2d(network, 192, 1, activation="relu")
    network = tflearn.conv_2d(network, 10, 1, activation="relu")
    network = tflearn.avg_pool_2d(network, 8)
    return tflearn.flatten(network)


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
