"""What a user of the converted net needs to know, for the conversion report: each input blob
(shape, channel order, the preprocessing inside the net and what is left to the user), each
output (TensorFlow name -> Caffe blob, logits or probabilities) and, per TensorFlow layer, the
Caffe layers emitted for it. Runs on the Caffe side (Python 3.9, numpy 1.19); the keys are
report.py's.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .. import report
from ..intermediate import SQUASHING, Layer, Model
from .emit import Blob
from .deploy import DeployOptions
from .netspec import NetSpec

# Vocabulary layers that, right after an input, are the preprocessing the net does itself.
PREPROCESSING = ("rescale", "normalize")


def inputs(model: Model, blobs: Dict[str, Blob], input_blobs: Dict[str, str], options: DeployOptions) -> List[Dict]:
    """`input_blobs`: TF input layer -> the Caffe input blob of the net written (a hand-written
    prototxt names its own); `options`: the deployment options the net was built with."""
    described = []
    for name in model.inputs:
        blob = Blob(input_blobs[name], blobs[name].shape)
        inside = [_describe_step(model.layer(step)) for step in _preprocessing_inside(model, name)]
        if options.mean is not None or options.scale is not None:
            inside.insert(0, {"layer": "--mean/--scale", "operation": "(x - mean) * scale",
                              "mean": options.mean, "scale": options.scale})
        image = len(blob.shape) == 4
        order = None
        if image and blob.shape[1] == 3:
            order = ("BGR (--bgr: the source's RGB channels reversed in the first layer)" if options.bgr else
                     "the TensorFlow model's (RGB for keras.applications and most TensorFlow image models)")
        described.append(report.input_entry(
            tf_layer=name, blob=blob.name, shape=blob.shape, dtype="float32", channel_order=order,
            value_range=_value_range(inside),
            preprocessing_inside=inside,
            left_to_user=("none: the net scales its input itself" if inside else
                          "the TensorFlow model's own preprocessing (scale, mean), which is not part of "
                          "the model and so not of the net; the reference input was fed as it is")))
    return described


def _preprocessing_inside(model: Model, name: str) -> List[str]:
    """The rescale/normalize layers that follow the input directly, in order."""
    steps = []
    consumers = model.consumers(name)
    while len(consumers) == 1 and consumers[0].type in PREPROCESSING:
        steps.append(consumers[0].name)
        consumers = model.consumers(consumers[0].name)
    return steps


def _scalar(value):
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    return float(values[0]) if values.size == 1 else [float(v) for v in values]


def _describe_step(layer: Layer) -> Dict:
    if layer.type == "rescale":
        scale = layer.arrays["scale"][()] if "scale" in layer.arrays else layer.config.get("scale", 1.0)
        offset = layer.arrays["offset"][()] if "offset" in layer.arrays else layer.config.get("offset", 0.0)
        return {"layer": layer.name, "operation": "x * scale + offset", "scale": _scalar(scale),
                "offset": _scalar(offset)}
    return {"layer": layer.name, "operation": "(x - mean) / sqrt(variance)",
            "mean": _scalar(layer.arrays["mean"][()]), "variance": _scalar(layer.arrays["variance"][()])}


# Keras' pixel rescalings: Rescaling(1/255) and Rescaling(1/127.5, offset=-1) both take 0..255.
PIXEL_SCALES = (1.0 / 255.0, 1.0 / 127.5)


def _value_range(inside: List[Dict]):
    """[0, 255] when the net's own first step is one of Keras' pixel rescalings; else None (not
    known from the model, or --mean/--scale, whose raw range is the user's)."""
    scale = inside[0].get("scale") if inside else None
    if isinstance(scale, float) and any(abs(scale - pixel) < 1e-6 for pixel in PIXEL_SCALES):
        return [0.0, 255.0]
    return None


def outputs(model: Model, targets: Dict[str, Dict]) -> List[Dict]:
    described = []
    for name, tf_name in zip(model.outputs, model.output_names()):
        layer = model.layer(name)
        squashed = layer.type == "activation" and layer.config.get("function") in SQUASHING
        logits = layer.inputs[0] if squashed else None
        function = layer.config.get("function") if squashed else None
        described.append(report.output_entry(
            tf_name=tf_name, tf_layer=name, blob=targets[name]["blob"], shape=targets[name]["shape"],
            holds="probabilities (%s)" % function if squashed else "values (no softmax or sigmoid at the end)",
            logits_blob=targets[logits]["blob"] if logits in targets else None))
    return described


def layer_table(model: Model, net: NetSpec, blobs: Dict[str, Blob], handwritten: bool) -> List[Dict]:
    """Per TensorFlow layer, in model order: the Caffe layers emitted for it and their types,
    the blob holding its output and that blob's shape (a hand-written prototxt: the layer its
    caffe_name names, types not known here)."""
    emitted: Dict[str, List] = {}
    for caffe_layer in net.layers:
        emitted.setdefault(caffe_layer.source, []).append(caffe_layer)
    if handwritten:
        return [report.layer_row(tf_layer=layer.name, tf_type=layer.type, tf_shape=layer.output_shape,
                                 caffe_layers=[layer.caffe_name], caffe_types=[], blob=None, blob_shape=None)
                for layer in model.layers]
    return [report.layer_row(
        tf_layer=layer.name, tf_type=layer.type, tf_shape=layer.output_shape,
        caffe_layers=[caffe_layer.name for caffe_layer in emitted.get(layer.name, [])],
        caffe_types=[caffe_layer.type for caffe_layer in emitted.get(layer.name, [])],
        blob=blobs[layer.name].name if layer.name in blobs else None,
        blob_shape=blobs[layer.name].shape if layer.name in blobs else None)
        for layer in model.layers]
