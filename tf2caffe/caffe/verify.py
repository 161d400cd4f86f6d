"""Numerical verification shared by the pycaffe and OpenCV checks.

Which Caffe blob stands for which TensorFlow layer (`Target`), and the error measures. Runs on
numpy 1.19 (Caffe side) and numpy 2 (TensorFlow side), with no Caffe or OpenCV import.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import report
from ..errors import ConversionError
from ..intermediate import Model
from ..measure import LAYER_TOLERANCE, detection_error, max_abs_error, relative_error, within
from .deploy import DeployOptions
from .emit import Blob, nchw
from .layout import FlatOrder


def reference_feeds(model: Model, inputs: Dict[str, str],
                    deployment: Optional[DeployOptions] = None) -> Dict[str, np.ndarray]:
    """Caffe input blob -> the reference input in Caffe's layout (`inputs`: TF input -> blob), as
    the net built with `deployment` (default: none) takes it (raw values, BGR)."""
    deployment = deployment or DeployOptions()
    feeds = {}
    for name, blob in inputs.items():
        value = model.reference_input(name)
        feeds[blob] = deployment.raw_input(Blob(blob, nchw(value.shape)).to_caffe(value))
    return feeds


# Layer types whose output is a set of detections (rows in no fixed order, as many as found):
# compared with measure.detection_error, where an error is a difference in scores and in box
# coordinates (fractions of the image size), not relative to the largest value.
DETECTION_TYPES = frozenset(["ssd_detection_output"])

# A compared tensor whose spread is below this fraction of its magnitude cannot reveal a
# wrong conversion (e.g. a saturated softmax, a dead ReLU).
DEGENERATE_SPREAD = 1e-6


class Target:
    """Where a TensorFlow layer's output lives in the Caffe net: blob `blob.name`, written last by
    Caffe layer `caffe_layer` as its top number `top_index` (OpenCV fetches outputs by layer)."""

    def __init__(self, tf_layer: str, blob: Blob, caffe_layer: str, top_index: int):
        self.tf_layer = tf_layer
        self.blob = blob
        self.caffe_layer = caffe_layer
        self.top_index = top_index

    def to_json(self) -> Dict:
        return {"blob": self.blob.name, "shape": self.blob.shape,
                "flattened_from": [list(part) for part in self.blob.flattened_from] if self.blob.flattened_from else None,
                "axes": list(self.blob.axes) if self.blob.axes else None,
                "caffe_layer": self.caffe_layer, "top_index": self.top_index}

    @classmethod
    def from_json(cls, tf_layer: str, data: Dict) -> "Target":
        order = data["flattened_from"]
        return cls(tf_layer, Blob(data["blob"], data["shape"], FlatOrder(*map(tuple, order)) if order else None,
                                  data["axes"]),
                   data["caffe_layer"], data["top_index"])


def last_writers(caffe_layers: Sequence[Tuple[str, Sequence[str]]]) -> Dict[str, Tuple[str, int]]:
    """blob -> (the last Caffe layer writing it, its top index): after a forward pass a blob holds
    that layer's output, since in-place layers overwrite it."""
    writers = {}
    for name, tops in caffe_layers:
        for index, top in enumerate(tops):
            writers[top] = (name, index)
    return writers


def generated_targets(model: Model, blobs: Dict[str, Blob],
                      caffe_layers: Sequence[Tuple[str, Sequence[str]]]) -> Dict[str, Target]:
    """Targets in a generated net: a TF layer maps to the blob its handler produced. Several TF
    layers may share a blob: an identity layer (same value: all comparable), or a later layer
    that overwrites it in place (then only the last one's value survives the forward pass)."""
    writers = last_writers(caffe_layers)
    write_count = Counter(top for _, tops in caffe_layers for top in tops)
    last_owner = {}
    for layer in model.layers:
        if layer.name in blobs and layer.type != "input":
            last_owner[blobs[layer.name].name] = layer.name
    # A layer that emits nothing after an input (a Permute folded into a later Dense) holds the
    # input blob, which OpenCV cannot fetch (its inputs are no layers) and which is the input anyway.
    input_blobs = {blobs[name].name for name in model.inputs if name in blobs}
    targets = {}
    for layer in model.layers:
        blob = blobs.get(layer.name)
        if layer.type == "input" or blob is None or blob.name not in writers or blob.name in input_blobs:
            continue
        if write_count[blob.name] == 1 or last_owner[blob.name] == layer.name:
            caffe_layer, index = writers[blob.name]
            targets[layer.name] = Target(layer.name, blob, caffe_layer, index)
    return targets


