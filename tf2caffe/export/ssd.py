"""A TF Object Detection API SSD's post-processing, from the `ssd { ... }` block of its pipeline
config (`--ssd-config`), as one `ssd_detection_output` layer of the intermediate.

The model is the API's detector up to its box predictor: two outputs, the box encodings
(N, anchors, 4) in the centre-size coder's (ty, tx, th, tw) order, and the class predictions
with background (N, anchors, classes + 1), logits; each the concatenation, feature map by
feature map, of a head's (N, H, W, A·4 or A·(classes + 1)) reshaped, as the API's
ConvolutionalBoxPredictor builds them. What follows them in the API (SSDMetaArch.postprocess)
is rebuilt here from the config:

- anchors: the MultipleGridAnchorGenerator of `ssd_anchor_generator`, reimplemented in numpy
  float32 op by op after tensorflow/models research/object_detection/anchor_generators/
  multiple_grid_anchor_generator.py (create_ssd_anchors: box specs per layer; strides and
  offsets in pixels divided by the image's height and width, else 1 / grid and half a stride;
  the base anchor times min(H, W) / H and / W) and grid_anchor_generator.py (tile_anchors:
  centres (y, x) · stride + offset, sizes scale / sqrt(ratio) and scale · sqrt(ratio) times the
  base anchor, corners centre ∓ size / 2, in (y, x, anchor) order); each feature map's anchors
  are then fitted to PriorBox's grid (`prior_layout`), whatever made them;
- decoding: `faster_rcnn_box_coder`'s scales (FasterRcnnBoxCoder._decode);
- scores: `score_converter` (SIGMOID, SOFTMAX or IDENTITY, after `logit_scale`), the background
  column dropped;
- per-class NMS: `batch_non_max_suppression` (post_processing.multiclass_non_max_suppression:
  per class tf.image.non_max_suppression with the score and IoU thresholds and at most
  max_detections_per_class boxes, then the max_total_detections best over all classes).

The layer's reference output is TensorFlow's detections for the reference batch, computed with
those TensorFlow ops (or, for a graph holding its post-processing, the graph's own: settings and
anchors probed from it by graph/post_processing.py), in DetectionOutput's row format (image, label, score, xmin, ymin, xmax,
ymax); the import stage compares DetectionOutput's rows with them. The API finally clips the
kept boxes to the image window (and drops boxes left with no area): DetectionOutput does not,
so a deployment clips its rows to [0, 1] as the README's snippet does.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from .. import intermediate
from ..errors import ConversionError

LAYER_TYPE = "ssd_detection_output"
SCORE_CONVERTERS = ("SIGMOID", "SOFTMAX", "IDENTITY")

# --------------------------------------------------------------- the pipeline config (text proto)

_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?|([A-Za-z_][\w.]*|[-+]?[\d.]+(?:[eE][-+]?\d+)?|"[^"]*"|\'[^\']*\'|[{}:,;]))')


def _tokens(text: str, where: str) -> List[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ConversionError("%s: cannot parse the pipeline config near %r" % (where, text[position:position + 30]))
        if match.group(1):
            tokens.append(match.group(1))
        position = match.end()
    return tokens


def parse_text_proto(text: str, where: str) -> Dict[str, list]:
    """Protocol buffer text format -> {field: [value or nested dict, ...]} (values as strings)."""
    tokens = _tokens(text, where)

    def message(index: int, closing: bool) -> Tuple[Dict[str, list], int]:
        fields: Dict[str, list] = {}
        while index < len(tokens):
            token = tokens[index]
            if token == "}":
                if not closing:
                    break
                return fields, index + 1
            if token in (",", ";"):
                index += 1
                continue
            name = token
            index += 1
            if index < len(tokens) and tokens[index] == ":":
                index += 1
            if index >= len(tokens):
                break
            if tokens[index] == "{":
                value, index = message(index + 1, True)
            else:
                value, index = tokens[index].strip("\"'"), index + 1
            fields.setdefault(name, []).append(value)
        if closing:
            raise ConversionError("%s: the pipeline config ends inside a message" % where)
        if index < len(tokens):
            raise ConversionError("%s: unbalanced '}' in the pipeline config" % where)
        return fields, index

    return message(0, False)[0]


class AnchorSettings(NamedTuple):
    num_layers: int
    scales: List[float]          # one per layer, then 1.0 (create_ssd_anchors' scale_next)
    aspect_ratios: List[float]
    interpolated_scale_aspect_ratio: float
    reduce_boxes_in_lowest_layer: bool
    base_anchor_size: Tuple[float, float]            # height, width (fractions of min(H, W))
    strides: Optional[List[Tuple[int, int]]]          # per layer (y, x) in pixels; None: 1 / grid
    offsets: Optional[List[Tuple[int, int]]]          # per layer (y, x) in pixels; None: stride / 2


class SSDSettings(NamedTuple):
    num_classes: int
    anchors: Union[AnchorSettings, np.ndarray]  # a generator's settings, or (anchors, 4) read from a graph
    coder_scales: Tuple[float, float, float, float]  # y, x, height, width
    score_converter: str
    logit_scale: float
    score_threshold: float
    iou_threshold: float
    max_detections_per_class: int
    max_total_detections: int


def _one(fields: Dict[str, list], name: str, where: str, default=None):
    values = fields.get(name)
    if not values:
        if default is None:
            raise ConversionError("%s: the ssd block has no '%s'" % (where, name))
        return default
    return values[-1]


def _bool(value: str) -> bool:
    return str(value).lower() in ("true", "1", "t")


def _per_layer_pairs(anchor: Dict[str, list], y_field: str, x_field: str, num_layers: int,
                     where: str) -> Optional[List[Tuple[int, int]]]:
    """The (y, x) pixel pairs of `y_field` and `x_field`, one per layer, or None when `y_field` is
    empty: the API's anchor_generator_builder uses them only then, zipped."""
    ys, xs = ([int(v) for v in anchor.get(field, [])] for field in (y_field, x_field))
    if not ys:
        return None
    if not len(ys) == len(xs) == num_layers:
        raise ConversionError("%s: ssd_anchor_generator has %d %s and %d %s values; both need one per "
                              "layer (num_layers %d)" % (where, len(ys), y_field, len(xs), x_field, num_layers))
    return list(zip(ys, xs))


