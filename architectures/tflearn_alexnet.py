"""AlexNet as tflearn's example builds it (examples/images/alexnet.py, 17 flower classes).

Same layers and widths; the input is 64x64 instead of 224x224 (the 11x11 stride-4 convolution
and three 3x3 stride-2 poolings leave a 2x2x256 map for the fully connected layers). Weights are
seeded and conditioned like trained ones (tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 64, 64, 3)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    network = tflearn.conv_2d(network, 96, 11, strides=4, activation="relu")
    network = tflearn.max_pool_2d(network, 3, strides=2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.conv_2d(network, 256, 5, activation="relu")
    network = tflearn.max_pool_2d(network, 3, strides=2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.conv_2d(network, 384, 3, activation="relu")
    network = tflearn.conv_2d(network, 384, 3, activation="relu")
    network = tflearn.conv_2d(network, 256, 3, activation="relu")
    network = tflearn.max_pool_2d(network, 3, strides=2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.fully_connected(network, 4096, activation="tanh")
    network = tflearn.dropout(network, 0.5)
    network = tflearn.fully_connected(network, 4096, activation="tanh")
    network = tflearn.dropout(network, 0.5)
    return tflearn.fully_connected(network, 17, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