def handwritten_targets(model: Model, blobs: Dict[str, Blob],
                        caffe_layers: Sequence[Tuple[str, Sequence[str]]]) -> Dict[str, Target]:
    """Targets in a hand-written net: a TF layer maps through its caffe_name to that prototxt
    layer's first top, when that layer is the last to write it."""
    writers = last_writers(caffe_layers)
    tops = {name: list(layer_tops) for name, layer_tops in caffe_layers}
    targets = {}
    for layer in model.layers:
        if layer.type == "input" or layer.name not in blobs or not tops.get(layer.caffe_name):
            continue
        top = tops[layer.caffe_name][0]
        if writers[top] != (layer.caffe_name, 0):
            continue
        generated = blobs[layer.name]
        targets[layer.name] = Target(layer.name, Blob(top, generated.shape, generated.flattened_from, generated.axes),
                                     layer.caffe_name, 0)
    return targets


def compared_targets(model: Model, targets: Dict[str, Target]) -> Dict[str, Target]:
    """The targets of `model.compared_layers()`; every one must exist."""
    chosen = {}
    for name in model.compared_layers():
        if name not in targets:
            raise ConversionError(
                "%s: cannot verify layer '%s' (Caffe name '%s'): no Caffe layer holds its output "
                "after the forward pass" % (model.source, name, model.layer(name).caffe_name))
        chosen[name] = targets[name]
    return chosen


def in_caffe_layout(target: Target, tf_value: np.ndarray, where: str) -> np.ndarray:
    """TensorFlow's activation rearranged into the target blob's layout."""
    try:
        return target.blob.to_caffe(tf_value)
    except ValueError:
        raise ConversionError("%s: layer '%s': TensorFlow's output of shape %s does not fit Caffe "
                              "blob '%s' of shape %s" % (where, target.tf_layer, list(np.shape(tf_value)),
                                                          target.blob.name, target.blob.shape))


def check_shapes_match(target: Target, caffe_value: np.ndarray, expected: np.ndarray, where: str) -> None:
    if tuple(caffe_value.shape) != tuple(expected.shape):
        raise ConversionError("%s: layer '%s': Caffe blob '%s' has shape %s, TensorFlow's output is "
                              "%s in Caffe's layout" % (where, target.tf_layer, target.blob.name,
                                                        list(caffe_value.shape), list(expected.shape)))


def mapped_error(target: Target, caffe_value: np.ndarray, tf_value: np.ndarray) -> float:
    """Relative error of one mapped layer; infinite when the shapes cannot even be matched."""
    try:
        expected = target.blob.to_caffe(tf_value)
    except ValueError:
        return float("inf")
    if tuple(expected.shape) != tuple(caffe_value.shape):
        return float("inf")
    return relative_error(caffe_value, expected)


def check_not_degenerate(name: str, tf: np.ndarray, where: str) -> None:
    scale = float(np.max(np.abs(tf))) if tf.size else 0.0
    spread = float(np.max(tf) - np.min(tf)) if tf.size else 0.0
    if spread <= DEGENERATE_SPREAD * scale:
        raise ConversionError("%s: the reference output of layer '%s' is degenerate (max - min = %.3g, "
                              "max |x| = %.3g): it cannot tell a correct conversion from a wrong one; "
                              "verify on inputs that reach it (--reference-input X.npy or X.npz, real data) or "
                              "write it unverified (--no-verify)" % (where, name, spread, scale))