def read_ssd_settings(path) -> SSDSettings:
    """The settings of a pipeline config's `model { ssd { ... } }` block (or of a file holding
    just `ssd { ... }`) that decide the detections, with the API's defaults (its .proto files)."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConversionError("%s: cannot read the pipeline config: %s" % (where, error.strerror))
    top = parse_text_proto(text, where)
    ssd = top["model"][-1].get("ssd") if "model" in top else top.get("ssd")
    if not ssd or not isinstance(ssd[-1], dict):
        raise ConversionError("%s: no `ssd { ... }` block (expected model { ssd { ... } })" % where)
    ssd = ssd[-1]
    generators = _one(ssd, "anchor_generator", where)
    if "ssd_anchor_generator" not in generators:
        raise ConversionError("%s: anchor_generator %s: only ssd_anchor_generator converts to PriorBox "
                              "layers here" % (where, ", ".join(sorted(generators))))
    anchor = generators["ssd_anchor_generator"][-1]
    num_layers = int(_one(anchor, "num_layers", where, "6"))
    scales = [float(s) for s in anchor.get("scales", [])]
    if not scales:
        low, high = float(_one(anchor, "min_scale", where, "0.2")), float(_one(anchor, "max_scale", where, "0.95"))
        scales = [low + (high - low) * i / (num_layers - 1) for i in range(num_layers)]
    if len(scales) != num_layers:
        raise ConversionError("%s: ssd_anchor_generator has %d scales for %d layers" % (where, len(scales), num_layers))
    anchors = AnchorSettings(
        num_layers, scales + [1.0],
        [float(r) for r in anchor.get("aspect_ratios", [])] or [1.0, 2.0, 0.5, 3.0, 1.0 / 3],
        float(_one(anchor, "interpolated_scale_aspect_ratio", where, "1.0")),
        _bool(_one(anchor, "reduce_boxes_in_lowest_layer", where, "true")),
        (float(_one(anchor, "base_anchor_height", where, "1.0")), float(_one(anchor, "base_anchor_width", where, "1.0"))),
        _per_layer_pairs(anchor, "height_stride", "width_stride", num_layers, where),
        _per_layer_pairs(anchor, "height_offset", "width_offset", num_layers, where))

    coders = _one(ssd, "box_coder", where)
    if "faster_rcnn_box_coder" not in coders:
        raise ConversionError("%s: box_coder %s: only faster_rcnn_box_coder (centre-size) is what "
                              "DetectionOutput's CENTER_SIZE decodes" % (where, ", ".join(sorted(coders))))
    coder = coders["faster_rcnn_box_coder"][-1]
    coder_scales = tuple(float(_one(coder, name, where, default)) for name, default in (
        ("y_scale", "10.0"), ("x_scale", "10.0"), ("height_scale", "5.0"), ("width_scale", "5.0")))

    post = _one(ssd, "post_processing", where)
    nms = _one(post, "batch_non_max_suppression", where)
    for field, default in (("use_class_agnostic_nms", "false"), ("soft_nms_sigma", "0")):
        if str(_one(nms, field, where, default)).lower() not in ("false", "0", "0.0"):
            raise ConversionError("%s: batch_non_max_suppression.%s: DetectionOutput does per-class hard "
                                  "NMS only" % (where, field))
    converter = str(_one(post, "score_converter", where, "IDENTITY"))
    if converter not in SCORE_CONVERTERS:
        raise ConversionError("%s: score_converter %s (known: %s)" % (where, converter, ", ".join(SCORE_CONVERTERS)))
    settings = SSDSettings(
        int(_one(ssd, "num_classes", where)), anchors, coder_scales, converter,
        float(_one(post, "logit_scale", where, "1.0")),
        float(_one(nms, "score_threshold", where, "0.0")), float(_one(nms, "iou_threshold", where, "0.6")),
        int(_one(nms, "max_detections_per_class", where, "100")),
        int(_one(nms, "max_total_detections", where, "100")))
    if settings.max_detections_per_class < settings.max_total_detections:
        raise ConversionError(
            "%s: max_detections_per_class %d < max_total_detections %d: DetectionOutput caps each class "
            "before NMS (top_k) or all classes after it (keep_top_k), never each class after it" % (
                where, settings.max_detections_per_class, settings.max_total_detections))
    return settings


# --------------------------------------------------------------- anchors

def box_specs(anchors: AnchorSettings) -> List[List[Tuple[float, float]]]:
    """(scale, aspect ratio) of each anchor of a cell, per layer: create_ssd_anchors."""
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(anchors.scales[:-1], anchors.scales[1:])):
        if layer == 0 and anchors.reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, ratio) for ratio in anchors.aspect_ratios]
        if anchors.interpolated_scale_aspect_ratio > 0.0:
            layer_specs.append((float(np.sqrt(scale * scale_next)), anchors.interpolated_scale_aspect_ratio))
        specs.append(layer_specs)
    return specs


def grid_anchors(anchors: AnchorSettings, grids: List[Tuple[int, int]], image_hw: Tuple[int, int]) -> np.ndarray:
    """MultipleGridAnchorGenerator._generate: every layer's tile_anchors, concatenated: (anchors,
    4) float32 [ymin, xmin, ymax, xmax], normalised. Strides and offsets in pixels are divided by
    the image's height and width; the base anchor is normalised to min(H, W)."""
    f32 = np.float32
    height, width = (f32(d) for d in image_hw)
    smaller = min(height, width)
    base = (f32(smaller / height) * f32(anchors.base_anchor_size[0]),
            f32(smaller / width) * f32(anchors.base_anchor_size[1]))
    layers = []
    for layer, (layer_specs, (grid_h, grid_w)) in enumerate(zip(box_specs(anchors), grids)):
        if anchors.strides:
            stride = (f32(anchors.strides[layer][0]) / height, f32(anchors.strides[layer][1]) / width)
        else:
            stride = (f32(1.0) / f32(grid_h), f32(1.0) / f32(grid_w))
        if anchors.offsets:
            offset = (f32(anchors.offsets[layer][0]) / height, f32(anchors.offsets[layer][1]) / width)
        else:
            offset = (f32(0.5) * stride[0], f32(0.5) * stride[1])
        scales = np.array([s for s, _ in layer_specs], f32)
        ratio_sqrts = np.sqrt(np.array([r for _, r in layer_specs], f32))
        heights, widths = scales / ratio_sqrts * base[0], scales * ratio_sqrts * base[1]
        y = np.arange(grid_h, dtype=f32) * stride[0] + offset[0]
        x = np.arange(grid_w, dtype=f32) * stride[1] + offset[1]
        y_grid, x_grid, h_grid = np.meshgrid(y, x, heights, indexing="ij")  # (H, W, anchors)
        w_grid = np.meshgrid(y, x, widths, indexing="ij")[2]
        centres = np.stack([y_grid, x_grid], -1).reshape(-1, 2)
        sizes = np.stack([h_grid, w_grid], -1).reshape(-1, 2)
        layers.append(np.concatenate([centres - f32(0.5) * sizes, centres + f32(0.5) * sizes], 1))
    return np.concatenate(layers).astype(f32)


