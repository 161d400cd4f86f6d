"""SSD detectors end to end: a TF Object Detection API-style SSD (a Keras MobileNetV2 backbone +
box predictor heads, and the `ssd { ... }` block of a pipeline config) -> an `ssd`-profile Caffe
net ending in PriorBox + DetectionOutput, whose detections on scikit-learn's two photographs are
TensorFlow's (same images and classes, scores and boxes within 1e-4), in OpenCV and in the
source-built SSD Caffe, and whose priors are TF's anchors element-wise.

The heads have random seeded weights (conditioned like trained ones); the class heads' common
bias is set so that some dozens of (anchor, class) scores pass the threshold, with no score
within 1e-3 of it and no overlap within 1e-3 of the NMS threshold: the comparison is neither
empty nor decided by rounding.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

import tf2caffe
from tf2caffe import intermediate, source_caffe
from tf2caffe.export.conditioned import condition_keras_model
from tf2caffe.export.reference import reference_batch
from tf2caffe.caffe.emit import unsupported_layers
from tf2caffe.caffe.profiles import get_profile
from tf2caffe.errors import ConversionError
from tf2caffe.export.ssd import grid_anchors, read_ssd_settings
from tf2caffe.measure import detection_rows

SEED = 0
CLASSES = 3
MARGIN = 1e-3
THRESHOLD, IOU_THRESHOLD, MAX_TOTAL = 0.5, 0.6, 300  # as PIPELINE says
# The class heads' kernels and biases times this: confident logits, as a trained detector's, so
# that few scores lie near the threshold.
CLASS_LOGIT_GAIN = 8.0
TOLERANCE = 1e-4
# ssd_mobilenet_v2_coco.config's ssd block as the sample config has it (tensorflow/models
# research/object_detection/samples/configs/), with 3 classes, a score threshold of 0.5 (the
# sample's 1e-8 lets every box through: 100 detections decided by ties between random scores) and
# at most 300 detections (the seeded noise image of the reference batch finds over 100).
PIPELINE = """
model {
  ssd {
    num_classes: %(classes)d
    box_coder {
      faster_rcnn_box_coder {
        y_scale: 10.0
        x_scale: 10.0
        height_scale: 5.0
        width_scale: 5.0
      }
    }
    anchor_generator {
      ssd_anchor_generator {
        num_layers: 6
        min_scale: 0.2
        max_scale: 0.95
        aspect_ratios: 1.0
        aspect_ratios: 2.0
        aspect_ratios: 0.5
        aspect_ratios: 3.0
        aspect_ratios: 0.3333%(anchor_settings)s
      }
    }
    image_resizer {
      fixed_shape_resizer {
        height: %(height)d
        width: %(width)d
      }
    }
    post_processing {
      batch_non_max_suppression {
        score_threshold: %(threshold)s
        iou_threshold: 0.6
        max_detections_per_class: %(most)d
        max_total_detections: %(most)d
      }
      score_converter: %(converter)s
    }
  }
}
"""
ANCHORS_PER_CELL = [3, 6, 6, 6, 6, 6]  # reduce_boxes_in_lowest_layer, then 5 ratios + interpolated
# The converted detectors: name -> input (height, width), settings added to the sample config's
# ssd_anchor_generator. The variants exercise what PriorBox expresses beyond the sample: strides
# and offsets in pixels, different in y and x but the same fraction of a stride (0.25) on both axes
# (PriorBox has one offset), and a base anchor 0.6 times as wide as high on a 96x128 input.
CASES = {
    "128": ((128, 128), ""),
    "300": ((300, 300), ""),
    "strides-128": ((128, 128), "".join(
        "\n        %s: %d" % (field, value) for field, values in (
            ("height_stride", (16, 32, 64, 128, 128, 128)), ("width_stride", (20, 40, 64, 128, 128, 128)),
            ("height_offset", (4, 8, 16, 32, 32, 32)), ("width_offset", (5, 10, 16, 32, 32, 32)))
        for value in values)),
    "base-96x128": ((96, 128), "\n        base_anchor_height: 1.0\n        base_anchor_width: 0.6"),
}


def photographs(image_hw) -> np.ndarray:
    """scikit-learn's two sample photographs, resized and scaled as MobileNetV2 expects."""
    from sklearn.datasets import load_sample_image
    images = [cv2.resize(load_sample_image(name), image_hw[::-1], interpolation=cv2.INTER_AREA)
              for name in ("china.jpg", "flower.jpg")]
    return (np.stack(images).astype(np.float32) / 127.5 - 1.0)


