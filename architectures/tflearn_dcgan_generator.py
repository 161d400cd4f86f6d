"""The generator of tflearn's DCGAN example (examples/images/dcgan.py): a 200-value noise vector,
a fully connected layer to 7x7x128 with BatchNorm and tanh, reshaped to an image, then twice a
nearest 2x upsampling and a 5x5 convolution (64 filters, tanh; 1 filter, sigmoid): a 28x28x1
image. Unchanged, in its 'Generator' variable scope.

Verified on noise drawn from U(-1, 1), as the example feeds it. Weights are seeded and conditioned
like trained ones, BatchNorm statistics randomised (tf2caffe/export/conditioned.py).
"""
import numpy as np
import tensorflow as tf
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

NOISE = 200
DEFAULT_INPUT_SHAPE = (2, NOISE)
CAFFE_NAMES = {}  # the prototxt is generated


def build(input_shape):
    x = tflearn.input_data(shape=[None] + list(input_shape[1:]), name="input_gen_noise")
    with tf.compat.v1.variable_scope("Generator"):
        x = tflearn.fully_connected(x, n_units=7 * 7 * 128)
        x = tflearn.batch_normalization(x)
        x = tf.nn.tanh(x)
        x = tf.reshape(x, shape=[-1, 7, 7, 128])
        x = tflearn.upsample_2d(x, 2)
        x = tflearn.conv_2d(x, 64, 5, activation="tanh")
        x = tflearn.upsample_2d(x, 2)
        return tflearn.conv_2d(x, 1, 5, activation="sigmoid")


def _noise(rng, shape):
    return rng.uniform(-1.0, 1.0, shape)


def reference_data(input_shape, seed):
    return _noise(np.random.default_rng(seed), list(input_shape)).astype(np.float32), None


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed, sample=_noise)
