"""pycaffe: load a prototxt, move the weights into `net.params`, save, and run the reference.

Every shape is checked in Python before it reaches Caffe, whose CHECK failures abort the process.
"""
from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")  # before caffe loads glog: no INFO/WARNING chatter

from typing import Callable, Dict, Iterable, List, Sequence  # noqa: E402

import caffe  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConversionError  # noqa: E402
from .caffemodel import MAX_CAFFEMODEL_BYTES  # noqa: E402
from .netspec import CaffeLayer  # noqa: E402
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


def load(prototxt: str) -> "caffe.Net":
    caffe.set_mode_cpu()
    return caffe.Net(prototxt, caffe.TEST)


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


def save(net: "caffe.Net", path: str, h5_path: str) -> None:
    # Caffe writes a .caffemodel of any size but reads none over its protobuf limit.
    size = sum(blob.data.nbytes for params in net.params.values() for blob in params)
    if size > MAX_CAFFEMODEL_BYTES:
        raise ConversionError("%s: the weights take %.2f GiB; Caffe cannot read a .caffemodel over "
                              "2 GiB" % (h5_path, size / 2.0 ** 30))
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
