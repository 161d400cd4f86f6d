"""SSD post-processing (tf2caffe/export/ssd.py writes the layer): anchors -> PriorBox layers,
decoding + per-class NMS -> DetectionOutput.

Anchors. The exporter fits each feature map's anchors to PriorBox's grid: centres (i + offset)·step
(one offset for both axes) and, per cell, the same boxes [height, width]. SSD-Caffe's PriorBox
emits, per cell, a min_size square (in pixels), then one box per aspect ratio r (flip off):
m·sqrt(r) wide, m/sqrt(r) high. An anchor h x w (fractions of the H x W image) is the box m =
sqrt(h·H · w·W), r = w·W / (h·H); each distinct m of a feature map becomes one PriorBox; where the
cell's anchors are not exactly one PriorBox's boxes in order, each PriorBox output is viewed as
(1, 2, cells, boxes · 4), Sliced into the runs TF's order takes (the unused boxes, such as the
square of the lowest layer's (0.2, 2) and (0.2, 0.5) anchors, go to a Silence layer),
Concatenated in TF's order and viewed back: the priors are TF's anchors in TF's order, so the
heads need no reordering. SSD-Caffe truncates min_size to an integer number of pixels
(prior_box_layer.cpp: `int min_size_`; TF's scales are fractions, some irrational), and OpenCV
divides by the image blob's own size whatever img_h/img_w say: so every PriorBox works K = 2^k
times too large (min_size = round(K · m), step = K · step · H or W), on the real image, and the
corners of all priors are then multiplied by 1/K (a Power on their half of the blob, Sliced off
the variances): the rounding is below 1 / (K · min(H, W)) <= 2^-23.

Decoding. TF's box encodings are (ty, tx, th, tw) divided by the coder's scales; DetectionOutput's
CENTER_SIZE reads (x, y, w, h) multiplied by the prior's variances: a Slice + Concat swaps the
pairs, and the variances are the scales' inverses. Scores: Sigmoid (or Softmax over the classes)
after an optional Power for logit_scale; the background column is label 0, which DetectionOutput
skips (background_label_id: 0), as TF drops it. NMS: nms_threshold = TF's IoU threshold,
confidence_threshold = its score threshold, keep_top_k = max_total_detections, no top_k: with
max_detections_per_class >= max_total_detections (the exporter refuses less), capping each class
after NMS cannot change the best max_total_detections overall.
"""
from __future__ import annotations

import math
import struct
from typing import Dict, List, Tuple

from ..netspec import CaffeLayer, shape_param
from . import Handler, register

LARGEST_EXACT = 2 ** 24  # float32 holds every integer up to this: a min_size is one of them
SAME_RATIO = 1e-6  # PriorBox's own test for a ratio of 1 and for repeated ratios
# Anchors whose magnified min sizes differ by at most this share a PriorBox: the float32 rounding
# of TF's anchor corners (up to 2^-23 of the image for corners beyond 1: about two pixels of the
# image magnified K times) makes equal sizes differ that much once fitted from them.
SAME_SIZE = 4.0


def variances(coder_scales) -> List[float]:
    """PriorBox's variances in DetectionOutput's (x, y, w, h) order, from the coder's (y, x,
    height, width) scales: TF divides an encoding by its scale, Caffe multiplies by the variance."""
    y, x, height, width = (float(s) for s in coder_scales)
    return [1.0 / x, 1.0 / y, 1.0 / width, 1.0 / height]


def magnification(image_size) -> int:
    """K: the largest power of two with K · max(H, W) <= 2^24."""
    return 2 ** int(math.floor(math.log2(LARGEST_EXACT / max(int(d) for d in image_size))))


def as_float32(value: float) -> float:
    """`value` rounded to float32, as Caffe reads a float parameter (printed exactly by repr)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def prior_boxes(boxes: List[List[float]], image_size, factor: int
                ) -> Tuple[List[Tuple[float, List[float]]], List[Tuple[int, int]]]:
    """The PriorBoxes of one feature map, as (min_size, aspect ratios other than 1) in pixels of
    the image magnified `factor` times, and where each anchor [height, width] (fractions of the
    image) is among their boxes: (PriorBox index, box index). PriorBox's box of size m and ratio
    r is m·sqrt(r) wide and m/sqrt(r) high: m = sqrt(height·H · width·W) and r = width·W /
    (height·H) in pixels; its first box is the square (r = 1)."""
    image_h, image_w = (int(d) for d in image_size)
    sizes: List[List[float]] = []  # the magnified sizes of each PriorBox's anchors
    ratios: List[List[float]] = []  # its aspect ratios other than 1, as Caffe reads them
    where = []
    for height, width in boxes:
        size = factor * math.sqrt(height * image_h * width * image_w)
        ratio = as_float32(width * image_w / (height * image_h))
        index = next((i for i, known in enumerate(sizes) if abs(known[0] - size) <= SAME_SIZE), None)
        if index is None:
            index = len(sizes)
            sizes.append([])
            ratios.append([])
        sizes[index].append(size)
        if abs(ratio - 1.0) < SAME_RATIO:
            where.append((index, 0))
            continue
        known = next((i for i, r in enumerate(ratios[index]) if abs(r - ratio) < SAME_RATIO), None)
        if known is None:
            known = len(ratios[index])
            ratios[index].append(ratio)
        where.append((index, 1 + known))
    # each size is the mean of its anchors' (their rounding errors partly cancel)
    return [(float(round(sum(group) / len(group))), group_ratios) for group, group_ratios in zip(sizes, ratios)], where


def runs(where: List[Tuple[int, int]]) -> List[Tuple[int, int, int]]:
    """TF's anchor order as runs (PriorBox, first box, end box) of consecutive boxes."""
    result: List[List[int]] = []
    for prior, box in where:
        if result and result[-1][0] == prior and result[-1][2] == box:
            result[-1][2] += 1
        else:
            result.append([prior, box, box + 1])
    return [tuple(run) for run in result]


