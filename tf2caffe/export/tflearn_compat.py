"""tflearn 0.5.0 (its last release, for TF 1.x) on the pinned TensorFlow 2.21 and Pillow.

`import_tflearn()` is the one way tf2caffe imports tflearn. What it mends, each found by
building every image-network layer, initializer and activation tflearn has in a fresh graph and
running it (tests/test_tflearn_compat.py):

- `tensorflow.python.util.nest.is_sequence`, removed in TF 2.13 (tflearn fails to import);
- `PIL.Image.ANTIALIAS`, removed in Pillow 10 (tflearn fails to import);
- `tflearn.initializations.xavier` and `.variance_scaling` import `tensorflow.contrib`, gone
  since TF 2.0, and raise NotImplementedError: conv_2d(weights_init='xavier' or
  'variance_scaling'), residual_block, residual_bottleneck, resnext_block and densenet_block
  (variance_scaling is their default) fail to build;
- tflearn calls `tf.compat.v1.disable_v2_behavior()` at import, which would switch the whole
  process (Keras with it) to graph mode; tflearn works in an explicit `tf.Graph()` without it,
  so the call is suppressed while tflearn is imported.
"""
from __future__ import annotations

import sys

import tensorflow as tf

from ..errors import ConversionError

v1 = tf.compat.v1


def variance_scaling(factor=2.0, mode="FAN_IN", uniform=False, seed=None, dtype=tf.float32):
    """tflearn's variance_scaling on TF 2: TensorFlow's own variance-scaling initializer, which
    tf.contrib's became. Same fans (kernel dims but the last two times fan in or out), same
    uniform limit sqrt(3 factor / n); the truncated normal's stddev is corrected by the exact
    1 / 0.8796 where contrib used sqrt(1.3), so its variance is factor / n as tflearn documents."""
    return v1.variance_scaling_initializer(
        scale=factor, mode=mode.lower(), distribution="uniform" if uniform else "truncated_normal",
        seed=seed, dtype=dtype)


def xavier(uniform=True, seed=None, dtype=tf.float32):
    """tflearn's xavier on TF 2: contrib's xavier_initializer was variance scaling with these."""
    return variance_scaling(factor=1.0, mode="FAN_AVG", uniform=uniform, seed=seed, dtype=dtype)


# tflearn.initializations name -> its replacement. Layers look initializers up by name in that
# module's globals (initializations.get), so replacing the module attribute reaches them all.
INITIALIZERS = {"variance_scaling": variance_scaling, "xavier": xavier}


def import_tflearn():
    """Import tflearn 0.5.0 on a current TensorFlow/Pillow, without touching global TF state."""
    if "tflearn" in sys.modules:
        if not v1.resource_variables_enabled():  # what disable_v2_behavior() switches off
            raise ConversionError("tflearn was imported before tf2caffe and switched TensorFlow "
                                  "to graph mode; import it with tf2caffe.export.tflearn_compat."
                                  "import_tflearn()")
        return sys.modules["tflearn"]
    from tensorflow.python.util import nest
    if not hasattr(nest, "is_sequence"):
        nest.is_sequence = nest.is_nested  # removed in TF 2.13
    import PIL.Image
    if not hasattr(PIL.Image, "ANTIALIAS"):
        PIL.Image.ANTIALIAS = PIL.Image.LANCZOS  # removed in Pillow 10
    import tensorflow.compat.v1 as compat_v1  # the module object tflearn calls it on
    disable = compat_v1.disable_v2_behavior
    compat_v1.disable_v2_behavior = lambda: None
    try:
        import tflearn
    finally:
        compat_v1.disable_v2_behavior = disable
    for name, initializer in INITIALIZERS.items():
        setattr(tflearn.initializations, name, initializer)
    return tflearn