# How far (a fraction of the image size) an anchor may lie from the regular grid fitted to its
# feature map's anchors: well above the float32 rounding of TF's anchors (~1e-7), far below any
# real irregularity.
REGULAR_GRID = 1e-6


def prior_layout(anchors: np.ndarray, grid: Tuple[int, int], where: str) -> Dict[str, object]:
    """What PriorBox needs to place one feature map's anchors ((H·W·A, 4) [ymin, xmin, ymax,
    xmax], normalised, cell by cell as tile_anchors orders them), fitted from the anchors
    themselves: the grid `step` [y, x], the single `offset` (PriorBox centres a cell at (i +
    offset)·step on both axes) and each anchor of a cell as [height, width], all fractions of the
    image. Refused, naming `where`: anchors that are not the same boxes on such a grid."""
    grid_h, grid_w = grid
    count = len(anchors) // (grid_h * grid_w)
    if count * grid_h * grid_w != len(anchors) or count == 0:
        raise ConversionError("%s: %d anchors are not %dx%d cells of the same number of boxes" % (
            where, len(anchors), grid_h, grid_w))
    boxes = anchors.astype(np.float64).reshape(grid_h, grid_w, count, 4)
    centres, sizes = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
    cell_boxes = sizes.mean(axis=(0, 1))  # (A, 2): height, width
    if np.any(cell_boxes <= 0):
        raise ConversionError("%s: an anchor with no area cannot be a PriorBox" % where)
    lines = (centres[..., 0].mean(axis=(1, 2)), centres[..., 1].mean(axis=(0, 2)))  # row, column centres
    steps = [(line[-1] - line[0]) / (len(line) - 1) if len(line) > 1 else None for line in lines]
    if any(step is not None and step <= 0 for step in steps):
        raise ConversionError("%s: the anchors' centres do not advance cell by cell: not a grid" % where)
    ratios = [line[0] / step if step is not None else None for line, step in zip(lines, steps)]
    if None not in ratios and abs(ratios[0] - ratios[1]) * max(steps) > REGULAR_GRID:
        raise ConversionError(
            "%s: anchor offsets (y %.6g, x %.6g of the image) are %.6g and %.6g strides: PriorBox has one "
            "offset for both axes (centre = (i + offset)·step), so offset_y/stride_y must equal "
            "offset_x/stride_x" % (where, lines[0][0], lines[1][0], ratios[0], ratios[1]))
    known = [ratio for ratio in ratios if ratio is not None]
    offset = float(known[-1]) if known else 0.5
    for axis, step in enumerate(steps):
        if step is None:  # one row or column: any step puts it where the offset says
            if abs(offset) < REGULAR_GRID:
                raise ConversionError("%s: a single line of cells centred at %.6g cannot have the other "
                                      "axis' offset 0" % (where, lines[axis][0]))
            steps[axis] = lines[axis][0] / offset
    cells = np.stack(np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij"), -1)  # (H, W, 2)
    fitted_centres = ((cells + offset) * np.array(steps))[:, :, None, :]
    fitted = np.concatenate([fitted_centres - cell_boxes / 2, fitted_centres + cell_boxes / 2], -1)
    off = float(np.max(np.abs(fitted - boxes)))
    if off > REGULAR_GRID:
        raise ConversionError("%s: the anchors are not the same boxes on a regular grid (off by %.2g of the "
                              "image size): PriorBox cannot place them" % (where, off))
    return {"step": [float(step) for step in steps], "offset": offset,
            "boxes": [[float(h), float(w)] for h, w in cell_boxes]}


# --------------------------------------------------------------- the model's heads

def _producer_4d(model: intermediate.Model, name: str) -> intermediate.Layer:
    """The nearest layer at or before `name`, through single-input layers, with a 4-D output."""
    layer = model.layer(name)
    while len(layer.output_shape) != 4:
        if len(layer.inputs) != 1:
            raise ConversionError("layer '%s' (%s): cannot trace a box predictor head back to its "
                                  "feature map" % (layer.name, layer.type))
        layer = model.layer(layer.inputs[0])
    return layer


def heads(model: intermediate.Model, output: str) -> List[intermediate.Layer]:
    """The head convolutions (N, H, W, A·k) whose reshapes the output concatenates, in order."""
    layer = model.layer(output)
    parts = layer.inputs if layer.type == "concat" else [output]
    return [_producer_4d(model, part) for part in parts]


def add_detection_output(model: intermediate.Model, settings: SSDSettings, where: str, reference_rows=None,
                         anchors_source: str = "MultipleGridAnchorGenerator (numpy)") -> None:
    """Append the `ssd_detection_output` layer (after the two outputs) with its config, TF's
    anchors as its array, and TensorFlow's detections for the reference batch: `reference_rows`
    (a graph's own), else tf_detections' (`where` names the model and config in errors)."""
    if len(model.outputs) != 2:
        raise ConversionError("%s: an SSD model has two outputs (box encodings, class predictions with "
                              "background); this one has %d" % (where, len(model.outputs)))
    box_name, class_name = model.outputs
    box_shape, class_shape = model.layer(box_name).output_shape, model.layer(class_name).output_shape
    classes = settings.num_classes + 1
    if len(box_shape) != 3 or box_shape[2] != 4 or list(class_shape) != [box_shape[0], box_shape[1], classes]:
        raise ConversionError("%s: outputs %s %s and %s %s: expected (N, anchors, 4) box encodings, then "
                              "(N, anchors, num_classes + 1 = %d) class predictions" % (
                                  where, box_name, box_shape, class_name, class_shape, classes))
    box_heads = heads(model, box_name)
    per_cell = [int(head.output_shape[3]) // 4 for head in box_heads]
    if isinstance(settings.anchors, AnchorSettings):
        specs = box_specs(settings.anchors)
        if len(box_heads) != len(specs):
            raise ConversionError("%s: %d feature maps, but the anchor generator has %d layers" % (
                where, len(box_heads), len(specs)))
        for head, layer_specs in zip(box_heads, specs):
            if head.output_shape[3] != 4 * len(layer_specs):
                raise ConversionError("%s: head '%s' has %d channels; %d anchors per cell need %d" % (
                    where, head.name, head.output_shape[3], len(layer_specs), 4 * len(layer_specs)))
    image = model.layer(model.inputs[0])
    image_hw = tuple(int(d) for d in image.output_shape[1:3])
    grids = [tuple(int(d) for d in head.output_shape[1:3]) for head in box_heads]
    anchors = (grid_anchors(settings.anchors, grids, image_hw) if isinstance(settings.anchors, AnchorSettings)
               else settings.anchors)
    counts = [grid_h * grid_w * cell for (grid_h, grid_w), cell in zip(grids, per_cell)]
    if len(anchors) != box_shape[1] or sum(counts) != box_shape[1]:
        raise ConversionError("%s: %d anchors and %d from the heads' cells, but the box encodings have %d" % (
            where, len(anchors), sum(counts), box_shape[1]))
    starts = np.cumsum([0] + counts)
    feature_maps = [dict(layer=head.name, grid=list(grid),
                         **prior_layout(anchors[start:end], grid, "%s: feature map '%s'" % (where, head.name)))
                    for head, grid, start, end in zip(box_heads, grids, starts[:-1], starts[1:])]
    config = {
        "image_size": list(image_hw), "feature_maps": feature_maps,
        "coder_scales": list(settings.coder_scales), "score_converter": settings.score_converter,
        "logit_scale": settings.logit_scale, "score_threshold": settings.score_threshold,
        "iou_threshold": settings.iou_threshold, "max_total_detections": settings.max_total_detections}
    name = "detection_output"
    rows = (reference_rows if reference_rows is not None else
            tf_detections(model.activation(box_name), model.activation(class_name), anchors, settings))
    layer = intermediate.Layer(name, LAYER_TYPE, [box_name, class_name, image.name] + [h.name for h in box_heads],
                               config, [1, 1, len(rows), 7], arrays={"anchors": anchors},
                               tf_names={"anchors": anchors_source})
    model.layers.append(layer)
    model._by_name[name] = layer
    model.outputs.append(name)
    model.reference_activations[name] = rows.reshape(1, 1, -1, 7)


def tf_detections(box_encodings: np.ndarray, class_predictions: np.ndarray, anchors: np.ndarray,
                  settings: SSDSettings) -> np.ndarray:
    """TensorFlow's detections, as the API computes them before clipping: (rows, 7) float32
    (image, label = class + 1, score, xmin, ymin, xmax, ymax), per image best first."""
    import tensorflow as tf

    anchors = tf.constant(anchors)
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    yca, xca = anchors[:, 0] + ha / 2.0, anchors[:, 1] + wa / 2.0
    rows = []
    for image, (codes, logits) in enumerate(zip(box_encodings, class_predictions)):
        ty, tx, th, tw = tf.unstack(tf.constant(codes), axis=1)
        ty, tx, th, tw = (t / s for t, s in zip((ty, tx, th, tw), settings.coder_scales))
        w, h = tf.exp(tw) * wa, tf.exp(th) * ha
        ycenter, xcenter = ty * ha + yca, tx * wa + xca
        boxes = tf.stack([ycenter - h / 2.0, xcenter - w / 2.0, ycenter + h / 2.0, xcenter + w / 2.0], axis=1)
        logits = tf.constant(logits) / settings.logit_scale
        scores = {"SIGMOID": tf.sigmoid, "SOFTMAX": tf.nn.softmax, "IDENTITY": tf.identity}[settings.score_converter](logits)
        found = []
        for label in range(1, scores.shape[1]):
            kept = tf.image.non_max_suppression(boxes, scores[:, label], settings.max_detections_per_class,
                                                settings.iou_threshold, settings.score_threshold).numpy()
            found.extend((float(scores[i, label]), label, boxes[i].numpy()) for i in kept)
        found.sort(key=lambda item: -item[0])
        for score, label, (ymin, xmin, ymax, xmax) in found[:settings.max_total_detections]:
            rows.append([image, label, score, xmin, ymin, xmax, ymax])
    return np.array(rows, np.float32).reshape(-1, 7)

