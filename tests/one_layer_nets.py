"""One-layer nets with numpy references: at least one case per Caffe layer type that a target
profile allows (or that was tried for one and refused, see tf2caffe/caffe/profiles.py).

Each runtime that has a type runs its cases: OpenCV in process (tests/test_layer_types.py), the
bullseye pycaffe in the chroot and the source-built Caffe in its venv (both through
tests/pycaffe_one_layer.py). Every net is an Input layer, sometimes a helper layer, and the layer
under test, named "l"; its tops (or a helper's that reads them) are compared with the reference
(relative error, float64 numpy).

Runs in all three environments: numpy only, Python 3.9 / numpy 1.19 (the chroot). Inputs come
from np.random.RandomState, whose streams are the same in every numpy version.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

from tf2caffe.caffe.netspec import CaffeLayer, NetSpec, Quoted, shape_param

TESTED = "l"  # the name of the layer under test in every net
TOLERANCE = 1e-5  # the project's per-layer tolerance (float32 runtimes against float64 numpy)


class Case(NamedTuple):
    caffe_type: str
    net: NetSpec
    inputs: Dict[str, np.ndarray]
    expected: Dict[str, np.ndarray]  # top of the fetched layer -> reference, in its top order
    fetched: str = TESTED  # the layer whose tops are compared


def relu6(x):
    return np.clip(x, 0, 6)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0, x)


erf = np.vectorize(math.erf)


def convolution(x, w, b, stride=1, pad=0, dilation=1, group=1):
    n, _, h, width = x.shape
    out_channels, group_channels, kh, kw = w.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    ow = (width + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, out_channels, oh, ow))
    per_group = out_channels // group
    for g in range(group):
        xs = padded[:, g * group_channels:(g + 1) * group_channels]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                           j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
                out[:, g * per_group:(g + 1) * per_group] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * per_group:(g + 1) * per_group, :, i, j])
    return out + b[None, :, None, None]


def deconvolution(x, w, b, stride, pad):
    n, _, h, width = x.shape
    _, out_channels, kh, kw = w.shape
    full = np.zeros((n, out_channels, (h - 1) * stride + kh, (width - 1) * stride + kw))
    for i in range(kh):
        for j in range(kw):
            full[:, :, i:i + stride * (h - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride] += np.einsum(
                "nchw,co->nohw", x.astype(np.float64), w[:, :, i, j])
    return full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad] + b[None, :, None, None]


def pooling(x, reduce, kernel, stride):
    n, c, h, w = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    windows = np.stack([x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
                        for i in range(kernel) for j in range(kernel)])
    return reduce(windows.astype(np.float64), axis=0)


def lrn(x, size, alpha, beta, k):
    squares = np.pad(x.astype(np.float64) ** 2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    total = sum(squares[:, i:i + x.shape[1]] for i in range(size))
    return x / (k + alpha / size * total) ** beta


def mvn(x, eps):
    centred = x - x.mean(axis=(2, 3), keepdims=True)
    return centred / (np.sqrt((centred ** 2).mean(axis=(2, 3), keepdims=True)) + eps)


def l2_normalize(x, axes, eps):
    """SSD's Normalize (before its scale): x / sqrt(sum(x², axes) + eps)."""
    return x / np.sqrt((x.astype(np.float64) ** 2).sum(axis=axes, keepdims=True) + eps)


