"""A TF Object Detection API SSD frozen with its post-processing (form (a), without
--ssd-config): what the ops after the two head outputs compute, read from the graph by probing it
in a TF1 session, as the settings export/ssd.py turns into an `ssd_detection_output` layer.

`--outputs` names the box encodings (N, anchors, 4) and the class logits with background (N,
anchors, classes + 1), in that order; the graph feeds them, through any decoding and score ops,
to a CombinedNonMaxSuppression. Fed in place of the head outputs (a TF1 session feeds any
tensor):
- zero encodings: the boxes handed to the NMS are the anchors (constants or generated);
- an encoding of 1 in one coordinate at a time: how far each moves the boxes, i.e. the
  centre-size coder's scales; random encodings then must decode as that coder does (else
  refused: the decoding is not the centre-size coder);
- random logits: the NMS's scores are a sigmoid, softmax or identity of logits / logit_scale with
  the background column (0) dropped (else refused).
The NMS op's own inputs give the IoU and score thresholds and the per-class and total maxima. The
layer's reference detections are the graph's own NMS outputs for the reference batch, which must
also be what export/ssd.py's TensorFlow reimplementation finds with the probed settings.

Refused by name: NMS inside a loop (the API's TF1 export runs its NMS in a map_fn over the
batch: a while loop), several NMS ops, per-class boxes, boxes clipped before the NMS.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from ... import intermediate
from ...errors import ConversionError
from ...measure import detection_error
from ..ssd import SCORE_CONVERTERS, SSDSettings, add_detection_output, tf_detections
from .freeze import CALL_PREFIX, _named_in, _parse_names
from .nodes import node_of_tensor, nodes_by_name, split_input
from .session import SESSION_CONFIG, import_graph

v1 = tf.compat.v1

NMS_OPS = ("CombinedNonMaxSuppression", "NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3",
           "NonMaxSuppressionV4", "NonMaxSuppressionV5")
LOOP_OPS = ("While", "StatelessWhile", "Enter")
# How closely the probed coder and score converter must reproduce the graph (boxes are fractions
# of the image, scores in [0, 1]): float32 rounding is ~1e-7, a wrong guess is off by far more.
PROBE_TOLERANCE = 1e-5
# The API's score converters over the last axis (float64 numpy), as post_processing_builder's.
CONVERTERS = {
    "SIGMOID": lambda x: 1 / (1 + np.exp(-x)),
    "SOFTMAX": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.sum(np.exp(x - x.max(-1, keepdims=True)), -1,
                                                                       keepdims=True),
    "IDENTITY": lambda x: x,
}


class PostProcessingGraph(NamedTuple):
    graph_def: object          # frozen: the NMS op and everything it needs
    nms: str                   # its node name
    box_encodings: str         # tensor names of the two head outputs in that graph
    class_logits: str


def find_post_processing(source, outputs, where) -> Optional[PostProcessingGraph]:
    """The graph of the NMS that the two --outputs feed, frozen (a TF1 checkpoint's variables
    too: call this before its session closes), or None when no NMS follows them."""
    names = _named_in(source.graph_def, _parse_names(outputs), source.variable_names)
    if not names or len(names) != 2:
        return None
    nodes = nodes_by_name(source.graph_def)
    consumers: Dict[str, List[str]] = {}
    for node in source.graph_def.node:
        for name in node.input:
            consumers.setdefault(split_input(name)[0], []).append(node.name)
    downstream, stack = set(), [node_of_tensor(name) for name in names]
    while stack:
        for consumer in consumers.get(stack.pop(), []):
            if consumer not in downstream:
                downstream.add(consumer)
                stack.append(consumer)
    nms = sorted(name for name in downstream if nodes[name].op in NMS_OPS)
    loops = sorted(name for name in downstream if nodes[name].op in LOOP_OPS)
    in_functions = any(node.op in NMS_OPS for function in source.graph_def.library.function
                       for node in function.node_def)
    if loops and (nms or in_functions):
        raise ConversionError(
            "%s: '%s' (%s): the post-processing runs its NMS in a loop (a map_fn over the batch, as the "
            "API's TF1 export does), which DetectionOutput cannot be matched against op by op; export "
            "the graph with CombinedNonMaxSuppression, or convert up to the heads with --ssd-config" % (
                where, loops[0], nodes[loops[0]].op))
    if not nms:
        return None
    if len(nms) != 1 or nodes[nms[0]].op != "CombinedNonMaxSuppression":
        raise ConversionError("%s: %s: NMS ops per class or per image are not read from a graph (their "
                              "outputs are gathered and cut by further ops); only one CombinedNonMaxSuppression "
                              "after the heads is: convert up to the heads with --ssd-config" % (
                                  where, ", ".join("'%s' (%s)" % (n, nodes[n].op) for n in nms)))
    if source.session is not None:
        frozen = v1.graph_util.convert_variables_to_constants(source.session, source.graph_def, nms)
    else:
        frozen = v1.graph_util.extract_sub_graph(source.graph_def, nms)
    return PostProcessingGraph(frozen, nms[0], *names)


class _Probe:
    """The post-processing graph in a session: the NMS op's inputs for given head outputs."""

    def __init__(self, post: PostProcessingGraph, model: intermediate.Model, where: str):
        self.graph = import_graph(post.graph_def)
        self.session = v1.Session(graph=self.graph, config=SESSION_CONFIG)
        self.nms = self.graph.get_operation_by_name(post.nms)
        self.where = "%s: '%s' (%s)" % (where, post.nms, self.nms.type)
        self.heads = [self.graph.get_tensor_by_name(name if ":" in name else name + ":0")
                      for name in (post.box_encodings, post.class_logits)]
        # the model's inputs, for any op after the heads that reads the image (its shape)
        inputs = {CALL_PREFIX.sub("", name): model.reference_input(name) for name in model.inputs}
        self.images = {op.outputs[0]: inputs[CALL_PREFIX.sub("", op.name)] for op in self.graph.get_operations()
                       if op.type == "Placeholder" and CALL_PREFIX.sub("", op.name) in inputs}

    def run(self, fetches, codes: np.ndarray, logits: np.ndarray):
        feeds = dict(self.images)
        feeds.update({self.heads[0]: codes, self.heads[1]: logits})
        try:
            return self.session.run(fetches, feeds)
        except tf.errors.OpError as error:
            raise ConversionError("%s: probing the post-processing failed: %s" % (
                self.where, error.message.split("\n")[0]))

    def boxes(self, codes, logits) -> np.ndarray:
        return self.run(self.nms.inputs[0], codes, logits)