def measure(model: Model, inputs: Dict[str, str], mapped: Dict[str, Target], compared: Dict[str, Target],
            run: Callable, where: str, deployment: Optional[DeployOptions] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Dict[str, float]], Dict[str, float]]:
    """Run the reference input once through a runtime (`run(feeds, targets)` -> each target's
    output) and measure it against TensorFlow's: (what was fetched, {compared layer:
    report.layer_error}, {mapped layer: relative error}). A compared layer's shape must match;
    a mapped layer's mismatch counts as infinite error. `inputs`: TF input layer -> Caffe blob;
    `deployment`: the options the net was built with (what it takes as input)."""
    targets = dict(mapped, **compared)
    fetched = run(reference_feeds(model, inputs, deployment), targets)
    detections = {name for name in targets if model.layer(name).type in DETECTION_TYPES}
    expected = {name: in_caffe_layout(target, model.activation(name), where)
                for name, target in compared.items() if name not in detections}
    for name, value in expected.items():
        check_shapes_match(compared[name], fetched[name], value, where)
    per_layer = {name: detection_error(fetched[name], model.activation(name)) if name in detections else
                 mapped_error(target, fetched[name], model.activation(name)) for name, target in mapped.items()}
    errors = compare(fetched, expected)
    for name in detections & set(compared):
        error = detection_error(fetched[name], model.activation(name))
        errors[name] = report.layer_error(error, error)
    return fetched, errors, per_layer, float64_errors(targets, fetched, model)


def measure_again(result: report.FileResult, model: Model, run: Callable, where: str) -> Dict[str, Dict]:
    """The compared and mapped layers of a converted file (its import report entry; `model`, its
    intermediate file read) measured in another runtime: `report.runtime_errors`. `run` as for
    `measure`."""
    targets = targets_from_json(result.targets)
    _, compared, per_layer, float64 = measure(model, result.inputs, {name: targets[name] for name in result.per_layer},
                                     {name: targets[name] for name in result.compared}, run, where,
                                     DeployOptions.from_json(result.deploy_options))
    return report.runtime_errors(compared, per_layer, float64)


def compare(fetched: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """{layer: report.layer_error} for every layer in `expected` (Caffe layout on both sides)."""
    return {name: report.layer_error(max_abs_error(fetched[name], value), relative_error(fetched[name], value))
            for name, value in expected.items()}


def float64_errors(targets: Dict[str, Target], fetched: Dict[str, np.ndarray],
                   model: Model) -> Dict[str, Dict[str, float]]:
    """{layer: {"caffe": ..., "tensorflow": ...}}: Caffe's and TensorFlow float32's relative errors
    against the float64 truth, for the layers the export computed one for."""
    errors = {}
    for name, target in targets.items():
        truth = model.truth(name)
        if truth is not None:
            errors[name] = {"caffe": mapped_error(target, fetched[name], truth),
                            "tensorflow": relative_error(model.activation(name), truth)}
    return errors


def first_over(errors: Dict[str, float], order: Sequence[str], limit: float = LAYER_TOLERANCE,
               float64: Optional[Dict[str, Dict[str, float]]] = None) -> Optional[str]:
    """The first layer in model order over `limit` (where divergence starts), judged against the
    float64 truth where there is one (measure.within)."""
    float64 = float64 or {}
    for name in order:
        if name in errors and not within(errors[name], limit, float64.get(name)):
            return name
    return None


def top1(values: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(values).reshape(len(values), -1), axis=1)


def accuracy(caffe_output: np.ndarray, tf_output: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Top-1 accuracy of both frameworks on the reference labels, and how often they agree."""
    labels = np.asarray(labels).reshape(-1)
    caffe_top, tf_top = top1(caffe_output), top1(tf_output)
    return report.accuracy(count=int(labels.size), caffe=float(np.mean(caffe_top == labels)),
                           tensorflow=float(np.mean(tf_top == labels)),
                           agreement=float(np.mean(caffe_top == tf_top)))


def targets_to_json(targets: Dict[str, Target]) -> Dict[str, Dict]:
    return {name: target.to_json() for name, target in targets.items()}


def targets_from_json(data: Dict[str, Dict]) -> Dict[str, Target]:
    return {name: Target.from_json(name, value) for name, value in data.items()}


def names_in_order(model: Model) -> List[str]:
    return [layer.name for layer in model.layers]
