"""The DenseNet of tflearn's CIFAR-10 example (examples/images/densenet.py, growth k = 12,
depth L = 40): three tflearn densenet_blocks of 12 bottleneck layers each (BatchNorm, ReLU, 1x1
and 3x3 convolutions, output concatenated with the block's input), each closed by a 1x1
transition convolution to k channels and a 2x2 average pooling; then global average pooling and a
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
GROWTH = 12
DEPTH = 40
LAYERS_PER_BLOCK = (DEPTH - 4) // 3


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 16, 3, regularizer="L2", weight_decay=0.0001)
    for _ in range(3):
        net = tflearn.densenet_block(net, LAYERS_PER_BLOCK, GROWTH)
    net = tflearn.global_avg_pool(net)
    return tflearn.fully_connected(net, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