def _centre_size(boxes: np.ndarray):
    boxes = boxes.astype(np.float64)
    sizes = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + sizes / 2, sizes


def _rounded(value: float) -> float:
    """A probed setting to the 6 significant digits a config would give it."""
    return float("%.6g" % value)


def probe_settings(probe: _Probe, codes: np.ndarray, logits: np.ndarray):
    """(SSDSettings with the anchors as an array) from the graph's response to chosen head outputs."""
    where = probe.where
    nms = probe.nms
    if nms.get_attr("clip_boxes"):
        raise ConversionError("%s: clip_boxes: the NMS clips the boxes to the image first, DetectionOutput "
                              "does not" % where)
    boxes = probe.boxes(np.zeros_like(codes), logits)
    if boxes.ndim != 4 or boxes.shape[2] != 1:
        raise ConversionError("%s: boxes %s: per-class boxes (q > 1); DetectionOutput shares one box per "
                              "anchor over the classes" % (where, list(boxes.shape)))
    anchors = boxes[0, :, 0, :].astype(np.float32)
    if np.any(boxes[:, :, 0, :] != anchors):
        raise ConversionError("%s: the anchors differ from image to image" % where)
    centres, sizes = _centre_size(anchors)
    scales = []
    for coordinate in range(4):  # ty, tx, th, tw
        unit = np.zeros_like(codes)
        unit[..., coordinate] = 1.0
        moved_centres, moved_sizes = _centre_size(probe.boxes(unit, logits)[0, :, 0, :])
        axis = coordinate % 2
        if coordinate < 2:
            ratio = sizes[:, axis] / (moved_centres[:, axis] - centres[:, axis])
        else:
            ratio = 1.0 / np.log(moved_sizes[:, axis] / sizes[:, axis])
        scales.append(_rounded(float(np.median(ratio))))
    random = np.random.default_rng(0)
    trial = random.normal(0.0, 0.5, codes.shape).astype(np.float32)
    decoded = probe.boxes(trial, logits)[:, :, 0, :].astype(np.float64)
    t = trial.astype(np.float64) / np.array(scales)
    centre = t[..., :2] * sizes + centres
    size = np.exp(t[..., 2:]) * sizes
    expected = np.concatenate([centre - size / 2, centre + size / 2], -1)
    if not np.all(np.isfinite(scales)) or np.max(np.abs(decoded - expected)) > PROBE_TOLERANCE:
        raise ConversionError("%s: the graph's box decoding is not the centre-size coder (probed scales "
                              "%s)" % (where, ", ".join("%.6g" % s for s in scales)))

    trial_logits = random.normal(0.0, 2.0, logits.shape).astype(np.float32)
    scores = probe.run(nms.inputs[1], codes, trial_logits).astype(np.float64)
    if scores.shape[-1] != logits.shape[-1] - 1:
        raise ConversionError("%s: %d score columns for %d logit columns: expected the background column "
                              "(0) dropped" % (where, scores.shape[-1], logits.shape[-1]))
    converter, logit_scale = _score_converter(trial_logits.astype(np.float64), scores, where)

    per_class, total, iou, threshold = probe.run(list(nms.inputs[2:6]), codes, logits)
    settings = SSDSettings(
        int(logits.shape[-1] - 1), anchors, tuple(scales), converter, logit_scale, float(threshold),
        float(iou), int(per_class), int(total))
    if settings.max_detections_per_class < settings.max_total_detections:
        raise ConversionError(
            "%s: max_output_size_per_class %d < max_total_size %d: DetectionOutput caps each class before "
            "NMS (top_k) or all classes after it (keep_top_k), never each class after it" % (
                where, settings.max_detections_per_class, settings.max_total_detections))
    return settings


