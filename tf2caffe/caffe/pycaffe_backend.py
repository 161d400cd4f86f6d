"""pycaffe: load a prototxt, move the weights into `net.params`, save, and run the reference.

Every shape is checked in Python before it reaches Caffe, whose CHECK failures abort the process.
"""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")  # before caffe loads glog: no INFO/WARNING chatter

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple  # noqa: E402

import caffe  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConversionError  # noqa: E402
from . import handwritten, verify  # noqa: E402
from ..intermediate import Model  # noqa: E402
from .backends import NetDescription, Progress, generated_inputs  # noqa: E402
from .caffemodel import MAX_CAFFEMODEL_BYTES  # noqa: E402
from .deploy import DeployOptions  # noqa: E402
from .emit import Blob, nchw  # noqa: E402
from .netspec import CaffeLayer, NetSpec  # noqa: E402
from .verify import Target  # noqa: E402

# What each weight blob is, for error messages.
BLOB_ROLES = {
    "Convolution": ("weight", "bias"),
    "Deconvolution": ("weight", "bias"),
    "InnerProduct": ("weight", "bias"),
    "BatchNorm": ("mean", "variance", "scale factor"),
    "Scale": ("scale", "bias"),
    "Bias": ("bias",),
    "PReLU": ("slope",),
}


def known_layer_types() -> List[str]:
    return list(caffe.layer_type_list())


def load(prototxt: str, caffemodel: Optional[str] = None) -> "caffe.Net":
    """The net of `prototxt` (in the TEST phase), with the weights of `caffemodel` if given."""
    caffe.set_mode_cpu()
    if caffemodel is None:
        return caffe.Net(prototxt, caffe.TEST)
    return caffe.Net(prototxt, caffe.TEST, weights=caffemodel)


def blob_role(layer_type: str, index: int) -> str:
    roles = BLOB_ROLES.get(layer_type, ())
    return roles[index] if index < len(roles) else "blob %d" % index


def _shape(shape: Sequence[int]) -> str:
    return "(%s)" % ", ".join(str(int(d)) for d in shape)


def assign_weights(net: "caffe.Net", layers: Sequence[CaffeLayer], h5_path: str, prototxt: str,
                   each: Callable[[Iterable], Iterable] = iter) -> None:
    """Copy every weighted layer's blobs into `net.params`, checking names, counts and shapes;
    then make sure no parameter of the net was left unfilled. `each` wraps the loop (progress)."""
    where = os.path.basename(prototxt)
    for layer in each(layers):
        if layer.name not in net.params:
            raise ConversionError("%s: layer '%s' has weights in %s but no parameters in %s" % (
                h5_path, layer.name, os.path.basename(h5_path), where))
        params = net.params[layer.name]
        if len(params) != len(layer.blobs):
            raise ConversionError("%s: layer '%s': %d weight blob(s) in the HDF5 file vs %d in %s" % (
                h5_path, layer.name, len(layer.blobs), len(params), where))
        for index, blob in enumerate(layer.blobs):
            value = np.asarray(blob(), dtype=np.float32)
            expected = params[index].data.shape
            if tuple(value.shape) != tuple(expected):
                raise ConversionError("%s: %s: %s shape %s in the HDF5 file vs %s in %s" % (
                    h5_path, layer.name, blob_role(layer.type, index), _shape(value.shape),
                    _shape(expected), where))
            params[index].data[...] = value
    filled = {layer.name for layer in layers}
    unfilled = [name for name in net.params if name not in filled]
    if unfilled:
        raise ConversionError("%s: layer(s) %s have parameters that no layer of %s fills" % (
            prototxt, ", ".join("'%s'" % name for name in unfilled), h5_path))


# Besides the weights, a .caffemodel holds every layer's parameters: a few bytes each.
SAVE_HEADROOM_BYTES = 2 ** 16


