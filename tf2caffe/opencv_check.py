"""Second, independent check of a converted model: OpenCV's own Caffe reader and runtime.

TensorFlow side (OpenCV 4.x, `cv2.dnn.readNetFromCaffe`). The blobs to compare come from the
import report's targets, so both runtimes compare exactly the same tensors.

Two runs. `deployed`: the net as a user runs it, default settings, asking only for the model's
outputs; OpenCV then fuses layers (an activation, BatchNorm/Scale or Eltwise into the
convolution before it, a convolution into the Concat after it), and that is what verification
passes or fails. `run`: every compared (and, per layer, every mapped) blob fetched, which turns
fusion off for those layers: the diagnosis, naming the first layer that diverges.

OpenCV fetches outputs by LAYER name (`forwardAndRetrieve` returns every top of a layer), so a
target names the Caffe layer that writes its blob last (in-place layers overwrite the blob in
Caffe; OpenCV keeps each layer's output apart). OpenCV 4.x renames a Convolution layer after its
top, so a name OpenCV does not know is looked up by the blob's name.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import numpy as np

from . import intermediate, report
from .caffe import verify
from .caffe.deploy import DeployOptions
from .errors import ConversionError


def load(prototxt: str, caffemodel: str):
    import cv2
    try:
        return cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    except cv2.error as error:
        raise ConversionError("%s: OpenCV cannot load the model: %s" % (prototxt, _last_line(error)))


def _last_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def opencv_layer_name(net, target: verify.Target, where: str) -> str:
    for name in (target.caffe_layer, target.blob.name):
        if net.getLayerId(name) >= 0:
            return name
    raise ConversionError("%s: OpenCV has no layer '%s' (writing blob '%s', the output of '%s')" % (
        where, target.caffe_layer, target.blob.name, target.tf_layer))


def run(net, inputs: Dict[str, np.ndarray], targets: Dict[str, verify.Target], where: str) -> Dict[str, np.ndarray]:
    """Forward `inputs` (blob -> Caffe-layout array) once; each target's output."""
    names = {tf_layer: opencv_layer_name(net, target, where) for tf_layer, target in targets.items()}
    layers = sorted(set(names.values()))
    outputs = dict(zip(layers, _forwarded(net, inputs, lambda: net.forwardAndRetrieve(layers), where)))
    return {tf_layer: _as_blob(target, outputs[names[tf_layer]][target.top_index])
            for tf_layer, target in targets.items()}


def _forwarded(net, inputs: Dict[str, np.ndarray], forward, where: str):
    """`forward()` after setting `inputs` (blob -> Caffe-layout array); OpenCV's errors as ours."""
    import cv2
    try:
        for blob, value in inputs.items():
            net.setInput(np.ascontiguousarray(value, dtype=np.float32), blob)
        return forward()
    except cv2.error as error:
        raise ConversionError("%s: OpenCV cannot run the model: %s" % (where, _last_line(error)))


def _as_blob(target: verify.Target, value) -> np.ndarray:
    value = np.asarray(value)
    if len(target.blob.shape) == 1 and value.ndim == 2 and value.shape[1] == 1:
        return value.reshape(-1)  # an OpenCV Mat has at least two dimensions
    return value


def deployed(model: intermediate.Model, inputs: Dict[str, str], outputs: Dict[str, verify.Target],
             prototxt: str, caffemodel: str,
             deployment: DeployOptions) -> Tuple[Dict[str, Dict[str, float]], List[List[str]]]:
    """The model's outputs (`outputs`: their targets) from a fresh net with OpenCV's default
    settings asked for them alone, fed as the net built with `deployment` takes its input:
    ({output: report.layer_error}, the groups of Caffe layers OpenCV fused)."""
    net = load(prototxt, caffemodel)
    where = "%s (OpenCV as deployed)" % prototxt

    def forward(feeds, targets):
        names = [opencv_layer_name(net, target, where) for target in targets.values()]
        values = _forwarded(net, feeds, lambda: net.forward(names), where)
        return {tf_layer: _as_blob(target, value) for (tf_layer, target), value in zip(targets.items(), values)}

    _, errors, _, _ = verify.measure(model, inputs, {}, outputs, forward, where, deployment)
    return errors, fused_groups(net.dump())


# OpenCV's dump (Graphviz text) draws a fused group as one record: "{name\nType...| name\nType...}".
FUSED_RECORD = re.compile(r'label="\{(.*?)\}" fillcolor')


def fused_groups(dump: str) -> List[List[str]]:
    """The groups of Caffe layers OpenCV fused, from `Net.dump()` after a forward pass."""
    return [[part.strip().split("\\n")[0] for part in record.split(" | ")]
            for record in FUSED_RECORD.findall(dump)]


def output_targets(model: intermediate.Model, targets: Dict[str, verify.Target]) -> Dict[str, verify.Target]:
    return {name: targets[name] for name in model.outputs}


def check_result(result: report.FileResult) -> Dict[str, Dict]:
    """One file of an import report measured in OpenCV, as deployed and layer by layer:
    `report.runtime_errors`."""
    model = intermediate.read(result.file)  # once for both runs: reading takes longer than them
    try:
        errors = verify.measure_again(result, model, _runner(result.prototxt, result.caffemodel),
                                      "%s (OpenCV)" % result.prototxt)
        errors["deployed"], errors["fused"] = deployed(
            model, result.inputs, output_targets(model, verify.targets_from_json(result.targets)),
            result.prototxt, result.caffemodel, DeployOptions.from_json(result.deploy_options))
    finally:
        model.file.close()
    return errors


def _runner(prototxt: str, caffemodel: str):
    net = load(prototxt, caffemodel)
    return lambda feeds, targets: run(net, feeds, targets, prototxt)
