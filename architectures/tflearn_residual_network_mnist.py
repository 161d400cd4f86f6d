"""The bottleneck residual network of tflearn's MNIST example (examples/images/
residual_network_mnist.py): a 3x3 convolution, tflearn's residual_bottleneck stages (16/64,
32/128, 64/256, stride-2 downsampling), then BatchNorm, ReLU, global average pooling and a 10-way
softmax. tflearn 0.5.0's residual_bottleneck adds the shortcut only in blocks that change the
channel count (its addition sits inside that branch); ported as tflearn builds it.

Unchanged at its own 28x28 input; the example's featurewise zero-centring runs outside the graph,
so the input here is the centred image. Weights are seeded and conditioned like trained ones,
BatchNorm statistics randomised (tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 28, 28, 1)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    net = tflearn.conv_2d(net, 64, 3, activation="relu", bias=False)
    net = tflearn.residual_bottleneck(net, 3, 16, 64)
    net = tflearn.residual_bottleneck(net, 1, 32, 128, downsample=True)
    net = tflearn.residual_bottleneck(net, 2, 32, 128)
    net = tflearn.residual_bottleneck(net, 1, 64, 256, downsample=True)
    net = tflearn.residual_bottleneck(net, 2, 64, 256)
    net = tflearn.batch_normalization(net)
    net = tflearn.activation(net, "relu")
    net = tflearn.global_avg_pool(net)
    return tflearn.fully_connected(net, 10, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
