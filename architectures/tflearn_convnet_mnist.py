"""The MNIST convolutional network of tflearn's example (examples/images/convnet_mnist.py),
unchanged at its own 28x28 input (the L2 regularisers only affect training). Weights are seeded
and conditioned like trained ones (tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 28, 28, 1)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]), name="input")
    network = tflearn.conv_2d(network, 32, 3, activation="relu", regularizer="L2")
    network = tflearn.max_pool_2d(network, 2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.conv_2d(network, 64, 3, activation="relu", regularizer="L2")
    network = tflearn.max_pool_2d(network, 2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.fully_connected(network, 128, activation="tanh")
    network = tflearn.dropout(network, 0.8)
    network = tflearn.fully_connected(network, 256, activation="tanh")
    network = tflearn.dropout(network, 0.8)
    return tflearn.fully_connected(network, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
