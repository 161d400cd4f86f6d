"""Run by tests/test_source_caffe.py in the source-built Caffe's python (tf2caffe/source_caffe.py),
not in the chroot: prints one JSON object.

- ``conv_relu_fc``: a conv -> ReLU -> fc net with random weights against numpy (relative error);
- ``layer_types``: ``caffe.layer_type_list()``;
- ``one_layer``: for each layer type of ONE_LAYER_NETS, whether Caffe knows it and, if so, the
  relative error of a one-layer net against numpy (``None`` where only shapes are checked).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

import caffe

rng = np.random.default_rng(0)


def net_from(prototxt: str) -> caffe.Net:
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(prototxt)
    try:
        return caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)


def inputs(*named_shapes) -> str:
    return "".join('input: "%s"\ninput_shape { %s }\n' % (name, " ".join("dim: %d" % d for d in shape))
                   for name, shape in named_shapes)


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def conv_relu_fc() -> float:
    net = net_from(inputs(("data", (2, 3, 8, 8))) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
""")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 3
    b = rng.standard_normal(4).astype(np.float32)
    fw = rng.standard_normal((5, 4 * 8 * 8)).astype(np.float32) / 16
    fb = rng.standard_normal(5).astype(np.float32)
    for blob, value in zip(list(net.params["conv"]) + list(net.params["fc"]), (w, b, fw, fb)):
        blob.data[...] = value
    net.blobs["data"].data[...] = x
    got = net.forward()["fc"]

    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).astype(np.float64)
    conv = np.zeros((2, 4, 8, 8)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            conv += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + 8, dx:dx + 8], w[:, :, dy, dx])
    want = np.maximum(conv, 0).reshape(2, -1) @ fw.T + fb
    return relative_error(got, want)


def l2_normalize_channels(x):
    return x / np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True) + 1e-10)


def prior_boxes(x, image):
    """SSD's PriorBox with ONE_LAYER_NETS's parameters: in each cell of x, centred on it in image
    pixels, boxes of min_size 8, sqrt(min_size * max_size) and aspect ratio 2, as clipped corners
    (x0, y0, x1, y1) / image size; then the same number of variances."""
    height, width = image.shape[2:]
    step = width / x.shape[3]
    sizes = [(8, 8), (np.sqrt(8 * 16),) * 2, (8 * np.sqrt(2), 8 / np.sqrt(2))]
    boxes = [[(cx - w / 2) / width, (cy - h / 2) / height, (cx + w / 2) / width, (cy + h / 2) / height]
             for cy in (np.arange(x.shape[2]) + 0.5) * step
             for cx in (np.arange(x.shape[3]) + 0.5) * step
             for w, h in sizes]
    corners = np.clip(np.array(boxes), 0, 1)
    return np.stack([corners.ravel(), np.tile([0.1, 0.1, 0.2, 0.2], len(boxes))])[None]


# type -> (net text, its inputs' shapes, numpy reference of its single top or None, expected top shape)
PRIORS = 4 * 4 * 3  # 4x4 feature map, min_size + max_size + aspect ratio 2
ONE_LAYER_NETS = {
    "ReLU6": ('layer { name: "l" type: "ReLU6" bottom: "x" top: "y" }',
              {"x": (1, 2, 3, 4)}, lambda x: np.clip(x, 0, 6), (1, 2, 3, 4)),
    "Permute": ('layer { name: "l" type: "Permute" bottom: "x" top: "y" '
                'permute_param { order: 0 order: 2 order: 3 order: 1 } }',
                {"x": (1, 2, 3, 4)}, lambda x: x.transpose(0, 2, 3, 1), (1, 3, 4, 2)),
    "Normalize": ('layer { name: "l" type: "Normalize" bottom: "x" top: "y" norm_param { '
                  'across_spatial: false channel_shared: false '
                  'scale_filler { type: "constant" value: 1 } } }',
                  {"x": (1, 3, 4, 5)}, l2_normalize_channels, (1, 3, 4, 5)),
    "Upsample": ('layer { name: "l" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 2 } }',
                 {"x": (1, 2, 3, 4)}, lambda x: x.repeat(2, axis=2).repeat(2, axis=3), (1, 2, 6, 8)),
    "PriorBox": ('layer { name: "l" type: "PriorBox" bottom: "x" bottom: "image" top: "y" '
                 'prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 flip: false clip: true '
                 'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }',
                 {"x": (1, 2, 4, 4), "image": (1, 3, 32, 32)}, prior_boxes, (1, 2, PRIORS * 4)),
    "DetectionOutput": ('layer { name: "l" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
                        'bottom: "priors" top: "y" detection_output_param { num_classes: 3 '
                        'share_location: true background_label_id: 0 code_type: CENTER_SIZE '
                        'nms_param { nms_threshold: 0.45 top_k: 10 } keep_top_k: 5 '
                        'confidence_threshold: 0.01 } }',
                        {"loc": (1, PRIORS * 4), "conf": (1, PRIORS * 3), "priors": (1, 2, PRIORS * 4)},
                        None, None),  # (1, 1, detections, 7): how many depends on the scores
    # PSPNet/DeepLab's bilinear Interp: not in this fork (it has BilinearInterpolate instead).
    "Interp": ('layer { name: "l" type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 } }',
               {"x": (1, 2, 3, 4)}, None, (1, 2, 5, 7)),
}


def one_layer(kind: str, known: set):
    text, shapes, reference, top_shape = ONE_LAYER_NETS[kind]
    if kind not in known:
        return {"known": False}
    net = net_from(inputs(*shapes.items()) + text)
    # Spread 4: some values beyond ReLU6's 6.
    feeds = {name: 4 * rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    if kind == "DetectionOutput":  # PriorBox's layout: corner boxes (x0, y0, x1, y1), then variances
        centre, half = rng.uniform(0.2, 0.8, (PRIORS, 2)), rng.uniform(0.05, 0.15, (PRIORS, 2))
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        variances = np.tile([0.1, 0.1, 0.2, 0.2], (PRIORS, 1))
        feeds["priors"] = np.stack([boxes.ravel(), variances.ravel()])[None].astype(np.float32)
        # and class scores as a softmax gives them
        scores = np.exp(feeds["conf"].reshape(-1, 3))
        feeds["conf"] = (scores / scores.sum(axis=1, keepdims=True)).reshape(1, -1)
    for name, value in feeds.items():
        net.blobs[name].data[...] = value
    got = net.forward()["y"]
    shape_ok = got.shape[-1] == 7 if top_shape is None else got.shape == top_shape
    error = None if reference is None else relative_error(got, reference(*feeds.values()))
    return {"known": True, "shape": list(got.shape), "shape_ok": bool(shape_ok), "error": error}


if __name__ == "__main__":
    caffe.set_mode_cpu()
    known = set(caffe.layer_type_list())
    json.dump({"python": sys.version.split()[0], "numpy": np.__version__,
               "conv_relu_fc": conv_relu_fc(), "layer_types": sorted(known),
               "one_layer": {kind: one_layer(kind, known) for kind in ONE_LAYER_NETS}}, sys.stdout)