def build_detector(image_hw) -> keras.Model:
    """MobileNetV2 (alpha 0.35) feature maps at strides 16 and 32 plus four extra layers (1x1 then
    3x3 stride-2 convolutions, BatchNorm, ReLU6), as ssd_mobilenet_v2's feature extractor, and a
    3x3 box and class head per map, reshaped and concatenated as the API's box predictor does."""
    keras.utils.set_random_seed(SEED)
    backbone = keras.applications.MobileNetV2(input_shape=tuple(image_hw) + (3,), alpha=0.35, include_top=False,
                                              weights=None)
    maps = [backbone.get_layer("block_13_expand_relu").output, backbone.output]
    x = maps[-1]
    for index, depth in enumerate((64, 32, 32, 16)):
        x = keras.layers.Conv2D(depth // 2, 1, use_bias=False, name="extra%d_1x1" % index)(x)
        x = keras.layers.BatchNormalization(name="extra%d_1x1_bn" % index)(x)
        x = keras.layers.ReLU(6.0, name="extra%d_1x1_relu6" % index)(x)
        x = keras.layers.Conv2D(depth, 3, strides=2, padding="same", use_bias=False, name="extra%d_3x3" % index)(x)
        x = keras.layers.BatchNormalization(name="extra%d_3x3_bn" % index)(x)
        x = keras.layers.ReLU(6.0, name="extra%d_3x3_relu6" % index)(x)
        maps.append(x)
    boxes, classes = [], []
    for index, (feature, anchors) in enumerate(zip(maps, ANCHORS_PER_CELL)):
        box = keras.layers.Conv2D(anchors * 4, 3, padding="same", name="box_head%d" % index)(feature)
        boxes.append(keras.layers.Reshape((-1, 4), name="box_head%d_reshape" % index)(box))
        score = keras.layers.Conv2D(anchors * (CLASSES + 1), 3, padding="same", name="class_head%d" % index)(feature)
        classes.append(keras.layers.Reshape((-1, CLASSES + 1), name="class_head%d_reshape" % index)(score))
    model = keras.Model(backbone.input, [keras.layers.Concatenate(axis=1, name="box_encodings")(boxes),
                                         keras.layers.Concatenate(axis=1, name="class_predictions")(classes)])
    condition_keras_model(model, SEED)
    return model


def class_bias_shift(logits: np.ndarray, wanted: int) -> float:
    """The shift of every class logit (background excluded) that puts the 0-logit threshold (score
    0.5) in the widest gap between logits of any image of the batch, among the 40 after the cut at
    which each photograph (items 1, 2; item 0 is the noise sample) has `wanted` logits above it."""
    logits = logits[..., 1:]
    ranked = np.sort(logits.ravel())[::-1]
    start = int(np.searchsorted(-ranked, -min(np.sort(photo.ravel())[-wanted] for photo in logits[1:])))
    gaps = ranked[start:start + 40] - ranked[start + 1:start + 41]
    at = start + int(np.argmax(gaps))
    return -float(ranked[at] + ranked[at + 1]) / 2.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def decisions(codes: np.ndarray, logits: np.ndarray, anchors: np.ndarray) -> dict:
    """How far the detections are from flipping (numpy, float64): the scores from the threshold,
    the overlaps of same-class candidates from the NMS threshold; and the candidates per image."""
    anchors = anchors.astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))[..., 1:]
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    yc, xc = anchors[:, 0] + ha / 2, anchors[:, 1] + wa / 2
    found = {"score": float(np.min(np.abs(scores - THRESHOLD))), "overlap": float("inf"), "candidates": []}
    for image in range(len(codes)):
        ty, tx, th, tw = (codes[image, :, i] / s for i, s in enumerate((10.0, 10.0, 5.0, 5.0)))
        h, w = np.exp(th) * ha, np.exp(tw) * wa
        cy, cx = ty * ha + yc, tx * wa + xc
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        found["candidates"].append(int(np.sum(scores[image] > THRESHOLD)))
        for label in range(scores.shape[2]):
            passing = np.flatnonzero(scores[image, :, label] > THRESHOLD)
            for i, a in enumerate(passing):
                for b in passing[i + 1:]:
                    found["overlap"] = min(found["overlap"], abs(iou(boxes[a], boxes[b]) - IOU_THRESHOLD))
    return found


def clear_of_thresholds(found: dict) -> bool:
    """No decision within MARGIN of flipping, at least 5 candidates per photograph, and fewer than
    max_total_detections per image (so the keep_top_k cut decides nothing)."""
    return (found["score"] > MARGIN and found["overlap"] > MARGIN and min(found["candidates"][1:]) >= 5
            and max(found["candidates"]) < MAX_TOTAL)


