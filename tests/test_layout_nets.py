"""Whole nets built on the layout ops, small and seeded, converted in bvlc and compared in pycaffe
(bullseye) and OpenCV:

- a DeepLabV3-style segmentation net: atrous convolutions, ASPP with image-level pooling
  broadcast back to the feature map, bilinear resize 33 -> 129 to per-pixel logits;
- a U-Net: transposed convolutions and skip concatenations;
- YOLOv4-tiny, whose CSP routes split channels (keras.ops.split), converted from the Keras
  model and through the graph road (`model.export()` SavedModel, its Split ops);
- a full-depth YOLOv4 (CSPDarknet53 with Mish, SPP, PANet) at 64 x 64 with an eighth of the
  channels;
- a small net ported from Caffe: Permute((3, 1, 2)) -> Flatten -> two Dense heads.
Weights: Keras's initialisers, random BatchNorm statistics and biases (test_zoo's), so every
BatchNormalization normalises by statistics that are not the identity.
"""
from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from harness import assert_exact, convert_intermediate_batch, convert_keras_batch
from tf2caffe.export.conditioned import condition_keras_model

pytestmark = pytest.mark.slow
L = keras.layers


def conv_bn(x, filters, kernel=3, strides=1, dilation=1, activation="relu"):
    x = L.Conv2D(filters, kernel, strides=strides, dilation_rate=dilation, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    if activation == "leaky":
        return L.LeakyReLU(0.1)(x)
    return L.Activation(activation)(x)


def deeplab_v3(classes=5):
    inputs = keras.Input((129, 129, 3))
    x = conv_bn(inputs, 8, strides=2)                 # 65
    x = conv_bn(x, 16, strides=2)                     # 33
    x = conv_bn(x, 16, dilation=2)
    branches = [conv_bn(x, 16, 1)] + [conv_bn(x, 16, dilation=rate) for rate in (3, 6)]
    pooled = L.GlobalAveragePooling2D(keepdims=True)(x)
    pooled = L.Conv2D(16, 1, activation="relu")(pooled)
    branches.append(L.UpSampling2D((33, 33))(pooled))  # the image-level feature, broadcast
    x = conv_bn(L.Concatenate()(branches), 16, 1)
    x = L.Conv2D(classes, 1)(x)
    return keras.Model(inputs, L.Resizing(129, 129)(x))


def unet(classes=3):
    inputs = keras.Input((32, 32, 3))
    skips, x = [], inputs
    for filters in (8, 16):
        x = conv_bn(conv_bn(x, filters), filters)
        skips.append(x)
        x = L.MaxPooling2D()(x)
    x = conv_bn(x, 32)
    for filters, skip, kernel in zip((16, 8), reversed(skips), (2, 3)):
        x = L.Conv2DTranspose(filters, kernel, strides=2, padding="same")(x)
        x = conv_bn(L.Concatenate()([x, skip]), filters)
    return keras.Model(inputs, L.Conv2D(classes, 1)(x))


def yolo_v4_tiny(width=8, anchors=3, classes=4):
    """Darknet's yolov4-tiny.cfg with `width` / 64 of its channels."""
    outputs = anchors * (5 + classes)

    def csp(x, filters):
        x = conv_bn(x, filters, activation="leaky")
        route = x
        x = keras.ops.split(x, 2, axis=-1)[1]       # [route] groups=2 group_id=1
        x = conv_bn(x, filters // 2, activation="leaky")
        first = x
        x = conv_bn(x, filters // 2, activation="leaky")
        x = conv_bn(L.Concatenate()([x, first]), filters, 1, activation="leaky")
        feature = x
        return L.MaxPooling2D()(L.Concatenate()([route, x])), feature

    inputs = keras.Input((64, 64, 3))
    x = conv_bn(inputs, width // 2, strides=2, activation="leaky")
    x = conv_bn(x, width, strides=2, activation="leaky")
    x, _ = csp(x, width)
    x, _ = csp(x, width * 2)
    x, feature = csp(x, width * 4)
    x = conv_bn(x, width * 8, activation="leaky")
    x = conv_bn(x, width * 4, 1, activation="leaky")
    large = L.Conv2D(outputs, 1)(conv_bn(x, width * 8, activation="leaky"))
    x = L.UpSampling2D()(conv_bn(x, width * 2, 1, activation="leaky"))
    x = conv_bn(L.Concatenate()([x, feature]), width * 4, activation="leaky")
    return keras.Model(inputs, [large, L.Conv2D(outputs, 1)(x)])


def yolo_v4(width=4, anchors=3, classes=4):
    """The Keras YOLOv4 (CSPDarknet53 with Mish, SPP, PANet) with `width` / 32 of its channels."""
    outputs = anchors * (5 + classes)

    def downsample(x, filters):
        # darknet pads the top and left only before its stride-2 convolutions
        x = L.ZeroPadding2D(((1, 0), (1, 0)))(x)
        x = L.Conv2D(filters, 3, strides=2, padding="valid", use_bias=False)(x)
        return L.Activation("mish")(L.BatchNormalization()(x))

    def csp_stage(x, filters, blocks, first=False):
        x = downsample(x, filters)
        half = filters if first else filters // 2
        shortcut = conv_bn(x, half, 1, activation="mish")
        x = conv_bn(x, half, 1, activation="mish")
        for _ in range(blocks):
            y = conv_bn(x, filters // 2 if first else half, 1, activation="mish")
            x = L.Add()([x, conv_bn(y, half, activation="mish")])
        x = conv_bn(x, half, 1, activation="mish")
        return conv_bn(L.Concatenate()([x, shortcut]), filters, 1, activation="mish")

    def five(x, filters):
        for kernel in (1, 3, 1, 3, 1):
            x = conv_bn(x, filters * (2 if kernel == 3 else 1), kernel, activation="leaky")
        return x

    inputs = keras.Input((64, 64, 3))
    x = conv_bn(inputs, width, activation="mish")
    x = csp_stage(x, width * 2, 1, first=True)
    x = csp_stage(x, width * 4, 2)
    c3 = csp_stage(x, width * 8, 8)
    c4 = csp_stage(c3, width * 16, 8)
    x = csp_stage(c4, width * 32, 4)
    x = conv_bn(conv_bn(conv_bn(x, width * 16, 1, activation="leaky"), width * 32, activation="leaky"),
                width * 16, 1, activation="leaky")
    x = L.Concatenate()([L.MaxPooling2D(k, 1, padding="same")(x) for k in (13, 9, 5)] + [x])  # SPP
    x = conv_bn(conv_bn(conv_bn(x, width * 16, 1, activation="leaky"), width * 32, activation="leaky"),
                width * 16, 1, activation="leaky")
    p5 = x
    x = L.UpSampling2D()(conv_bn(p5, width * 8, 1, activation="leaky"))
    p4 = five(L.Concatenate()([conv_bn(c4, width * 8, 1, activation="leaky"), x]), width * 8)
    x = L.UpSampling2D()(conv_bn(p4, width * 4, 1, activation="leaky"))
    p3 = five(L.Concatenate()([conv_bn(c3, width * 4, 1, activation="leaky"), x]), width * 4)
    small = L.Conv2D(outputs, 1)(conv_bn(p3, width * 8, activation="leaky"))
    x = L.Concatenate()([conv_bn(p3, width * 8, strides=2, activation="leaky"), p4])
    p4 = five(x, width * 8)
    medium = L.Conv2D(outputs, 1)(conv_bn(p4, width * 16, activation="leaky"))
    x = L.Concatenate()([conv_bn(p4, width * 16, strides=2, activation="leaky"), p5])
    large = L.Conv2D(outputs, 1)(conv_bn(five(x, width * 16), width * 32, activation="leaky"))
    return keras.Model(inputs, [small, medium, large])


def caffe_port(classes=10):
    inputs = keras.Input((16, 16, 3))
    x = L.MaxPooling2D()(conv_bn(inputs, 8))
    x = L.Flatten()(L.Permute((3, 1, 2))(conv_bn(x, 12)))   # Caffe's C,H,W order for the heads
    scores = L.Dense(classes)(L.Dense(32, activation="relu")(x))
    return keras.Model(inputs, [scores, L.Dense(4)(x)])


KERAS_NETS = {"deeplab_v3": deeplab_v3, "unet": unet, "yolo_v4": yolo_v4, "yolo_v4_tiny": yolo_v4_tiny,
              "caffe_port": caffe_port}
GRAPH_NETS = {"yolo_v4_tiny_saved_model": yolo_v4_tiny}


def build(make, seed=0):
    keras.utils.set_random_seed(seed)
    model = make()
    condition_keras_model(model, seed)
    return model


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tf2caffe.export import graph
    folder = tmp_path_factory.mktemp("layout_nets")
    started = time.monotonic()
    converted = convert_keras_batch({name: build(make) for name, make in KERAS_NETS.items()}, folder / "keras")
    for name, make in GRAPH_NETS.items():
        build(make).export(str(folder / name), verbose=False)
    models = {name: graph.source_to_intermediate(str(folder / name), per_layer=True) for name in GRAPH_NETS}
    converted.update(convert_intermediate_batch(models, folder / "graph"))
    print("layout nets converted and compared in %.0f s" % (time.monotonic() - started))
    return converted


@pytest.mark.parametrize("name", sorted(KERAS_NETS) + sorted(GRAPH_NETS))
def test_exact(results, name):
    assert_exact(results[name])


# In the opencv profile YOLOv4's Mish is OpenCV's Mish layer (no Caffe here has it: OpenCV only).
def test_yolo_v4_with_opencv_mish(tmp_path):
    result = convert_keras_batch({"yolo_v4": build(yolo_v4)}, tmp_path, profile="opencv")["yolo_v4"]
    assert_exact(result)
    assert "Mish" in result.caffe_types and "BNLL" not in result.caffe_types


def readme_decode():
    """The README's YOLO decoding snippet, executed."""
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("<!-- yolo-decode:start -->")[1].split("<!-- yolo-decode:end -->")[0]
    namespace = {}
    exec(block.strip().strip("`").removeprefix("python"), namespace)
    return namespace["decode"]


def tf_decode(head, anchors, stride, scale_xy=1.05):
    """YOLOv4's decoding as TensorFlow implementations write it, on a (N, H, W, A·(5 + classes)) head."""
    import tensorflow as tf
    n, h, w, _ = head.shape
    t = tf.reshape(head, (n, h, w, len(anchors), -1))
    grid = tf.cast(tf.stack(tf.meshgrid(tf.range(w), tf.range(h)), -1)[None, :, :, None, :], tf.float32)
    xy = (tf.sigmoid(t[..., :2]) * scale_xy - 0.5 * (scale_xy - 1) + grid) * stride
    wh = tf.exp(t[..., 2:4]) * tf.constant(anchors, tf.float32)
    boxes = tf.reshape(tf.concat([xy, wh], -1), (n, -1, 4))
    return boxes.numpy(), tf.reshape(tf.sigmoid(t[..., 4]), (n, -1)).numpy(), \
        tf.reshape(tf.sigmoid(t[..., 5:]), (n, h * w * len(anchors), -1)).numpy()


# yolov4-tiny.cfg's anchors per head (the 2x2 head, then the 4x4 one) and their strides at 64 x 64
TINY_HEADS = ((([81, 82], [135, 169], [344, 319]), 32), (([10, 14], [23, 27], [37, 58]), 16))


def test_readme_yolo_decoding_matches_tensorflow(results):
    """The converted YOLOv4-tiny's heads, run in OpenCV and decoded by the README's snippet, give
    TensorFlow's decoding of TensorFlow's heads."""
    from tf2caffe import intermediate, opencv_check, report
    from tf2caffe.caffe import verify
    result = results["yolo_v4_tiny"]
    entry = report.FileResult.from_json(result.report)
    model = intermediate.read(entry.file)
    try:
        feeds = verify.reference_feeds(model, entry.inputs)
        expected = {name: model.activation(name) for name in model.outputs}
    finally:
        model.file.close()
    targets = verify.targets_from_json({name: entry.targets[name] for name in model.outputs})
    heads = opencv_check.run(opencv_check.load(entry.prototxt, entry.caffemodel), feeds, targets, "yolo")
    decode = readme_decode()
    for name, (anchors, stride) in zip(model.outputs, TINY_HEADS):
        for ours, theirs in zip(decode(heads[name], anchors, stride), tf_decode(expected[name], anchors, stride)):
            assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), name
