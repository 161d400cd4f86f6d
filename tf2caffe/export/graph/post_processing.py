"""A TF Object Detection API SSD frozen with its post-processing (form (a), without
--ssd-config): what the ops after the two head outputs compute, read from the graph by probing it
in a TF1 session, as the settings export/ssd.py turns into an `ssd_detection_output` layer.

`--outputs` names the box encodings (N, anchors, 4) and the class logits with background (N,
anchors, classes + 1), in that order (without --outputs they are found from the NMS, `_heads`);
the graph feeds them, through any decoding and score ops,
to one CombinedNonMaxSuppression (the batch at once), or to one NonMaxSuppressionV3/V4/V5 per
class (one image: fed image by image), optionally followed by a TopKV2 keeping the best of all
classes. Fed in place of the head outputs (a TF1 session feeds any tensor):
- zero encodings: the boxes handed to the NMS are the anchors (constants or generated);
- an encoding of 1 in one coordinate at a time: how far each moves the boxes, i.e. the
  centre-size coder's scales; random encodings then must decode as that coder does (else
  refused: the decoding is not the centre-size coder);
- random logits: the NMS's scores are a sigmoid, softmax or identity of logits / logit_scale with
  the background column (0) dropped (else refused); per-class NMS ops are matched to their class
  by correlation.
The NMS ops' own inputs give the IoU and score thresholds and the per-class maximum; the
CombinedNonMaxSuppression's or the TopKV2's the total (without a TopKV2, every class keeps its
maximum). The layer's reference detections are the graph's own NMS outputs for the reference
batch, which must also be what export/ssd.py's TensorFlow reimplementation finds with the probed
settings.

Refused by name: NMS inside a loop (the API's TF1 export runs its NMS in a map_fn over the
batch: a while loop), other NMS ops or mixtures, per-class boxes, boxes clipped before the NMS,
soft NMS, and a per-class maximum below the total (as for a config).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from ... import intermediate
from ...errors import ConversionError
from ...measure import detection_error
from ..ssd import SCORE_CONVERTERS, SSDSettings, add_detection_output, tf_detections
from .freeze import CALL_PREFIX, PLACEHOLDERS, named_in, parse_names
from .nodes import node_of_tensor, nodes_by_name, split_input
from .session import SESSION_CONFIG, import_graph

v1 = tf.compat.v1

NMS_OPS = ("CombinedNonMaxSuppression", "NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3",
           "NonMaxSuppressionV4", "NonMaxSuppressionV5")
# NMS ops with a score threshold (boxes, scores, max_output_size, iou_threshold, score_threshold,
# ...): one per class, on one image, reads as per-class NMS.
PER_CLASS_NMS_OPS = ("NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5")
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
    graph_def: object          # frozen: the NMS ops and everything they need
    nms: List[str]             # their node names: one CombinedNonMaxSuppression, or one NMS per class
    top_k: Optional[str]       # per-class NMS: the TopKV2 after them that keeps the best overall
    box_encodings: str         # tensor names of the two head outputs in that graph
    class_logits: str


def _downstream(consumers: Dict[str, List[str]], starts: List[str]) -> set:
    found, stack = set(), list(starts)
    while stack:
        for consumer in consumers.get(stack.pop(), []):
            if consumer not in found:
                found.add(consumer)
                stack.append(consumer)
    return found


def find_post_processing(source, outputs, where) -> Optional[PostProcessingGraph]:
    """The graph of the NMS that the two --outputs feed (without --outputs: that the graph's
    placeholders feed, the two head outputs then found by `_heads`), frozen (a TF1 checkpoint's
    variables too: call this before its session closes), or None when no NMS follows them."""
    names = named_in(source.graph_def, parse_names(outputs), source.variable_names)
    if names is not None and len(names) != 2:
        return None
    nodes = nodes_by_name(source.graph_def)
    consumers: Dict[str, List[str]] = {}
    for node in source.graph_def.node:
        for name in node.input:
            consumers.setdefault(split_input(name)[0], []).append(node.name)
    starts = [node_of_tensor(name) for name in names] if names else [
        node.name for node in source.graph_def.node if node.op in PLACEHOLDERS]
    downstream = _downstream(consumers, starts)
    nms = sorted(name for name in downstream if nodes[name].op in NMS_OPS)
    loops = sorted(name for name in downstream if nodes[name].op in LOOP_OPS)
    in_functions = any(node.op in NMS_OPS for function in source.graph_def.library.function
                       for node in function.node_def)
    if loops and (nms or in_functions):
        raise ConversionError(
            "%s: '%s' (%s): the post-processing runs its NMS in a loop (a map_fn over the batch, as the "
            "API's TF1 export does), which DetectionOutput cannot be matched against op by op; export "
            "the graph with CombinedNonMaxSuppression or one NMS per class, or convert up to the heads "
            "with --ssd-config" % (where, loops[0], nodes[loops[0]].op))
    if not nms:
        return None
    kinds = {nodes[name].op for name in nms}
    if not (kinds == {"CombinedNonMaxSuppression"} and len(nms) == 1 or kinds <= set(PER_CLASS_NMS_OPS)):
        raise ConversionError("%s: %s: a graph's post-processing is read from one CombinedNonMaxSuppression or "
                              "one %s per class; convert up to the heads with --ssd-config" % (
                                  where, ", ".join("'%s' (%s)" % (n, nodes[n].op) for n in nms),
                                  "/".join(PER_CLASS_NMS_OPS)))
    top_k = None
    if kinds != {"CombinedNonMaxSuppression"}:
        top_ks = sorted(name for name in _downstream(consumers, nms) if nodes[name].op == "TopKV2")
        top_k = top_ks[0] if len(top_ks) == 1 else None
    if names is None:
        names = _heads(source.graph_def, nms, where)
    kept = nms + ([top_k] if top_k else [])
    if source.session is not None:
        frozen = v1.graph_util.convert_variables_to_constants(source.session, source.graph_def, kept)
    else:
        frozen = v1.graph_util.extract_sub_graph(source.graph_def, kept)
    return PostProcessingGraph(frozen, nms, top_k, *names)


def _heads(graph_def, nms: List[str], where: str) -> List[str]:
    """The box encodings (N, anchors, 4) and class logits (N, anchors, classes + 1) that the NMS
    ops' boxes and scores come from: of the tensors computed from the input with those shapes
    that only the boxes' side (or only the scores' side) of the graph reaches, the one all others
    are computed from (the heads' concatenation, before any copy or decoding)."""
    graph = import_graph(graph_def)
    ops = [graph.get_operation_by_name(name) for name in nms]
    boxes, scores = ops[0].inputs[0], ops[0].inputs[1]
    combined = ops[0].type == "CombinedNonMaxSuppression"
    anchors = boxes.shape[1] if combined else boxes.shape[0]
    classes = scores.shape[-1] if combined else len(ops)

    def ancestors(tensor) -> set:
        found, stack = {tensor}, [tensor]
        while stack:
            for parent in stack.pop().op.inputs:
                if parent not in found:
                    found.add(parent)
                    stack.append(parent)
        return found

    box_side, score_side = ancestors(boxes), set().union(*(ancestors(op.inputs[1]) for op in ops))
    heads = []
    for side, other, depth, what in ((box_side, score_side, 4, "box encodings"),
                                     (score_side, box_side, classes + 1, "class logits")):
        shaped = [t for t in side - other if t.dtype.is_floating and t.shape.rank == 3
                  and t.shape[1] == anchors and t.shape[2] == depth]
        lineage = {t: ancestors(t) for t in shaped}
        computed = [t for t in shaped if any(a.op.type in PLACEHOLDERS for a in lineage[t])]
        first = [t for t in computed if all(t in lineage[other_t] for other_t in computed)]
        if len(first) != 1:
            raise ConversionError("%s: cannot tell the %s (N, %s, %s) that feed '%s' (found: %s): pass --outputs "
                                  "BOX_ENCODINGS,CLASS_LOGITS" % (where, what, anchors, depth, nms[0], ", ".join(
                                      sorted(t.name for t in computed)) or "none"))
        heads.append(first[0].name)
    return heads


class _Probe:
    """The post-processing graph in a session: what the NMS ops receive for given head outputs
    (boxes (N, anchors, 4), scores (N, anchors, classes)), their settings and their detections.
    CombinedNonMaxSuppression takes the batch; NMS ops per class take one image, fed one by one."""

    def __init__(self, post: PostProcessingGraph, model: intermediate.Model, where: str):
        self.graph = import_graph(post.graph_def)
        self.session = v1.Session(graph=self.graph, config=SESSION_CONFIG)
        self.ops = [self.graph.get_operation_by_name(name) for name in post.nms]
        self.combined = self.ops[0].type == "CombinedNonMaxSuppression"
        self.top_k = self.graph.get_operation_by_name(post.top_k) if post.top_k else None
        self.where = "%s: '%s' (%s)" % (where, post.nms[0], self.ops[0].type) if self.combined else \
            "%s: the NMS ops %s" % (where, ", ".join("'%s'" % name for name in post.nms))
        self.heads = [self.graph.get_tensor_by_name(name if ":" in name else name + ":0")
                      for name in (post.box_encodings, post.class_logits)]
        # the model's inputs, for any op after the heads that reads the image (its shape)
        self.inputs = {CALL_PREFIX.sub("", name): model.reference_input(name) for name in model.inputs}
        self.placeholders = [op.outputs[0] for op in self.graph.get_operations()
                             if op.type == "Placeholder" and CALL_PREFIX.sub("", op.name) in self.inputs]

    def run(self, fetches, codes: np.ndarray, logits: np.ndarray, images=slice(None)):
        feeds = {tensor: self.inputs[CALL_PREFIX.sub("", tensor.op.name)][images] for tensor in self.placeholders}
        feeds.update({self.heads[0]: codes, self.heads[1]: logits})
        try:
            return self.session.run(fetches, feeds)
        except tf.errors.OpError as error:
            raise ConversionError("%s: probing the post-processing failed: %s" % (
                self.where, error.message.split("\n")[0]))

    def per_image(self, fetches, codes, logits) -> list:
        """`fetches` for each image alone (NMS ops per class see one image)."""
        return [self.run(fetches, codes[n:n + 1], logits[n:n + 1], slice(n, n + 1)) for n in range(len(codes))]

    def boxes(self, codes, logits) -> np.ndarray:
        if self.combined:
            boxes = self.run(self.ops[0].inputs[0], codes, logits)
            if boxes.ndim != 4 or boxes.shape[2] != 1:
                raise ConversionError("%s: boxes %s: per-class boxes (q > 1); DetectionOutput shares one box per "
                                      "anchor over the classes" % (self.where, list(boxes.shape)))
            return boxes[:, :, 0, :]
        per_op = np.array(self.per_image([op.inputs[0] for op in self.ops], codes, logits))  # (N, ops, anchors, 4)
        if np.any(per_op != per_op[:, :1]):
            raise ConversionError("%s: the NMS ops take different boxes; DetectionOutput shares one box per "
                                  "anchor over the classes" % self.where)
        return per_op[:, 0]

    def scores(self, codes, logits) -> np.ndarray:
        """(N, anchors, classes): per-class NMS ops in the order of `classes` (set by `order`)."""
        if self.combined:
            return self.run(self.ops[0].inputs[1], codes, logits)
        return np.stack([np.stack(found, -1) for found in self.per_image([op.inputs[1] for op in self.ops],
                                                                           codes, logits)])

    def order(self, logits: np.ndarray, scores: np.ndarray) -> None:
        """Per-class NMS ops: which class (logit column 1, 2, ...) each one's scores follow, by
        correlation over the anchors; the ops are put in class order."""
        if self.combined:
            return
        columns = logits.reshape(-1, logits.shape[-1])[:, 1:]
        found = scores.reshape(-1, scores.shape[-1])
        classes = [int(np.argmax([np.corrcoef(found[:, k], columns[:, j])[0, 1] for j in range(columns.shape[1])]))
                   for k in range(found.shape[1])]
        if sorted(classes) != list(range(columns.shape[1])):
            raise ConversionError("%s: %d NMS ops for %d classes, or ops whose scores follow no single class" % (
                self.where, len(self.ops), columns.shape[1]))
        self.ops = [op for _, op in sorted(zip(classes, self.ops), key=lambda pair: pair[0])]

    def limits(self, codes, logits):
        """(max per class, max total, IoU threshold, score threshold) the NMS ops are given."""
        if self.combined:
            if self.ops[0].get_attr("clip_boxes"):
                raise ConversionError("%s: clip_boxes: the NMS clips the boxes to the image first, "
                                      "DetectionOutput does not" % self.where)
            per_class, total, iou, threshold = self.run(list(self.ops[0].inputs[2:6]), codes, logits)
            return int(per_class), int(total), float(iou), float(threshold)
        given = self.run([[op.inputs[i] for i in range(2, 5)] for op in self.ops], codes[:1], logits[:1], slice(0, 1))
        if any(list(values) != list(given[0]) for values in given):
            raise ConversionError("%s: the NMS ops of the classes have different limits or thresholds %s" % (
                self.where, given))
        if self.ops[0].type == "NonMaxSuppressionV5" and any(
                self.run([op.inputs[5] for op in self.ops], codes[:1], logits[:1], slice(0, 1))):
            raise ConversionError("%s: soft_nms_sigma: DetectionOutput does hard NMS only" % self.where)
        per_class, iou, threshold = given[0]
        # the best `k` over all classes, else all the classes keep
        total = self.run(self.top_k.inputs[1], codes[:1], logits[:1], slice(0, 1)) if self.top_k else \
            per_class * len(self.ops)
        return int(per_class), int(total), float(iou), float(threshold)

    def detections(self, codes, logits, total: int) -> np.ndarray:
        """The NMS ops' own detections: (rows, 7) (image, label, score, xmin, ymin, xmax, ymax)."""
        if self.combined:
            boxes, scores, classes, counts = self.run(self.ops[0].outputs, codes, logits)
            found = [[image, classes[image, k] + 1, scores[image, k]] + list(boxes[image, k, [1, 0, 3, 2]])
                     for image in range(len(codes)) for k in range(counts[image])]
            return np.array(found, np.float32).reshape(-1, 7)
        rows = []
        fetches = [self.ops[0].inputs[0]] + [[op.inputs[1], op.outputs[0], op.outputs[-1]] for op in self.ops]
        for image, (boxes, *per_class) in enumerate(self.per_image(fetches, codes, logits)):
            found = []
            for label, (scores, kept, valid) in enumerate(per_class, 1):
                count = len(kept) if np.ndim(valid) else int(valid)  # V3: no count, V4/V5 may pad
                found.extend([image, label, scores[i]] + list(boxes[i, [1, 0, 3, 2]]) for i in kept[:count])
            found.sort(key=lambda row: -row[2])
            rows.extend(found[:total])
        return np.array(rows, np.float32).reshape(-1, 7)


def _centre_size(boxes: np.ndarray):
    boxes = boxes.astype(np.float64)
    sizes = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + sizes / 2, sizes


def _rounded(value: float) -> float:
    """A probed setting to the 6 significant digits a config would give it."""
    return float("%.6g" % value)


def probe_settings(probe: _Probe, codes: np.ndarray, logits: np.ndarray) -> SSDSettings:
    """The settings (the anchors as an array) from the graph's response to chosen head outputs."""
    where = probe.where
    boxes = probe.boxes(np.zeros_like(codes), logits)
    anchors = boxes[0].astype(np.float32)
    if np.any(boxes != anchors):
        raise ConversionError("%s: the anchors differ from image to image" % where)
    centres, sizes = _centre_size(anchors)
    scales = []
    for coordinate in range(4):  # ty, tx, th, tw
        unit = np.zeros_like(codes)
        unit[..., coordinate] = 1.0
        moved_centres, moved_sizes = _centre_size(probe.boxes(unit, logits)[0])
        axis = coordinate % 2
        with np.errstate(all="ignore"):
            if coordinate < 2:
                ratio = sizes[:, axis] / (moved_centres[:, axis] - centres[:, axis])
            else:
                ratio = 1.0 / np.log(moved_sizes[:, axis] / sizes[:, axis])
        scales.append(_rounded(float(np.median(ratio))))
    random = np.random.default_rng(0)
    trial = random.normal(0.0, 0.5, codes.shape).astype(np.float32)
    decoded = probe.boxes(trial, logits).astype(np.float64)
    t = trial.astype(np.float64) / np.array(scales)
    centre = t[..., :2] * sizes + centres
    size = np.exp(t[..., 2:]) * sizes
    expected = np.concatenate([centre - size / 2, centre + size / 2], -1)
    if not np.all(np.isfinite(scales)) or np.max(np.abs(decoded - expected)) > PROBE_TOLERANCE:
        raise ConversionError("%s: the graph's box decoding is not the centre-size coder (probed scales "
                              "%s)" % (where, ", ".join("%.6g" % s for s in scales)))

    trial_logits = random.normal(0.0, 2.0, logits.shape).astype(np.float32)
    scores = probe.scores(codes, trial_logits).astype(np.float64)
    if scores.shape[-1] != logits.shape[-1] - 1:
        raise ConversionError("%s: %d score columns for %d logit columns: expected the background column "
                              "(0) dropped" % (where, scores.shape[-1], logits.shape[-1]))
    probe.order(trial_logits, scores)
    converter, logit_scale = _score_converter(trial_logits.astype(np.float64), probe.scores(codes, trial_logits),
                                              where)

    per_class, total, iou, threshold = probe.limits(codes, logits)
    if per_class < total:
        raise ConversionError(
            "%s: at most %d boxes per class < %d in all: DetectionOutput caps each class before NMS (top_k) or "
            "all classes after it (keep_top_k), never each class after it" % (where, per_class, total))
    return SSDSettings(int(logits.shape[-1] - 1), anchors, tuple(scales), converter, logit_scale, threshold, iou,
                       per_class, total)


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
                              "here %d outputs" % (where, post.nms[0], len(model.outputs)))
    codes, logits = (model.activation(name) for name in model.outputs)
    probe = _Probe(post, model, where)
    try:
        settings = probe_settings(probe, codes, logits)
        rows = probe.detections(codes, logits, settings.max_total_detections)
    finally:
        probe.session.close()
    found = tf_detections(codes, logits, settings.anchors, settings)
    error = detection_error(found, rows)
    if error > PROBE_TOLERANCE:
        raise ConversionError("%s: the graph's detections differ from those of the probed post-processing "
                              "(%s, coder scales %s, IoU %.6g, score threshold %.6g): error %.3g" % (
                                  probe.where, settings.score_converter, settings.coder_scales,
                                  settings.iou_threshold, settings.score_threshold, error))
    add_detection_output(model, settings, where, reference_rows=rows,
                         anchors_source="'%s': its boxes at zero box encodings" % post.nms[0])