def bilinear_align_corners(x, oh, ow):
    """PSPNet's Interp: corners of input and output coincide."""
    h, w = x.shape[2:]
    ys, xs = np.arange(oh) * (h - 1) / (oh - 1), np.arange(ow) * (w - 1) / (ow - 1)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    x = x.astype(np.float64)
    top = x[:, :, y0][:, :, :, x0] * (1 - fx) + x[:, :, y0][:, :, :, x0 + 1] * fx
    bottom = x[:, :, y0 + 1][:, :, :, x0] * (1 - fx) + x[:, :, y0 + 1][:, :, :, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------- SSD

def prior_boxes(feature_hw, image_hw, min_sizes, max_sizes, aspect_ratios, flip, clip, variances,
                step=None, offset=0.5):
    """SSD-Caffe's PriorBox (prior_box_layer.cpp): per cell (row-major), centred at
    (cell + offset) · step, boxes of each min size, sqrt(min · max) for its max size, then each
    aspect ratio other than 1 (with 1/ratio after it if `flip`), as corners (x0, y0, x1, y1) /
    image size, clipped to [0, 1] if `clip`; then the variances, one row of 4 per box."""
    ratios = [1.0]
    for ratio in aspect_ratios:
        if all(abs(ratio - known) >= 1e-6 for known in ratios):
            ratios.append(ratio)
            if flip:
                ratios.append(1.0 / ratio)
    sizes = []
    for index, size in enumerate(min_sizes):
        sizes.append((size, size))
        if max_sizes:
            sizes.append((math.sqrt(size * max_sizes[index]),) * 2)
        sizes.extend((size * math.sqrt(r), size / math.sqrt(r)) for r in ratios if abs(r - 1) >= 1e-6)
    (fh, fw), (ih, iw) = feature_hw, image_hw
    step_h, step_w = (step, step) if step else (ih / fh, iw / fw)
    boxes = np.array([[(cx - w / 2) / iw, (cy - h / 2) / ih, (cx + w / 2) / iw, (cy + h / 2) / ih]
                      for cy in (np.arange(fh) + offset) * step_h
                      for cx in (np.arange(fw) + offset) * step_w
                      for w, h in sizes])
    if clip:
        boxes = np.clip(boxes, 0, 1)
    variances = np.tile(variances if len(variances) == 4 else variances * 4, (len(boxes), 1))
    return np.stack([boxes.ravel(), variances.ravel()])[None]


def decode_center_size(priors, loc):
    """SSD's CENTER_SIZE decoding of `loc` (boxes, 4) against `priors` (1, 2, boxes · 4)."""
    corners, variances = priors[0, 0].reshape(-1, 4), priors[0, 1].reshape(-1, 4)
    size = corners[:, 2:] - corners[:, :2]
    centre = (corners[:, :2] + corners[:, 2:]) / 2 + variances[:, :2] * loc[:, :2] * size
    size = np.exp(variances[:, 2:] * loc[:, 2:]) * size
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def iou(a, b):
    """Jaccard overlap of normalised corner boxes (SSD's JaccardOverlap: no +1 on sizes)."""
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area(a) + area(b) - inter)


class Detection(NamedTuple):
    confidence_threshold: float
    nms_threshold: float
    top_k: int
    keep_top_k: int


def detections(boxes, scores, params: Detection, margins: Optional[List[float]] = None):
    """SSD's DetectionOutput for one image, shared locations, background class 0: per class, the
    boxes scoring over the confidence threshold, best first (top_k of them), each kept unless it
    overlaps a kept one by more than the NMS threshold; then the keep_top_k best overall. Rows
    (image 0, label, score, x0, y0, x1, y1), sorted by label then falling score. `margins`
    collects how far each decision is from flipping: scores from the threshold, overlaps from
    the NMS threshold, and the scores either side of the top_k and keep_top_k cuts."""
    margins = [] if margins is None else margins
    rows = []
    for label in range(1, scores.shape[1]):
        ranked = [i for i in np.argsort(-scores[:, label], kind="stable")
                  if scores[i, label] > params.confidence_threshold]
        margins.extend(abs(scores[:, label] - params.confidence_threshold))
        if len(ranked) > params.top_k:
            margins.append(scores[ranked[params.top_k - 1], label] - scores[ranked[params.top_k], label])
        kept = []
        for i in ranked[:params.top_k]:
            overlaps = [iou(boxes[i], boxes[j]) for j in kept]
            margins.extend(abs(o - params.nms_threshold) for o in overlaps)
            if all(o <= params.nms_threshold for o in overlaps):
                kept.append(i)
        rows.extend([0, label, scores[i, label]] + list(boxes[i]) for i in kept)
    rows.sort(key=lambda row: -row[2])
    if len(rows) > params.keep_top_k:
        margins.append(rows[params.keep_top_k - 1][2] - rows[params.keep_top_k][2])
    rows = rows[:params.keep_top_k]
    return np.array(sorted(rows, key=lambda row: (row[1], -row[2])), dtype=np.float64).reshape(1, 1, -1, 7)