def _score_converter(logits: np.ndarray, scores: np.ndarray, where: str):
    """(converter, logit_scale) that turn `logits` into `scores` (background column dropped)."""
    inside = (scores > 1e-4) & (scores < 1 - 1e-4)
    with np.errstate(all="ignore"):
        logit_of_score = np.log(scores / (1 - scores))
        if scores.shape[-1] > 1:  # softmax: differences of log scores are differences of logits
            softmax_ratio = (logits[..., 2:] - logits[..., 1:2]) / (np.log(scores[..., 1:]) - np.log(scores[..., :1]))
        else:  # one class: its softmax against the background is a sigmoid of the difference
            softmax_ratio = (logits[..., 1:] - logits[..., :1]) / logit_of_score
        guesses = {"IDENTITY": np.median(logits[..., 1:] / scores),
                   "SIGMOID": np.median((logits[..., 1:] / logit_of_score)[inside]),
                   "SOFTMAX": np.nanmedian(softmax_ratio)}
    for converter in SCORE_CONVERTERS:
        scale = _rounded(float(guesses[converter]))
        if not np.isfinite(scale) or scale == 0:
            continue
        computed = CONVERTERS[converter](logits / scale)[..., 1:]
        if np.max(np.abs(computed - scores)) <= PROBE_TOLERANCE:
            return converter, scale
    raise ConversionError("%s: the scores are not a sigmoid, softmax or identity of the logits / a scale, "
                          "background column 0 dropped" % where)


def add_graph_detection_output(model: intermediate.Model, post: PostProcessingGraph, where: str) -> None:
    """Probe the graph and append the `ssd_detection_output` layer, its reference detections the
    graph's own NMS outputs on the model's reference head outputs."""
    if len(model.outputs) != 2:
        raise ConversionError("%s: --outputs names the box encodings and the class logits that feed '%s'; "
                              "here %d outputs" % (where, post.nms, len(model.outputs)))
    codes, logits = (model.activation(name) for name in model.outputs)
    probe = _Probe(post, model, where)
    try:
        settings = probe_settings(probe, codes, logits)
        boxes, scores, classes, counts = probe.run(probe.nms.outputs, codes, logits)
    finally:
        probe.session.close()
    rows = np.array([[image, classes[image, k] + 1, scores[image, k]] + list(boxes[image, k, [1, 0, 3, 2]])
                     for image in range(len(codes)) for k in range(counts[image])], np.float32).reshape(-1, 7)
    found = tf_detections(codes, logits, settings.anchors, settings)
    error = detection_error(found, rows)
    if error > PROBE_TOLERANCE:
        raise ConversionError("%s: the graph's detections differ from those of the probed post-processing "
                              "(%s, coder scales %s, IoU %.6g, score threshold %.6g): error %.3g" % (
                                  probe.where, settings.score_converter, settings.coder_scales,
                                  settings.iou_threshold, settings.score_threshold, error))
    add_detection_output(model, settings, where, reference_rows=rows,
                         anchors_source="'%s': its boxes at zero box encodings" % post.nms)