@register("ssd_detection_output")
class SSDDetectionOutput(Handler):
    config_keys = ("image_size", "feature_maps", "coder_scales", "score_converter", "logit_scale",
                   "score_threshold", "iou_threshold", "max_total_detections")
    array_layouts = {"anchors": "(anchors, 4): TF's anchors, [ymin, xmin, ymax, xmax] normalised"}
    notes = ("inputs: box encodings (N, anchors, 4) as (ty, tx, th, tw), class logits with background "
             "(N, anchors, classes + 1), the image input, then each feature map's box head; "
             "feature_maps: per map its head `layer`, `grid` [H, W], the cells' `step` [y, x] and "
             "`offset` (centres (i + offset)·step) and a cell's `boxes` [[height, width], ...] in TF's "
             "order, all fractions of the image; coder_scales: y, x, height, width; score_converter SIGMOID, "
             "SOFTMAX or IDENTITY of logits / logit_scale; output: (1, 1, rows, 7) detections "
             "(image, label, score, xmin, ymin, xmax, ymax)")
    caffe_layers = ("Slice", "Concat", "Flatten", "Power", "Sigmoid", "Softmax", "PriorBox", "Reshape",
                    "Silence", "DetectionOutput")
    summary = ("the TF Object Detection API's SSD post-processing: anchors as PriorBox layers (one per "
               "box size; Reshape, Slice, Concat put them in TF's order), the coder's (y, x) pairs swapped "
               "by Slice + Concat, Sigmoid/Softmax scores, DetectionOutput (CENTER_SIZE, variances = "
               "1/coder scales, background label 0)")

    def array_shapes(self, layer, model):
        return {"anchors": [model.layer(layer.inputs[0]).output_shape[1], 4]}

    def check(self, layer, model, profile):
        if not (profile.allows("PriorBox") and profile.allows("DetectionOutput")):
            return ("SSD post-processing needs PriorBox and DetectionOutput, which the '%s' profile "
                    "lacks: use --profile ssd (or opencv)" % profile.name)
        config = layer.config
        if any("step" not in feature_map for feature_map in config["feature_maps"]):
            return ("feature maps without a step: written by an older tf2caffe (format version 1, boxes "
                    "as [scale, ratio]); export the model again")
        if config["score_converter"] not in ("SIGMOID", "SOFTMAX", "IDENTITY"):
            return "score_converter %s (known: SIGMOID, SOFTMAX, IDENTITY)" % config["score_converter"]
        if any(float(s) <= 0 for s in config["coder_scales"]) or len(config["coder_scales"]) != 4:
            return "coder_scales %s: four positive numbers" % config["coder_scales"]
        count = sum(int(m["grid"][0]) * int(m["grid"][1]) * len(m["boxes"]) for m in config["feature_maps"])
        if count != model.layer(layer.inputs[0]).output_shape[1]:
            return "the feature maps make %d anchors; the box encodings have %d" % (
                count, model.layer(layer.inputs[0]).output_shape[1])
        return None

    def emit(self, layer, ctx):
        config = layer.config
        net_add, name = ctx.add, (lambda suffix: ctx.name(layer, suffix))
        boxes_blob, scores_blob = ctx.bottom(layer, 0).name, ctx.bottom(layer, 1).name
        image_blob = ctx.bottom(layer, 2).name

        # (ty, tx, th, tw) -> (tx, ty, tw, th), flattened per image.
        parts = [name("t%s" % axis) for axis in ("y", "x", "h", "w")]
        net_add(CaffeLayer(name("codes"), "Slice", [boxes_blob], parts,
                           {"slice_param": {"axis": 2, "slice_point": [1, 2, 3]}}))
        net_add(CaffeLayer(name("loc_xywh"), "Concat", [parts[1], parts[0], parts[3], parts[2]],
                           [name("loc_xywh")], {"concat_param": {"axis": 2}}))
        net_add(CaffeLayer(name("loc"), "Flatten", [name("loc_xywh")], [name("loc")]))

        scores = scores_blob
        if float(config["logit_scale"]) != 1.0:
            net_add(CaffeLayer(name("logits"), "Power", [scores], [name("logits")],
                               {"power_param": {"scale": 1.0 / float(config["logit_scale"])}}))
            scores = name("logits")
        converter = config["score_converter"]
        if converter != "IDENTITY":
            params = {"softmax_param": {"axis": 2}} if converter == "SOFTMAX" else {}
            net_add(CaffeLayer(name("scores"), converter.capitalize(), [scores], [name("scores")], params))
            scores = name("scores")
        net_add(CaffeLayer(name("conf"), "Flatten", [scores], [name("conf")]))

        factor = magnification(config["image_size"])
        maps = [self._priors(ctx, layer, index, feature_map, image_blob, factor)
                for index, feature_map in enumerate(config["feature_maps"])]
        net_add(CaffeLayer(name("magnified"), "Concat", maps, [name("magnified")], {"concat_param": {"axis": 2}}))
        net_add(CaffeLayer(name("halves"), "Slice", [name("magnified")], [name("magnified_corners"), name("variances")],
                           {"slice_param": {"axis": 1, "slice_point": [1]}}))
        net_add(CaffeLayer(name("corners"), "Power", [name("magnified_corners")], [name("corners")],
                           {"power_param": {"scale": 1.0 / factor}}))
        net_add(CaffeLayer(name("priors"), "Concat", [name("corners"), name("variances")], [name("priors")],
                           {"concat_param": {"axis": 1}}))

        top = ctx.name(layer)
        net_add(CaffeLayer(top, "DetectionOutput", [name("loc"), name("conf"), name("priors")], [top], {
            "detection_output_param": {
                "num_classes": int(ctx.model.layer(layer.inputs[1]).output_shape[2]),
                "share_location": True, "background_label_id": 0,
                "nms_param": {"nms_threshold": float(config["iou_threshold"])},
                "code_type": "CENTER_SIZE", "keep_top_k": int(config["max_total_detections"]),
                "confidence_threshold": float(config["score_threshold"])}}))
        ctx.produce(layer, top, shape=layer.output_shape)

    def _priors(self, ctx, layer, index: int, feature_map: Dict, image_blob: str, factor: int) -> str:
        """The blob holding one feature map's priors, (1, 2, cells · anchors · 4), in TF's order."""
        config = layer.config
        name = lambda suffix: ctx.name(layer, "map%d/%s" % (index, suffix))
        height, width = (int(d) for d in config["image_size"])
        grid_h, grid_w = (int(d) for d in feature_map["grid"])
        step_y, step_x = (float(d) for d in feature_map["step"])
        head = ctx.blobs[feature_map["layer"]].name
        priors, where = prior_boxes(feature_map["boxes"], config["image_size"], factor)
        tops = []
        for number, (min_size, ratios) in enumerate(priors):
            top = name("prior%d" % number)
            tops.append(top)
            ctx.add(CaffeLayer(top, "PriorBox", [head, image_blob], [top], {"prior_box_param": {
                "min_size": min_size, "aspect_ratio": ratios,
                "flip": False, "clip": False, "variance": variances(config["coder_scales"]),
                "step_h": step_y * height * factor, "step_w": step_x * width * factor,
                "offset": float(feature_map["offset"])}}))
        taken = runs(where)
        if len(taken) == 1 and taken[0] == (0, 0, 1 + len(priors[0][1])):
            return tops[0]  # one PriorBox, all its boxes in TF's order
        cells = grid_h * grid_w
        pieces: Dict[Tuple[int, int, int], str] = {}
        for number, top in enumerate(tops):
            count = 1 + len(priors[number][1])
            view = name("prior%d/cells" % number)
            ctx.add(CaffeLayer(view, "Reshape", [top], [view],
                               {"reshape_param": {"shape": shape_param([1, 2, cells, count * 4])}}))
            cuts = sorted({b for p, first, end in taken if p == number for b in (first, end)} | {0, count})
            if cuts == [0, count]:
                pieces[(number, 0, count)] = view
                continue
            outputs = [name("prior%d/boxes%d-%d" % (number, a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
            ctx.add(CaffeLayer(name("prior%d/cut" % number), "Slice", [view], outputs, {"slice_param": {
                "axis": 3, "slice_point": [4 * c for c in cuts[1:-1]]}}))
            used = {(number, a, b) for p, a, b in taken if p == number}
            unused = [out for (a, b), out in zip(zip(cuts[:-1], cuts[1:]), outputs) if (number, a, b) not in used]
            if unused:
                ctx.add(CaffeLayer(name("prior%d/unused" % number), "Silence", unused, []))
            pieces.update({(number, a, b): out for (a, b), out in zip(zip(cuts[:-1], cuts[1:]), outputs)})
        ordered = name("ordered")
        ctx.add(CaffeLayer(ordered, "Concat", [pieces[run] for run in taken], [ordered],
                           {"concat_param": {"axis": 3}}))
        flat = name("priors")
        ctx.add(CaffeLayer(flat, "Reshape", [ordered], [flat], {"reshape_param": {"shape": shape_param([1, 2, -1])}}))
        return flat