def sorted_detections(rows):
    """A DetectionOutput top with its rows in `detections`' order (the runtimes order them by
    class or by score, depending on whether keep_top_k cut anything)."""
    rows = np.asarray(rows).reshape(-1, 7)
    return rows[np.lexsort((-rows[:, 2], rows[:, 1]))].reshape(1, 1, -1, 7)


# ---------------------------------------------------------------- building the nets

def one_layer(caffe_type, inputs: Dict[str, np.ndarray], params=None, blobs=(), tops=1, helpers=(),
              bottoms=None) -> NetSpec:
    """Input layer(s) for `inputs`, then `helpers`, then the tested layer reading `bottoms`
    (default: every input) with `tops` tops: "l", then "l_1", ..."""
    net = NetSpec(caffe_type)
    names = list(inputs)
    net.add(CaffeLayer("input", "Input", [], names, {"input_param": {
        "shape": [shape_param(inputs[name].shape) for name in names]}}))
    for helper in helpers:
        net.add(helper)
    top_names = [TESTED if i == 0 else "%s_%d" % (TESTED, i) for i in range(tops)]
    net.add(CaffeLayer(TESTED, caffe_type, names if bottoms is None else bottoms, top_names, params, blobs))
    return net


def case(caffe_type, inputs, expected, **net_options) -> Case:
    """`expected`: one array (the single top) or a list (one per top)."""
    expected = expected if isinstance(expected, list) else [expected]
    net = one_layer(caffe_type, inputs, tops=len(expected), **net_options)
    return Case(caffe_type, net, inputs, dict(zip(net.layers[-1].tops, expected)))


def elementwise(caffe_type, function, params=None, spread=4.0) -> Callable[[np.random.RandomState], Case]:
    """A case of an elementwise layer: f(x) on a (2, 3, 4, 5) input spread over ±`spread`."""
    def make(rng):
        x = (spread * rng.standard_normal((2, 3, 4, 5))).astype(np.float32)
        return case(caffe_type, {"x": x}, function(x.astype(np.float64)), params=params)
    return make


