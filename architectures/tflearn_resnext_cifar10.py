"""The ResNeXt of tflearn's CIFAR-10 example (examples/images/resnext_cifar10.py, n = 5,
cardinality 32): tflearn's resnext_block stages of 16, 32 and 64 output channels, each block a
1x1 convolution to 4 channels, a 3x3 grouped (depthwise, multiplier 32) convolution, a 1x1
convolution, BatchNorm after each, and an identity shortcut (strided 1x1 average pooling and
channel zero-padding when downsampling); then BatchNorm, ReLU, global average pooling and a
10-way softmax.

Unchanged at its own 32x32 input. The example's per-channel zero-centring and its augmentation run
outside the graph (tflearn's data_preprocessing), so the input here is the centred image. Weights
are seeded and conditioned like trained ones, BatchNorm statistics randomised
(tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 32, 32, 3)
CAFFE_NAMES = {}  # the prototxt is generated
BLOCKS = 5
CARDINALITY = 32


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 16, 3, regularizer="L2", weight_decay=0.0001)
    net = tflearn.resnext_block(net, BLOCKS, 16, CARDINALITY)
    net = tflearn.resnext_block(net, 1, 32, CARDINALITY, downsample=True)
    net = tflearn.resnext_block(net, BLOCKS - 1, 32, CARDINALITY)
    net = tflearn.resnext_block(net, 1, 64, CARDINALITY, downsample=True)
    net = tflearn.resnext_block(net, BLOCKS - 1, 64, CARDINALITY)
    net = tflearn.batch_normalization(net)
    net = tflearn.activation(net, "relu")
    net = tflearn.global_avg_pool(net)
    return tflearn.fully_connected(net, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
