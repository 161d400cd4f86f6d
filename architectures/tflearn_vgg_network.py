"""VGG-16 as tflearn's example builds it (examples/images/vgg_network.py, 17 flower classes).

Same layers and widths; the input is 32x32 instead of 224x224 (five 2x2 poolings leave a 1x1x512
map for the fully connected layers). Weights are seeded and conditioned like trained ones
(tf2caffe/export/conditioned.py). The VGG-19 example is architectures/vgg19.py.
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 32, 32, 3)
CAFFE_NAMES = {}  # the prototxt is generated
# (filters, convolutions) per block.
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    for filters, count in BLOCKS:
        for _ in range(count):
            network = tflearn.conv_2d(network, filters, 3, activation="relu")
        network = tflearn.max_pool_2d(network, 2, strides=2)
    network = tflearn.fully_connected(network, 4096, activation="relu")
    network = tflearn.dropout(network, 0.5)
    network = tflearn.fully_connected(network, 4096, activation="relu")
    network = tflearn.dropout(network, 0.5)
    return tflearn.fully_connected(network, 17, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