def normal(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _convolution(rng):
    x, w, b = normal(rng, 2, 4, 7, 6), normal(rng, 6, 2, 3, 3, scale=0.3), normal(rng, 6)
    return case("Convolution", {"x": x}, convolution(x, w, b, stride=2, pad=1, dilation=1, group=2),
                params={"convolution_param": {"num_output": 6, "kernel_size": 3, "stride": 2, "pad": 1,
                                              "group": 2}}, blobs=[w, b])


def _dilated_convolution(rng):
    x, w, b = normal(rng, 1, 3, 9, 8), normal(rng, 4, 3, 3, 3, scale=0.3), normal(rng, 4)
    return case("Convolution", {"x": x}, convolution(x, w, b, pad=2, dilation=2),
                params={"convolution_param": {"num_output": 4, "kernel_size": 3, "pad": 2, "dilation": 2}},
                blobs=[w, b])


def _deconvolution(rng):
    x, w, b = normal(rng, 2, 3, 4, 5), normal(rng, 3, 4, 3, 3, scale=0.3), normal(rng, 4)
    return case("Deconvolution", {"x": x}, deconvolution(x, w, b, stride=2, pad=1),
                params={"convolution_param": {"num_output": 4, "kernel_size": 3, "stride": 2, "pad": 1}},
                blobs=[w, b])


def _inner_product(rng):
    x, w, b = normal(rng, 3, 2, 2, 3), normal(rng, 5, 12, scale=0.3), normal(rng, 5)
    return case("InnerProduct", {"x": x}, x.reshape(3, -1).astype(np.float64) @ w.T + b,
                params={"inner_product_param": {"num_output": 5}}, blobs=[w, b])


def _pooling(pool, reduce):
    def make(rng):
        x = normal(rng, 2, 3, 7, 7)
        return case("Pooling", {"x": x}, pooling(x, reduce, 3, 2), params={"pooling_param": {
            "pool": pool, "kernel_size": 3, "stride": 2}})
    return make


def _prelu(rng):
    x, slopes = normal(rng, 2, 3, 4, 5), rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    return case("PReLU", {"x": x}, np.where(x > 0, x, x * slopes[None, :, None, None]), blobs=[slopes])


def _batch_norm(rng):
    x = normal(rng, 2, 3, 4, 5)
    mean, variance = normal(rng, 3), rng.uniform(0.5, 2, 3).astype(np.float32)
    factor = np.array([2.0], np.float32)  # Caffe stores running sums, divided by this factor
    expected = (x - mean[None, :, None, None] / 2) / np.sqrt(variance[None, :, None, None] / 2 + 1e-3)
    return case("BatchNorm", {"x": x}, expected, params={"batch_norm_param": {"eps": 1e-3}},
                blobs=[mean, variance, factor])


def _scale(rng):
    x, gamma, beta = normal(rng, 2, 3, 4, 5), normal(rng, 3), normal(rng, 3)
    return case("Scale", {"x": x}, x * gamma[None, :, None, None] + beta[None, :, None, None],
                params={"scale_param": {"bias_term": True}}, blobs=[gamma, beta])


def _bias(rng):
    x, beta = normal(rng, 2, 3, 4, 5), normal(rng, 3)
    return case("Bias", {"x": x}, x + beta[None, :, None, None].astype(np.float64), blobs=[beta])


def _eltwise(operation, combine, coeff=None):
    def make(rng):
        a, b = normal(rng, 2, 3, 4, 5), normal(rng, 2, 3, 4, 5)
        params = {"operation": operation}
        if coeff:
            params["coeff"] = coeff
        return case("Eltwise", {"a": a, "b": b}, combine(a.astype(np.float64), b),
                    params={"eltwise_param": params})
    return make


def _concat(rng):
    a, b = normal(rng, 2, 3, 4, 5), normal(rng, 2, 2, 4, 5)
    return case("Concat", {"a": a, "b": b}, np.concatenate([a, b], axis=1), params={"concat_param": {"axis": 1}})


def _slice(rng):
    x = normal(rng, 2, 4, 3, 5)
    return case("Slice", {"x": x}, [x[:, :1], x[:, 1:3], x[:, 3:]],
                params={"slice_param": {"axis": 1, "slice_point": [1, 3]}})


def _split(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Split", {"x": x}, [x, x])


def _silence(rng):
    # A net must produce something: a Dropout (identity) reads x, the tested Silence swallows y.
    x, y = normal(rng, 2, 3), normal(rng, 2, 4)
    net = one_layer("Silence", {"x": x, "y": y}, tops=0, bottoms=["y"])
    net.add(CaffeLayer("keep", "Dropout", ["x"], ["keep"]))
    return Case("Silence", net, {"x": x, "y": y}, {"keep": x}, "keep")


def _input(rng):
    # OpenCV cannot fetch an Input layer's output: a Dropout (identity) reads it back.
    x = normal(rng, 2, 3, 4, 5)
    net = NetSpec("Input")
    net.add(CaffeLayer(TESTED, "Input", [], ["x"], {"input_param": {"shape": shape_param(x.shape)}}))
    net.add(CaffeLayer("read", "Dropout", ["x"], ["read"]))
    return Case("Input", net, {"x": x}, {"read": x}, "read")


def _reshape(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Reshape", {"x": x}, x.reshape(2, 4, 15),
                params={"reshape_param": {"shape": shape_param([0, 4, -1])}})


def _softmax(rng):
    x = normal(rng, 2, 5, 3, 4, scale=3.0).astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return case("Softmax", {"x": x.astype(np.float32)}, e / e.sum(axis=1, keepdims=True),
                params={"softmax_param": {"axis": 1}})


def _lrn(rng):
    x = normal(rng, 2, 7, 3, 4, scale=2.0)
    return case("LRN", {"x": x}, lrn(x.astype(np.float64), 5, 0.1, 0.75, 1.0),
                params={"lrn_param": {"local_size": 5, "alpha": 0.1, "beta": 0.75, "k": 1.0}})


def _mvn(rng):
    x = normal(rng, 2, 3, 4, 5) + 1
    return case("MVN", {"x": x}, mvn(x.astype(np.float64), 1e-9), params={"mvn_param": {"eps": 1e-9}})


def _log(params, function):
    def make(rng):
        x = rng.uniform(0.1, 4, (2, 3, 4, 5)).astype(np.float32)
        return case("Log", {"x": x}, function(x.astype(np.float64)), params=params)
    return make


def _permute(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Permute", {"x": x}, x.transpose(0, 2, 3, 1),
                params={"permute_param": {"order": [0, 2, 3, 1]}})


def _normalize(channel_shared, across_spatial=False):
    def make(rng):
        x = normal(rng, 2, 3, 4, 5)
        # SSD-Caffe holds a shared scale as a 0-d blob
        scale = np.array(1.5, np.float32) if channel_shared else rng.uniform(0.5, 2, 3).astype(np.float32)
        # an eps as big as a sum of squares: a runtime that ignored it would be far off
        expected = l2_normalize(x, (1, 2, 3) if across_spatial else (1,), 0.5) * np.reshape(scale, (-1, 1, 1))
        return case("Normalize", {"x": x}, expected, blobs=[scale], params={"norm_param": {
            "across_spatial": across_spatial, "channel_shared": channel_shared, "eps": 0.5}})
    return make


def _interp(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Interp", {"x": x}, bilinear_align_corners(x, 7, 9), params={"interp_param": {"zoom_factor": 2}})


def _shuffle_channel(rng):
    x = normal(rng, 2, 6, 3, 4)
    return case("ShuffleChannel", {"x": x}, x.reshape(2, 2, 3, 3, 4).transpose(0, 2, 1, 3, 4).reshape(x.shape),
                params={"shuffle_channel_param": {"group": 2}})


def _upsample(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Upsample", {"x": x}, x.repeat(2, axis=2).repeat(2, axis=3), params={"upsample_param": {"scale": 2}})


def _crop(rng):
    x, like = normal(rng, 2, 3, 6, 7), normal(rng, 2, 3, 3, 4)
    return case("Crop", {"x": x, "like": like}, x[:, :, 1:4, 2:6],
                params={"crop_param": {"axis": 2, "offset": [1, 2]}})


def _tile(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Tile", {"x": x}, np.tile(x, (1, 2, 1, 1)), params={"tile_param": {"axis": 1, "tiles": 2}})


def _reduction(rng):
    x = normal(rng, 2, 3, 4, 5)
    return case("Reduction", {"x": x}, x.astype(np.float64).sum(axis=(1, 2, 3)),
                params={"reduction_param": {"operation": "SUM", "axis": 1}})


def _argmax(rng):
    x = normal(rng, 2, 6, 1, 1)
    return case("ArgMax", {"x": x}, x.argmax(axis=1)[:, None].astype(np.float64),
                params={"argmax_param": {"axis": 1}})


def _dummy_data(rng):
    x = normal(rng, 2, 3)
    return case("DummyData", {"x": x}, np.full((2, 3), 2.5), bottoms=[], params={"dummy_data_param": {
        "shape": shape_param([2, 3]), "data_filler": {"type": Quoted("constant"), "value": 2.5}}})


# A 4x4 feature map of a 32x32 image, in the configuration of SSD's heads.
PRIOR_BOX = dict(feature_hw=(4, 5), image_hw=(32, 40), min_sizes=[8.0], max_sizes=[20.0],
                 aspect_ratios=[2.0, 3.0], flip=True, clip=True, variances=[0.1, 0.1, 0.2, 0.2],
                 step=None, offset=0.5)


def _prior_box(options):
    def make(rng):
        feature, image = normal(rng, 1, 2, *options["feature_hw"]), normal(rng, 1, 3, *options["image_hw"])
        params = {"min_size": options["min_sizes"], "max_size": options["max_sizes"],
                  "aspect_ratio": options["aspect_ratios"], "flip": options["flip"], "clip": options["clip"],
                  "variance": options["variances"], "offset": options["offset"]}
        if options["step"]:
            params["step"] = options["step"]
        return case("PriorBox", {"feature": feature, "image": image}, prior_boxes(**options),
                    params={"prior_box_param": params})
    return make


DETECTION = Detection(confidence_threshold=0.3, nms_threshold=0.45, top_k=20, keep_top_k=7)
DETECTION_CLASSES = 4
DETECTION_MARGIN = 1e-3  # scores and overlaps at least this far from the thresholds


def _detection_output(rng):
    """Priors on a grid (overlapping neighbours), small offsets, softmax scores; redrawn until
    every score and every overlap NMS compares is DETECTION_MARGIN away from its threshold, so
    float32 rounding cannot flip a decision, and keep_top_k cuts the detections."""
    priors = prior_boxes((3, 3), (30, 30), [12.0], [], [2.0], True, True, [0.1, 0.1, 0.2, 0.2])
    count = priors.shape[2] // 4
    while True:
        loc = normal(rng, count, 4, scale=0.3)
        logits = normal(rng, count, DETECTION_CLASSES, scale=2.0)
        scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        scores = scores.astype(np.float32)
        boxes = decode_center_size(priors.astype(np.float64), loc.astype(np.float64))
        margins: List[float] = []
        expected = detections(boxes, scores.astype(np.float64), DETECTION, margins)
        uncut = detections(boxes, scores.astype(np.float64), DETECTION._replace(keep_top_k=scores.size))
        if min(margins) >= DETECTION_MARGIN and uncut.shape[2] > DETECTION.keep_top_k:
            break
    params = {"num_classes": DETECTION_CLASSES, "share_location": True, "background_label_id": 0,
              "code_type": "CENTER_SIZE", "keep_top_k": DETECTION.keep_top_k,
              "confidence_threshold": DETECTION.confidence_threshold,
              "nms_param": {"nms_threshold": DETECTION.nms_threshold, "top_k": DETECTION.top_k}}
    inputs = {"loc": loc.reshape(1, -1), "conf": scores.reshape(1, -1), "priors": priors.astype(np.float32)}
    return case("DetectionOutput", inputs, expected, params={"detection_output_param": params})


# case name -> its builder; the name is the Caffe type, or "Type/variant".
CASES: Dict[str, Callable[[np.random.RandomState], Case]] = {
    "Input": _input,
    "Convolution": _convolution,
    "Convolution/dilated": _dilated_convolution,
    "Deconvolution": _deconvolution,
    "InnerProduct": _inner_product,
    "Pooling/MAX": _pooling("MAX", np.max),
    "Pooling/AVE": _pooling("AVE", np.mean),
    "ReLU": elementwise("ReLU", lambda x: np.where(x > 0, x, 0.1 * x), {"relu_param": {"negative_slope": 0.1}}),
    "PReLU": _prelu,
    "ELU": elementwise("ELU", lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)), {"elu_param": {"alpha": 0.7}}),
    "Sigmoid": elementwise("Sigmoid", sigmoid),
    "TanH": elementwise("TanH", np.tanh),
    "AbsVal": elementwise("AbsVal", np.abs),
    "Power": elementwise("Power", lambda x: (0.3 + 0.5 * x) ** 2,
                         {"power_param": {"power": 2.0, "scale": 0.5, "shift": 0.3}}),
    "Exp": elementwise("Exp", lambda x: np.exp(0.1 + 0.5 * x), {"exp_param": {"scale": 0.5, "shift": 0.1}}),
    "Log": _log(None, np.log),
    "Log/scale_shift": _log({"log_param": {"scale": 0.5, "shift": 0.2}}, lambda x: np.log(0.2 + 0.5 * x)),
    "BNLL": elementwise("BNLL", softplus),
    "Softmax": _softmax,
    "BatchNorm": _batch_norm,
    "Scale": _scale,
    "LRN": _lrn,
    "MVN": _mvn,
    "Eltwise/SUM": _eltwise("SUM", lambda a, b: a - 0.5 * b, coeff=[1.0, -0.5]),
    "Eltwise/PROD": _eltwise("PROD", lambda a, b: a * b),
    "Eltwise/MAX": _eltwise("MAX", np.maximum),
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Silence": _silence,
    "Flatten": elementwise("Flatten", lambda x: x.reshape(len(x), -1)),
    "Reshape": _reshape,
    "Dropout": elementwise("Dropout", lambda x: x, {"dropout_param": {"dropout_ratio": 0.5}}),
    # beyond the bvlc profile
    "ReLU6": elementwise("ReLU6", relu6),
    "Swish": elementwise("Swish", lambda x: x * sigmoid(x)),
    "Mish": elementwise("Mish", lambda x: x * np.tanh(softplus(x))),
    "HardSwish": elementwise("HardSwish", lambda x: x * relu6(x + 3) / 6),
    "HardSigmoid": elementwise("HardSigmoid", lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
    "Gelu": elementwise("Gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))),
    "Erf": elementwise("Erf", erf, spread=1.0),
    "Permute": _permute,
    "Normalize": _normalize(channel_shared=False),
    "Normalize/channel_shared": _normalize(channel_shared=True),
    "Normalize/across_spatial": _normalize(channel_shared=True, across_spatial=True),
    "Interp": _interp,
    "ShuffleChannel": _shuffle_channel,
    "PriorBox": _prior_box(PRIOR_BOX),
    "PriorBox/step_one_ratio_no_clip": _prior_box(dict(
        PRIOR_BOX, min_sizes=[6.0, 12.0], max_sizes=[], aspect_ratios=[2.0], flip=False, clip=False,
        variances=[0.1], step=8.0, offset=0.25)),
    "DetectionOutput": _detection_output,
    "Clip": elementwise("Clip", lambda x: np.clip(x, -1, 2), {"clip_param": {"min": -1.0, "max": 2.0}}),
    "Upsample": _upsample,
    "Threshold": elementwise("Threshold", lambda x: (x > 0.5).astype(np.float64),
                             {"threshold_param": {"threshold": 0.5}}),
    "Bias": _bias,
    "DummyData": _dummy_data,
    "Crop": _crop,
    "Tile": _tile,
    "Reduction": _reduction,
    "ArgMax": _argmax,
}


def build(name: str) -> Case:
    """The case `name`, with inputs and weights from its own seeded stream."""
    seed = sum(ord(c) for c in name)
    return CASES[name](np.random.RandomState(seed))


def cases_of(caffe_type: str) -> List[str]:
    return [name for name in CASES if name.split("/")[0] == caffe_type]


def compared_tops(case: Case, outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Outputs ready to compare: DetectionOutput's rows in the reference's order."""
    if case.caffe_type == "DetectionOutput":
        return {top: sorted_detections(value) for top, value in outputs.items()}
    return outputs