def with_class_bias(model: keras.Model, images: np.ndarray, case: str) -> keras.Model:
    """The model with the class heads' logits scaled by CLASS_LOGIT_GAIN, then shifted
    (class_bias_shift) so that, on the reference
    batch the export will use (its seeded noise sample, then `images`), the detections are
    clear of every threshold."""
    batch = reference_batch([[1] + list(images.shape[1:])], SEED, images)[0]
    codes, logits = (np.asarray(value) for value in model(batch))
    logits = logits * CLASS_LOGIT_GAIN
    image_hw = CASES[case][0]
    anchors = grid_anchors(read_ssd_settings_text(case).anchors, grids(image_hw), image_hw)
    for wanted in range(6, 60, 2):
        shift = class_bias_shift(logits, wanted)
        moved = logits.copy()
        moved[..., 1:] += shift
        if clear_of_thresholds(decisions(codes, moved, anchors)):
            break
    else:
        raise AssertionError("no class bias leaves the detections clear of the thresholds")
    for layer in model.layers:
        if layer.name.startswith("class_head") and not layer.name.endswith("reshape"):
            kernel, bias = layer.get_weights()
            per_anchor = bias.reshape(-1, CLASSES + 1) * CLASS_LOGIT_GAIN
            per_anchor[:, 1:] += shift
            layer.set_weights([kernel * CLASS_LOGIT_GAIN, per_anchor.reshape(-1)])
    return model


def pipeline_text(case: str, template: str = PIPELINE) -> str:
    (height, width), anchor_settings = CASES[case]
    return template % dict(classes=CLASSES, height=height, width=width, anchor_settings=anchor_settings,
                           threshold=THRESHOLD, converter="SIGMOID", most=MAX_TOTAL)