def save(net: "caffe.Net", path: str, h5_path: str, shown_path: str = "") -> None:
    """net.save(path); `shown_path` is what messages call the file (path may be a scratch file)."""
    # Caffe writes a .caffemodel of any size but reads none over its protobuf limit.
    size = sum(blob.data.nbytes for params in net.params.values() for blob in params)
    if size > MAX_CAFFEMODEL_BYTES:
        raise ConversionError("%s: the weights take %.2f GiB; Caffe cannot read a .caffemodel over "
                              "2 GiB" % (h5_path, size / 2.0 ** 30))
    # Caffe aborts the process (a CHECK failure) when it cannot write the whole file: ask first.
    disk = os.statvfs(os.path.dirname(os.path.abspath(path)))
    free = disk.f_bavail * disk.f_frsize
    if free < size + SAVE_HEADROOM_BYTES:
        raise ConversionError("%s: cannot write: No space left on device (about %d bytes needed, %d free)" % (
            shown_path or path, size + SAVE_HEADROOM_BYTES, free))
    net.save(path)


def forward(net: "caffe.Net", inputs: Dict[str, np.ndarray]) -> None:
    """Run the net on `inputs` (blob name -> array in Caffe's layout), resizing the batch."""
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()


def fetch(net: "caffe.Net", targets: Dict[str, Target]) -> Dict[str, np.ndarray]:
    return {name: np.array(net.blobs[target.blob.name].data) for name, target in targets.items()}


class Pycaffe:
    """The import stage's pycaffe backend (see backends.py): Caffe's own schema parses and checks
    the prototxt (generated or hand-written), pycaffe holds and saves the weights, and Caffe's
    forward pass is what verification measures."""

    name = "pycaffe"
    verifier = "pycaffe"

    def describe(self, *, model: Model, net_spec: NetSpec, blobs: Dict[str, Blob], h5_path: str,
                 prototxt: Optional[str], prototxt_out: str) -> NetDescription:
        if prototxt:
            net_param = handwritten.read(prototxt)
            inputs = handwritten.match_inputs(
                net_param, {name: model.layer(name).caffe_name for name in model.inputs}, prototxt)
            handwritten.set_input_shapes(
                net_param, {inputs[name]: [1] + nchw(model.layer(name).output_shape)[1:]
                            for name in model.inputs})
            handwritten.check_against_generated(net_param, net_spec, h5_path, prototxt)
            text, targets_in = handwritten.to_text(net_param), verify.handwritten_targets
        else:
            text = net_spec.to_prototxt()
            net_param = handwritten.parse(text, prototxt_out)
            inputs, targets_in = generated_inputs(model, blobs), verify.generated_targets
        handwritten.check(net_param, prototxt or prototxt_out, known_layer_types())
        return NetDescription(text, handwritten.layer_tops(net_param),
                              [layer.type for layer in handwritten.test_layers(net_param)], inputs,
                              targets_in)

    def write(self, *, net_spec: NetSpec, prototxt_file: str, caffemodel_file: str, h5_path: str,
              prototxt_shown: str, caffemodel_shown: str, progress: Progress) -> "caffe.Net":
        progress.stage("loading the net in Caffe")
        net = load(prototxt_file)
        progress.stage("assigning weights")
        assign_weights(net, net_spec.weighted_layers(), h5_path, prototxt_shown, progress.each)
        progress.stage("saving")
        save(net, caffemodel_file, h5_path, caffemodel_shown)
        return net

    def run(self, *, written: "caffe.Net", prototxt: str, caffemodel: str, feeds: Dict[str, np.ndarray],
            targets: Dict[str, Target]) -> Dict[str, np.ndarray]:
        # The net `write` loaded and saved the weights from: the very weights in the .caffemodel.
        forward(written, feeds)
        return fetch(written, targets)

    def deployed(self, *, model, inputs: Dict[str, str], outputs: Dict[str, Target], prototxt: str,
                 caffemodel: str, deployment: DeployOptions) -> Tuple[Dict[str, Dict[str, float]], List[List[str]]]:
        # Caffe fuses no layers: its run with every blob fetched is the run a user makes.
        return {}, []
