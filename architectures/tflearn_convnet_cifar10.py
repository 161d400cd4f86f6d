"""The CIFAR-10 convolutional network of tflearn's example (examples/images/convnet_cifar10.py),
unchanged at its own 32x32 input. Weights are seeded and conditioned like trained ones
(tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 32, 32, 3)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    network = tflearn.conv_2d(network, 32, 3, activation="relu")
    network = tflearn.max_pool_2d(network, 2)
    network = tflearn.conv_2d(network, 64, 3, activation="relu")
    network = tflearn.conv_2d(network, 64, 3, activation="relu")
    network = tflearn.max_pool_2d(network, 2)
    network = tflearn.fully_connected(network, 512, activation="relu")
    network = tflearn.dropout(network, 0.5)
    return tflearn.fully_connected(network, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