def read_ssd_settings_text(case: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pipeline.config"
        path.write_text(pipeline_text(case))
        return read_ssd_settings(path)


def source_caffe_blobs(prototxt: Path, caffemodel: Path, image: np.ndarray, blobs, folder: Path) -> dict:
    """Forward `image` (NCHW) in the source-built Caffe; the named blobs."""
    np.save(folder / "input.npy", image)
    script = (
        "import sys, numpy as np, caffe\n"
        "net = caffe.Net(sys.argv[1], caffe.TEST, weights=sys.argv[2])\n"
        "x = np.load(sys.argv[3]); name = net.inputs[0]\n"
        "net.blobs[name].reshape(*x.shape); net.blobs[name].data[...] = x\n"
        "net.forward()\n"
        "np.savez(sys.argv[4], **{b: net.blobs[b].data for b in sys.argv[5:]})\n")
    out = folder / "blobs.npz"
    subprocess.run([str(source_caffe.source_caffe_python()), "-c", script, str(prototxt), str(caffemodel),
                    str(folder / "input.npy"), str(out)] + list(blobs), check=True, capture_output=True,
                   env={"GLOG_minloglevel": "2", "PATH": "/usr/bin:/bin"})
    return dict(np.load(out))


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    case = request.param
    image_hw = CASES[case][0]
    folder = tmp_path_factory.mktemp("ssd-%s" % case)
    images = photographs(image_hw)
    model = with_class_bias(build_detector(image_hw), images, case)
    model.save(folder / "ssd_mobilenet_v2.keras")
    np.save(folder / "photographs.npy", images)
    config = folder / "pipeline.config"
    config.write_text(pipeline_text(case))
    started = time.monotonic()
    report = tf2caffe.convert(folder / "ssd_mobilenet_v2.keras", folder / "out", profile="ssd",
                              reference_input=str(folder / "photographs.npy"), ssd_config=str(config))
    seconds = time.monotonic() - started
    return dict(case=case, image_hw=image_hw, folder=folder, report=report, seconds=seconds, images=images,
                config=config)


@pytest.mark.slow
def test_detections_match_in_opencv_and_the_source_caffe(converted):
    report = converted["report"]
    h5 = report.h5
    model = intermediate.read(h5)
    try:
        expected = detection_rows(model.activation("detection_output"))
    finally:
        model.file.close()
    model = intermediate.read(h5)
    try:
        found = decisions(*(model.activation(name) for name in model.outputs[:2]),
                          model.layer("detection_output").array("anchors"))
    finally:
        model.file.close()
    runtimes = report.runtimes()
    print(json.dumps(dict(case=converted["case"], seconds=round(converted["seconds"], 1),
                          caffe_layers=report.result.caffe_layers, decisions=found, runtimes=runtimes,
                          detections={int(i): int(np.sum(expected[:, 0] == i)) for i in range(3)}), default=str))
    assert clear_of_thresholds(found)
    for photo in (1, 2):  # batch item 0 is the seeded noise sample
        assert np.sum(expected[:, 0] == photo) >= 5
    assert report.status == 0
    assert set(runtimes) == {"pycaffe-source", "OpenCV"}
    for errors in runtimes.values():
        assert errors["detection_output"] <= TOLERANCE
        assert errors["box_encodings"] <= TOLERANCE and errors["class_predictions"] <= TOLERANCE


@pytest.mark.slow
def test_priors_are_tf_anchors(converted, tmp_path):
    out = converted["folder"] / "out"
    prototxt, caffemodel = out / "ssd_mobilenet_v2.prototxt", out / "ssd_mobilenet_v2.caffemodel"
    model = intermediate.read(converted["report"].h5)
    try:
        anchors = model.layer("detection_output").array("anchors")
    finally:
        model.file.close()
    expected_corners = anchors[:, [1, 0, 3, 2]].ravel()  # TF's y, x first -> Caffe's x, y first
    assert len(anchors) == sum(h * w * a for (h, w), a in zip(grids(converted["image_hw"]), ANCHORS_PER_CELL))
    image = converted["images"][:1].transpose(0, 3, 1, 2)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(image)
    in_opencv = net.forward("detection_output/priors")
    in_caffe = source_caffe_blobs(prototxt, caffemodel, image, ["detection_output/priors"], tmp_path)
    for priors in (in_opencv, in_caffe["detection_output/priors"]):
        priors = np.asarray(priors).reshape(2, -1)
        print("priors", len(anchors), "max |prior - anchor|", np.max(np.abs(priors[0] - expected_corners)))
        assert np.max(np.abs(priors[0] - expected_corners)) <= 2.0 ** -22
        assert np.allclose(priors[1].reshape(-1, 4), [0.1, 0.1, 0.2, 0.2])


def grids(image_hw):
    """The feature maps' (height, width): the backbone's strides 16 and 32, then four halvings."""
    sizes = [tuple(-(-d // 16) for d in image_hw), tuple(-(-d // 32) for d in image_hw)]
    while len(sizes) < 6:
        sizes.append(tuple(-(-d // 2) for d in sizes[-1]))
    return sizes


def test_the_config_is_read_as_the_api_reads_it():
    settings = read_ssd_settings_text("128")
    assert settings.anchors.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    assert settings.anchors.reduce_boxes_in_lowest_layer and settings.anchors.interpolated_scale_aspect_ratio == 1.0
    assert settings.anchors.base_anchor_size == (1.0, 1.0)
    assert settings.anchors.strides is None and settings.anchors.offsets is None
    assert settings.coder_scales == (10.0, 10.0, 5.0, 5.0)
    assert (settings.score_converter, settings.iou_threshold, settings.max_total_detections) == ("SIGMOID", 0.6, 300)
    strides = read_ssd_settings_text("strides-128").anchors
    assert strides.strides == [(16, 20), (32, 40), (64, 64), (128, 128), (128, 128), (128, 128)]
    assert strides.offsets == [(4, 5), (8, 10), (16, 16), (32, 32), (32, 32), (32, 32)]
    assert read_ssd_settings_text("base-96x128").anchors.base_anchor_size == (1.0, 0.6)


@pytest.mark.slow
def test_the_readme_snippet_draws_the_detections(converted, tmp_path):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("<!-- ssd-opencv:start -->")[1].split("<!-- ssd-opencv:end -->")[0]
    namespace = {}
    exec(block.strip().strip("`").removeprefix("python"), namespace)
    out = converted["folder"] / "out"
    from sklearn.datasets import load_sample_image
    for name in ("china.jpg", "flower.jpg"):
        photo = cv2.cvtColor(load_sample_image(name), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(tmp_path / (name + ".png")), photo)
        drawn = namespace["draw_detections"](str(out / "ssd_mobilenet_v2.prototxt"),
                                             str(out / "ssd_mobilenet_v2.caffemodel"), str(tmp_path / (name + ".png")),
                                             str(tmp_path / (name + ".drawn.png")), converted["image_hw"][::-1])
        picture = cv2.imread(str(tmp_path / (name + ".drawn.png")))  # PNG: the green stays exact
        green = np.all(picture == (0, 255, 0), axis=2) & ~np.all(photo == (0, 255, 0), axis=2)
        assert drawn >= 1 and green.sum() > 100 * drawn, (name, drawn, green.sum())


@pytest.mark.slow
def test_the_bvlc_profile_refuses_the_detection_layer(converted):
    model = intermediate.read(converted["report"].h5)
    try:
        problems = [str(p) for p in unsupported_layers(model, get_profile("bvlc"))]
    finally:
        model.file.close()
    # (the heads' reshapes need Permute too)
    assert ("'detection_output' (ssd_detection_output): SSD post-processing needs PriorBox and DetectionOutput, "
            "which the 'bvlc' profile lacks: use --profile ssd (or opencv)") in problems


# Settings no combination of PriorBox and DetectionOutput expresses, or not supported yet: each
# refused in one line saying why.
REFUSED = {
    "max_detections_per_class: %(most)d": ("max_detections_per_class: 50", "max_detections_per_class 50 < "
                                           "max_total_detections 300: DetectionOutput caps each class before NMS"),
    "faster_rcnn_box_coder {": ("keypoint_box_coder {", "only faster_rcnn_box_coder (centre-size)"),
    "ssd_anchor_generator {": ("multiscale_anchor_generator {", "only ssd_anchor_generator converts"),
    "iou_threshold: 0.6": ("iou_threshold: 0.6 use_class_agnostic_nms: true",
                           "use_class_agnostic_nms: DetectionOutput does per-class hard NMS only"),
    "%(anchor_settings)s": ("height_stride: 16", "ssd_anchor_generator has 1 height_stride and 0 width_stride "
                                                 "values; both need one per layer (num_layers 6)"),
}


@pytest.mark.parametrize("setting", sorted(REFUSED))
def test_refused_settings(setting, tmp_path):
    replacement, reason = REFUSED[setting]
    path = tmp_path / "pipeline.config"
    path.write_text(pipeline_text("128", PIPELINE.replace(setting, replacement)))
    with pytest.raises(ConversionError, match=re.escape(reason)):
        read_ssd_settings(path)


def test_anchors_of_the_sample_config():
    """The API's ssd_mobilenet_v2 anchors at 300x300: 1917, the lowest layer's three per cell first."""
    anchors = grid_anchors(read_ssd_settings_text("300").anchors, grids((300, 300)), (300, 300))
    assert anchors.shape == (1917, 4) and anchors.dtype == np.float32
    # cell (0, 0) of the 19x19 map: centre 0.5/19, then (0.1, 1), (0.2, 2), (0.2, 0.5)
    centre = 0.5 / 19
    sizes = [(0.1, 0.1), (0.2 / np.sqrt(2), 0.2 * np.sqrt(2)), (0.2 * np.sqrt(2), 0.2 / np.sqrt(2))]
    expected = [[centre - h / 2, centre - w / 2, centre + h / 2, centre + w / 2] for h, w in sizes]
    assert np.allclose(anchors[:3], expected, atol=1e-7)


def frozen_with_post_processing(converted, path: Path, nms: str = "combined"):
    """The converted case's detector frozen with the API's post-processing ops in the graph
    (anchors as a constant, decoding, sigmoid, then tf.image.combined_non_max_suppression, or
    per class a padded NonMaxSuppressionV4 on the first image and the best MAX_TOTAL kept boxes of
    all classes by tf.math.top_k) at `path`; returns graph_rows(batch): the graph's detections,
    image by image, as rows."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    (height, width), folder = converted["image_hw"], converted["folder"]
    model = keras.models.load_model(folder / "ssd_mobilenet_v2.keras")
    reference = intermediate.read(converted["report"].h5)
    try:
        anchors = reference.layer("detection_output").array("anchors")
    finally:
        reference.file.close()

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    def detect(images):
        codes, logits = model(images, training=False)
        codes, logits = tf.identity(codes, name="box_encodings"), tf.identity(logits, name="class_logits")
        constant = tf.constant(anchors, name="anchors")
        ha, wa = constant[:, 2] - constant[:, 0], constant[:, 3] - constant[:, 1]
        ty, tx, th, tw = tf.unstack(codes / [10.0, 10.0, 5.0, 5.0], axis=2)
        h, w = tf.exp(th) * ha, tf.exp(tw) * wa
        cy, cx = ty * ha + constant[:, 0] + ha / 2, tx * wa + constant[:, 1] + wa / 2
        boxes = tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=2)
        scores = tf.sigmoid(logits)[:, :, 1:]
        if nms == "combined":
            return tf.image.combined_non_max_suppression(boxes[:, :, None, :], scores, MAX_TOTAL, MAX_TOTAL,
                                                         IOU_THRESHOLD, THRESHOLD, clip_boxes=False)
        kept = [tf.raw_ops.NonMaxSuppressionV4(boxes=boxes[0], scores=scores[0, :, c], max_output_size=MAX_TOTAL,
                                               iou_threshold=IOU_THRESHOLD, score_threshold=THRESHOLD,
                                               pad_to_max_output_size=True) for c in range(CLASSES)]
        valid = [tf.range(MAX_TOTAL) < count for _, count in kept]  # the padding scores -1
        all_scores = tf.concat([tf.where(v, tf.gather(scores[0, :, c], k), -1.0)
                                for c, ((k, _), v) in enumerate(zip(kept, valid))], 0)
        best_scores, best = tf.math.top_k(all_scores, MAX_TOTAL)
        all_boxes = tf.concat([tf.gather(boxes[0], k) for k, _ in kept], 0)
        all_classes = tf.concat([tf.fill([MAX_TOTAL], float(c)) for c in range(CLASSES)], 0)
        count = tf.minimum(tf.add_n([count for _, count in kept]), MAX_TOTAL)
        return tf.gather(all_boxes, best)[None], best_scores[None], tf.gather(all_classes, best)[None], count[None]

    frozen = convert_variables_to_constants_v2(detect.get_concrete_function())
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())

    def graph_rows(batch):
        rows = []
        for image in range(len(batch)):
            per_image = batch[image:image + 1] if nms != "combined" else batch
            boxes, scores, classes, counts = (np.asarray(t) for t in detect(tf.constant(per_image)))
            index = 0 if nms != "combined" else image
            rows.extend([image, classes[index, k] + 1, scores[index, k]] + list(boxes[index, k, [1, 0, 3, 2]])
                        for k in range(counts[index]))
        return detection_rows(rows)
    return graph_rows


def convert_frozen(converted, tmp_path: Path, nms: str = "combined", outputs="box_encodings:0,class_logits:0",
                   **options) -> dict:
    """Form (a): the frozen detector converted up to its heads (--outputs), the rest from the graph
    (or from `options`' ssd_config); the graph's own detections on the photographs are the
    intermediate's TensorFlow reference, which DetectionOutput matches in both runtimes."""
    pb = tmp_path / "ssd_frozen.pb"
    graph_rows = frozen_with_post_processing(converted, pb, nms)
    started = time.monotonic()
    report = tf2caffe.convert(pb, tmp_path / "out", profile="ssd", inputs="images:0", outputs=outputs,
                              input_shape=[1] + list(converted["image_hw"]) + [3],
                              reference_input=str(converted["folder"] / "photographs.npy"), **options)
    seconds = time.monotonic() - started
    runtimes = report.runtimes()
    print(json.dumps(dict(form="a", case=converted["case"], nms=nms, config="ssd_config" in options,
                          seconds=round(seconds, 1),
                          caffe_layers=report.result.caffe_layers, runtimes=runtimes)))
    assert report.status == 0 and set(runtimes) == {"pycaffe-source", "OpenCV"}
    assert all(errors["detection_output"] <= TOLERANCE for errors in runtimes.values())

    converted_model = intermediate.read(report.h5)
    try:
        batch = converted_model.reference_input(converted_model.inputs[0])
        expected = detection_rows(converted_model.activation("detection_output"))
        layer = converted_model.layer("detection_output")
        found = dict(config=layer.config, anchors=layer.array("anchors"))
    finally:
        converted_model.file.close()
    in_graph = graph_rows(batch)
    assert in_graph.shape == expected.shape and np.array_equal(in_graph[:, :2], expected[:, :2])
    assert np.max(np.abs(in_graph[:, 2:] - expected[:, 2:])) <= TOLERANCE  # measured: 3.6e-6
    return found


@pytest.mark.slow
def test_frozen_graph_with_its_post_processing(converted, tmp_path):
    """Without --ssd-config, the post-processing is read from the graph: the same settings and
    anchors (their PriorBox layout within float32 rounding) as the config gives."""
    found = convert_frozen(converted, tmp_path)
    model = intermediate.read(converted["report"].h5)
    try:
        layer = model.layer("detection_output")
        from_config = dict(config=layer.config, anchors=layer.array("anchors"))
    finally:
        model.file.close()
    assert np.max(np.abs(found["anchors"] - from_config["anchors"])) <= 2.0 ** -23
    assert found["config"]["score_converter"] == from_config["config"]["score_converter"]
    for key in ("coder_scales", "logit_scale", "score_threshold", "iou_threshold", "max_total_detections",
                "image_size"):
        assert found["config"][key] == pytest.approx(from_config["config"][key], rel=1e-6), key
    for probed, configured in zip(found["config"]["feature_maps"], from_config["config"]["feature_maps"]):
        assert probed["grid"] == configured["grid"] and probed["offset"] == pytest.approx(configured["offset"])
        assert np.allclose(probed["step"], configured["step"], rtol=1e-6)
        assert np.allclose(probed["boxes"], configured["boxes"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("converted", ["128"], indirect=True)
def test_frozen_graph_with_one_nms_per_class(converted, tmp_path):
    """A NonMaxSuppressionV4 per class, then the best of all classes by TopKV2: read as per-class
    NMS (image by image) capped over the classes by the TopKV2's k. Without --outputs: the head
    outputs are found from the NMS ops."""
    found = convert_frozen(converted, tmp_path, nms="per-class", outputs=None)
    assert found["config"]["max_total_detections"] == MAX_TOTAL


@pytest.mark.slow
@pytest.mark.parametrize("converted", ["128"], indirect=True)
def test_frozen_graph_with_the_config(converted, tmp_path):
    """--ssd-config wins over the graph's own post-processing: its settings make the layer."""
    convert_frozen(converted, tmp_path, ssd_config=str(converted["config"]))


def tiny_detector(path: Path, decode, scores) -> None:
    """An 8x8-cell detector (1x1 convolutions of the image as heads, one anchor per cell, 2
    classes + background) whose post-processing is decode(codes, anchors) -> boxes and
    scores(logits) -> the NMS's scores, then CombinedNonMaxSuppression: frozen at `path` (.pb), or
    a SavedModel folder there."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    random = np.random.default_rng(SEED)
    box_kernel, class_kernel = (tf.constant(random.normal(0, 1, (1, 1, 3, k)).astype(np.float32)) for k in (4, 3))
    centres = (np.arange(8) + 0.5) / 8
    y, x = np.meshgrid(centres, centres, indexing="ij")
    anchors = tf.constant(np.stack([y - 0.1, x - 0.1, y + 0.1, x + 0.1], -1).reshape(64, 4).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="images")])
    def detect(images):
        codes = tf.identity(tf.reshape(tf.nn.conv2d(images, box_kernel, 1, "VALID"), [-1, 64, 4]), name="box_encodings")
        logits = tf.identity(tf.reshape(tf.nn.conv2d(images, class_kernel, 1, "VALID"), [-1, 64, 3]), name="class_logits")
        return tf.image.combined_non_max_suppression(decode(codes, anchors)[:, :, None, :], scores(logits), 20, 20,
                                                     0.5, 0.3, clip_boxes=False)

    if path.suffix != ".pb":
        module = tf.Module()
        module.detect = detect
        tf.saved_model.save(module, str(path), signatures=detect.get_concrete_function())
        return
    path.write_bytes(convert_variables_to_constants_v2(detect.get_concrete_function()).graph.as_graph_def()
                     .SerializeToString())


def centre_size_decode(scales):
    def decode(codes, anchors):
        import tensorflow as tf
        ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ty, tx, th, tw = tf.unstack(codes / scales, axis=2)
        h, w = tf.exp(th) * ha, tf.exp(tw) * wa
        cy, cx = ty * ha + anchors[:, 0] + ha / 2, tx * wa + anchors[:, 1] + wa / 2
        return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=2)
    return decode


@pytest.mark.parametrize("source", ["tiny.pb", "tiny_saved_model"])
def test_the_graph_post_processing_is_probed(source, tmp_path):
    """Coder scales, a softmax of logits / 2 and the NMS's thresholds, read from the graph (a
    frozen one or a SavedModel), whose head outputs are found from the NMS (no --inputs, no
    --outputs)."""
    import tensorflow as tf
    tiny_detector(tmp_path / source, centre_size_decode([8.0, 6.0, 4.0, 3.0]),
                  lambda logits: tf.nn.softmax(logits / 2.0)[:, :, 1:])
    h5 = tf2caffe.export.export(tmp_path / source, tmp_path / "out")
    model = intermediate.read(h5)
    try:
        config = model.layer("detection_output").config
    finally:
        model.file.close()
    assert config["coder_scales"] == [8.0, 6.0, 4.0, 3.0]
    assert (config["score_converter"], config["logit_scale"]) == ("SOFTMAX", 2.0)
    assert (config["iou_threshold"], config["score_threshold"], config["max_total_detections"]) == pytest.approx(
        (0.5, 0.3, 20))
    layout = config["feature_maps"][0]
    assert layout["step"] == pytest.approx([0.125, 0.125], rel=1e-6) and layout["offset"] == pytest.approx(0.5, rel=1e-6)
    assert layout["boxes"] == [pytest.approx([0.2, 0.2], rel=1e-6)]


@pytest.mark.parametrize("what", ["decoding", "scores"])
def test_graph_post_processing_that_is_not_the_api_s_is_refused(what, tmp_path):
    import tensorflow as tf
    if what == "decoding":  # corners moved by the encodings: not the centre-size coder
        tiny_detector(tmp_path / "tiny.pb", lambda codes, anchors: anchors + codes * 0.1,
                      lambda logits: tf.sigmoid(logits)[:, :, 1:])
        reason = "the graph's box decoding is not the centre-size coder"
    else:
        tiny_detector(tmp_path / "tiny.pb", centre_size_decode([10.0, 10.0, 5.0, 5.0]),
                      lambda logits: tf.sigmoid(logits)[:, :, 1:] ** 2)
        reason = "the scores are not a sigmoid, softmax or identity of the logits / a scale"
    with pytest.raises(ConversionError, match=re.escape("/CombinedNonMaxSuppression' (CombinedNonMaxSuppression): "
                                                        + reason)):
        tf2caffe.export.export(tmp_path / "tiny.pb", tmp_path / "out", inputs="images:0",
                               outputs="box_encodings:0,class_logits:0")


def test_nms_in_a_loop_is_refused_naming_it(tmp_path):
    """The API's TF1 export runs its per-class NMS in a map_fn over the batch (a while loop): refused
    in one line naming the loop, before any work."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="images")])
    def detect(images):
        codes = tf.identity(tf.reshape(images[..., :2] * 0.1, [-1, 32, 4]), name="box_encodings")
        logits = tf.identity(tf.reshape(images[..., :2], [-1, 48, 2])[:, :32], name="class_logits")
        return tf.map_fn(lambda item: tf.image.non_max_suppression(item[0], tf.sigmoid(item[1][:, 1]), 10, 0.5),
                         (codes, logits), fn_output_signature=tf.int32)

    pb = tmp_path / "looped.pb"
    pb.write_bytes(convert_variables_to_constants_v2(detect.get_concrete_function()).graph.as_graph_def()
                   .SerializeToString())
    # (the frozen graph holds the loop as TF1 control flow: Enter, Exit, ...; or a While op)
    with pytest.raises(ConversionError, match=r"looped\.pb: 'map/while/[^']*' \((Enter|While|StatelessWhile)\): "
                                              r"the post-processing runs its NMS in a loop \(a map_fn over the batch"):
        tf2caffe.export.export(pb, tmp_path / "out", inputs="images:0", outputs="box_encodings:0,class_logits:0")


def test_an_unusable_config_is_one_line_before_any_work(tmp_path):
    config = tmp_path / "pipeline.config"
    config.write_text("model { faster_rcnn { num_classes: 3 } }")
    for path, message in ((tmp_path / "missing.config", "cannot read the pipeline config: No such file or directory"),
                          (config, "no `ssd { ... }` block (expected model { ssd { ... } })")):
        completed = subprocess.run([sys.executable, "-m", "tf2caffe", "export", str(tmp_path / "ssd.keras"), "-o",
                                    str(tmp_path / "out"), "--ssd-config", str(path)], capture_output=True, text=True)
        assert completed.returncode == 2 and completed.stderr == "tf2caffe: error: %s: %s\n" % (path, message)


def test_unequal_offset_fractions_are_refused_naming_the_feature_map(tmp_path):
    """PriorBox centres cell (i, j) at ((i, j) + offset)·step with one offset: anchor offsets of
    3/8 of a stride in y and 1/4 in x are not one PriorBox grid, and the export says so."""
    keras.utils.set_random_seed(SEED)
    image = keras.Input((32, 32, 3))
    feature = keras.layers.Conv2D(8, 3, strides=8, padding="same", name="features")(image)  # 4x4
    boxes = keras.layers.Reshape((-1, 4), name="box_encodings")(keras.layers.Conv2D(4, 1, name="box_head")(feature))
    classes = keras.layers.Reshape((-1, CLASSES + 1), name="class_predictions")(
        keras.layers.Conv2D(CLASSES + 1, 1, name="class_head")(feature))
    keras.Model(image, [boxes, classes]).save(tmp_path / "tiny_ssd.keras")
    config = tmp_path / "pipeline.config"
    config.write_text(PIPELINE.replace("num_layers: 6", "num_layers: 1 scales: 0.3 interpolated_scale_aspect_ratio: 0 "
                                       "reduce_boxes_in_lowest_layer: false").replace(
        "aspect_ratios: 2.0\n        aspect_ratios: 0.5\n        aspect_ratios: 3.0\n        aspect_ratios: 0.3333", "")
        % dict(classes=CLASSES, height=32, width=32, threshold=THRESHOLD, converter="SIGMOID", most=MAX_TOTAL,
               anchor_settings=" height_stride: 8 width_stride: 8 height_offset: 3 width_offset: 2"))
    with pytest.raises(ConversionError) as refused:
        tf2caffe.export.export(tmp_path / "tiny_ssd.keras", tmp_path / "out", ssd_config=str(config))
    assert str(refused.value) == (
        "%s: tiny_ssd with %s: feature map 'box_head': anchor offsets (y 0.09375, x 0.0625 of the image) are "
        "0.375 and 0.25 strides: PriorBox has one offset for both axes (centre = (i + offset)·step), so "
        "offset_y/stride_y must equal offset_x/stride_x" % (tmp_path / "tiny_ssd.keras", config))
