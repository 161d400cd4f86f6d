"""The 32-layer residual network of tflearn's CIFAR-10 example (examples/images/
residual_network_cifar10.py, n = 5): tflearn's pre-activation residual_block stages of 16, 32 and
64 filters (stride-2 downsampling, identity shortcuts average-pooled and zero-padded along the
channels), then BatchNorm, ReLU, global average pooling and a 10-way softmax.

Unchanged at its own 32x32 input. The example's featurewise zero-centring and its augmentation
run outside the graph (tflearn's data_preprocessing), so the input here is the centred image.
Weights are seeded and conditioned like trained ones, BatchNorm statistics randomised
(tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 32, 32, 3)
CAFFE_NAMES = {}  # the prototxt is generated
BLOCKS = 5  # residual blocks per stage: 32 layers


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 16, 3, regularizer="L2", weight_decay=0.0001)
    net = tflearn.residual_block(net, BLOCKS, 16)
    net = tflearn.residual_block(net, 1, 32, downsample=True)
    net = tflearn.residual_block(net, BLOCKS - 1, 32)
    net = tflearn.residual_block(net, 1, 64, downsample=True)
    net = tflearn.residual_block(net, BLOCKS - 1, 64)
    net = tflearn.batch_normalization(net)
    net = tflearn.activation(net, "relu")
    net = tflearn.global_avg_pool(net)
    return tflearn.fully_connected(net, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
