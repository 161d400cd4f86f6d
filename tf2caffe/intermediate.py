"""Reads and writes the HDF5 intermediate: the contract between the export and import stages.

The format is specified in docs/intermediate-format.md. This module runs in both environments
(Python 3.11 / numpy 2 / h5py 3.14 on the TensorFlow side, Python 3.9 / numpy 1.19 / h5py 2.10
in Debian bullseye's Caffe), so it sticks to what all of them have.
"""
from __future__ import annotations

import json
import os
from typing import Callable, List, Optional
from urllib.parse import quote, unquote

import h5py
import numpy as np

from . import interrupts
from .atomic import replacing
from .errors import ConversionError, signal_name

FORMAT_NAME = "tf2caffe-intermediate"
FORMAT_VERSION = 2

# Activations recorded for verification: every model output, and the input of an output that is
# a squashing function (a softmax of random weights is ~1/classes and hides ordering bugs).
SQUASHING = ("softmax", "sigmoid")
ORDER_KEEPING = ("reshape", "flatten", "identity")


class IntermediateError(ConversionError):
    pass


class Layer:
    """One layer: a vocabulary type, its config, its inputs (layer names) and its arrays.

    `arrays` maps a role ("kernel", "bias", ...) to an array in TensorFlow's layout; when read
    from a file the arrays stay on disk until `array()` asks for one.
    """

    def __init__(self, name, type, inputs=(), config=None, output_shape=None, arrays=None,
                 tf_names=None, caffe_name=None):
        self.name = name
        self.type = type
        self.inputs = list(inputs)
        self.config = dict(config or {})
        self.output_shape = [int(d) for d in output_shape] if output_shape is not None else None
        self.arrays = arrays if arrays is not None else {}
        self.tf_names = dict(tf_names or {})
        self.caffe_name = caffe_name or name
        self.source = ""  # the file it was read from, for error messages

    def has(self, role) -> bool:
        return role in self.arrays

    def array(self, role) -> np.ndarray:
        if role not in self.arrays:
            raise IntermediateError("%slayer '%s': no '%s' array" % (_at(self.source), self.name, role))
        return _values(self.arrays[role], "%slayer '%s': array '%s' (%s)" % (
            _at(self.source), self.name, role, self.tf_names.get(role, role)))

    def __repr__(self):
        return "Layer(%r, %r, inputs=%r)" % (self.name, self.type, self.inputs)


class Model:
    """A whole model: ordered layers (inputs before their consumers) plus the reference data."""

    def __init__(self, name, layers, outputs, attrs=None, reference_inputs=None,
                 reference_activations=None, labels=None, reference_float64=None):
        self.name = name
        self.layers = list(layers)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.reference_inputs = dict(reference_inputs or {})
        self.reference_activations = reference_activations if reference_activations is not None else {}
        self.labels = labels
        # The same layers computed in float64 from the same weights and input, where the
        # exporter could: the truth that TensorFlow's float32 and Caffe's both round.
        self.reference_float64 = dict(reference_float64 or {})
        self.source = ""
        self._by_name = {layer.name: layer for layer in self.layers}

    @property
    def inputs(self) -> List[str]:
        return [layer.name for layer in self.layers if layer.type == "input"]

    def layer(self, name) -> Layer:
        return self._by_name[name]

    def consumers(self, name) -> List[Layer]:
        return [layer for layer in self.layers if name in layer.inputs]

    def compared_layers(self) -> List[str]:
        """Layers whose activations verification must compare (outputs and their logits)."""
        names = []
        for name in self.outputs:
            layer = self._by_name[name]
            # A reshape or identity after the softmax (tf-slim's ResNets) hides the logits too.
            while layer.type in ORDER_KEEPING and len(layer.inputs) == 1:
                layer = self._by_name[layer.inputs[0]]
            if layer.type == "activation" and layer.config["function"] in SQUASHING:
                names.append(layer.inputs[0])
            names.append(name)
        return list(dict.fromkeys(names))

    def output_names(self) -> List[str]:
        """The TensorFlow name of each output (a Keras output layer's name, a graph's output
        node), in `outputs`' order: the attribute `output_names`, else the layer names."""
        names = self.attrs.get("output_names")
        return list(json.loads(names)) if names else list(self.outputs)

    def activation(self, name) -> np.ndarray:
        return _values(self.reference_activations[name], "%sreference activation '%s'" % (_at(self.source), name))

    def truth(self, name) -> Optional[np.ndarray]:
        """The layer's float64 activation, or None where the export has none."""
        if name not in self.reference_float64:
            return None
        return _values(self.reference_float64[name], "%sfloat64 reference activation '%s'" % (
            _at(self.source), name), np.float64)

    def reference_input(self, name) -> np.ndarray:
        return _values(self.reference_inputs[name], "%sreference input '%s'" % (_at(self.source), name))

    def read_all(self) -> None:
        """Read every array and reference dataset, as converting and verifying will."""
        for name in self.inputs:
            self.reference_input(name)
        for name in self.reference_activations:
            self.activation(name)
        for name in self.reference_float64:
            self.truth(name)
        for layer in self.layers:
            for role in layer.arrays:
                layer.array(role)


def _at(source):
    return "%s: " % source if source else ""


def _values(data, what: str, dtype=np.float32) -> np.ndarray:
    """A dataset's (or in-memory array's) values as `dtype`: readable, floating point, finite."""
    try:
        value = np.asarray(data[()])
    except (OSError, RuntimeError, TypeError, ValueError) as error:
        raise IntermediateError("%s cannot be read (%s: %s)" % (what, type(error).__name__,
                                                                 str(error).split("\n")[0]))
    if value.dtype.kind != "f":
        raise IntermediateError("%s is not floating point (%s)" % (what, value.dtype))
    # A NaN would pass every comparison as "not over tolerance" or fail it meaninglessly.
    # A finite sum proves every element finite (NaN and Inf propagate) at a quarter of the cost
    # of isfinite's temporary; only an overflowing sum needs the element-wise look.
    if not np.isfinite(value.sum()) and not np.all(np.isfinite(value)):
        raise IntermediateError("%s contains NaN or Inf" % what)
    return value.astype(dtype, copy=False)


def _key(name):
    # Layer names may contain '/', HDF5's path separator.
    return quote(name, safe="")


def _json_attr(value):
    return json.dumps(value, sort_keys=True)


def write(path, model: Model) -> None:
    """Write `model` to `path` atomically (a temporary file in the same folder, then rename)."""
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:  # default libver: h5py 2.10 must read it
        attrs = dict(model.attrs)
        attrs.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, model_name=model.name,
                     input_layout="NHWC")
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["outputs"] = _json_attr(model.outputs)
        f.attrs["layer_order"] = _json_attr([layer.name for layer in model.layers])
        layers = f.create_group("layers")
        for layer in model.layers:
            group = layers.create_group(_key(layer.name))
            group.attrs["name"] = layer.name
            group.attrs["type"] = layer.type
            group.attrs["inputs"] = _json_attr(layer.inputs)
            group.attrs["config"] = _json_attr(layer.config)
            group.attrs["output_shape"] = _json_attr(layer.output_shape)
            group.attrs["caffe_name"] = layer.caffe_name
            for role, value in layer.arrays.items():
                data = group.create_dataset(role, data=np.asarray(value, dtype=np.float32))
                data.attrs["tf_name"] = layer.tf_names.get(role, role)
        reference = f.create_group("reference")
        inputs = reference.create_group("inputs")
        for name, value in model.reference_inputs.items():
            inputs.create_dataset(_key(name), data=np.asarray(value, dtype=np.float32))
        activations = reference.create_group("activations")
        for name, value in model.reference_activations.items():
            activations.create_dataset(_key(name), data=np.asarray(value, dtype=np.float32))
        if model.reference_float64:
            truths = reference.create_group("float64")
            for name, value in model.reference_float64.items():
                truths.create_dataset(_key(name), data=np.asarray(value, dtype=np.float64))
        if model.labels is not None:
            reference.create_dataset("labels", data=np.asarray(model.labels, dtype=np.int64))


def _load_json(owner, key, where):
    if key not in owner.attrs:
        raise IntermediateError("%s: missing attribute '%s'" % (where, key))
    try:
        return json.loads(_text(owner.attrs[key]))
    except ValueError:
        raise IntermediateError("%s: attribute '%s' is not valid JSON" % (where, key))


def _attr_value(value):
    if isinstance(value, (bytes, str)):
        return _text(value)
    return value.item() if hasattr(value, "item") else value


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_file(path) -> h5py.File:
    """Open an intermediate file for reading, with one-line errors for the usual failures."""
    if not os.path.exists(path):
        raise IntermediateError("%s: no such file" % path)
    if os.path.isdir(path):
        raise IntermediateError("%s: is a directory, not an HDF5 file" % path)
    if not os.access(path, os.R_OK):
        raise IntermediateError("%s: not readable (permission denied)" % path)
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise IntermediateError("%s: not a readable HDF5 file (truncated or corrupt?): %s" % (
            path, str(error).split("(")[0].strip()))


def check_readable(path, check_model: Callable[[Model], None] = lambda model: None) -> None:
    """Read all of `path` once in a forked child process, as converting it will: corrupt metadata
    can crash HDF5's C library (a segmentation fault, no exception), and that crash then becomes
    an IntermediateError here instead of killing the caller. `check_model` runs on the model
    before its arrays are read. The ConversionErrors the child meets are raised here with their
    message; anything else is left for the caller's own read to meet."""
    status, message = interrupts.in_forked_child(lambda write_end: _check_in_child(path, check_model, write_end))
    if status < 0:
        raise IntermediateError("%s: corrupt HDF5 file: reading it crashed the HDF5 library (%s)" % (
            path, signal_name(-status)))
    if status == 3:
        raise IntermediateError(message.decode("utf-8", "replace"))


def _check_in_child(path, check_model: Callable[[Model], None], write_end: int) -> int:
    """check_readable's forked child: 0 (read), 3 (a ConversionError, its message written to
    `write_end`); anything else raised is left for the caller's own read to meet."""
    try:
        model = read(path)
        try:
            check_model(model)
            model.read_all()
        finally:
            model.file.close()
    except ConversionError as error:
        os.write(write_end, str(error).encode("utf-8", "replace"))
        return 3
    return 0


def read(path) -> Model:
    """Read and validate an intermediate file. Arrays stay on disk until asked for, so the
    returned model keeps the file open for its lifetime."""
    f = open_file(path)
    try:
        return _read(f, path)
    except IntermediateError:
        f.close()
        raise
    except (KeyError, OSError, RuntimeError, TypeError, ValueError) as error:
        f.close()
        raise IntermediateError("%s: unreadable intermediate (%s: %s)" % (
            path, type(error).__name__, str(error).split("\n")[0]))


def _read(f, path) -> Model:
    if _text(f.attrs.get("format", "")) != FORMAT_NAME:
        raise IntermediateError("%s: not a tf2caffe intermediate (no format attribute '%s')" % (
            path, FORMAT_NAME))
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise IntermediateError("%s: format version %d is newer than this tf2caffe reads (%d); "
                                "upgrade tf2caffe" % (path, version, FORMAT_VERSION))
    if version < 1:
        raise IntermediateError("%s: invalid format version %d" % (path, version))
    for group in ("layers", "reference"):
        if group not in f:
            raise IntermediateError("%s: missing group '/%s'" % (path, group))
    from .caffe.handlers import vocabulary  # the handlers declare the types (import cycle)
    types = vocabulary()
    layers = []
    seen = set()
    for name in _load_json(f, "layer_order", path):
        if _key(name) not in f["layers"]:
            raise IntermediateError("%s: layer '%s' is listed but has no group /layers/%s" % (
                path, name, _key(name)))
        layer = _read_layer(f["layers"][_key(name)], name, path, types)
        for source in layer.inputs:
            if source not in seen:
                raise IntermediateError("%s: layer '%s' takes input '%s', which is not an earlier "
                                        "layer" % (path, name, source))
        seen.add(name)
        layers.append(layer)
    outputs = _load_json(f, "outputs", path)
    for name in outputs:
        if name not in seen:
            raise IntermediateError("%s: output '%s' is not a layer" % (path, name))
    reference = f["reference"]
    reference_inputs = {}
    for layer in layers:
        if layer.type != "input":
            continue
        key = "inputs/" + _key(layer.name)
        if key not in reference:
            raise IntermediateError("%s: no reference input for input layer '%s'" % (path, layer.name))
        data = _float_dataset(reference, key, "%s: reference input '%s'" % (path, layer.name))
        if list(data.shape)[1:] != list(layer.output_shape)[1:]:
            raise IntermediateError("%s: reference input '%s' has shape %s, the layer expects %s" % (
                path, layer.name, list(data.shape), layer.output_shape))
        reference_inputs[layer.name] = data
    activations = {}
    if "activations" in reference:
        for key in reference["activations"]:
            name = unquote(key)
            if name not in seen:
                raise IntermediateError("%s: reference activation for unknown layer '%s'" % (path, name))
            activations[name] = _float_dataset(reference["activations"], key, "%s: reference activation '%s'" % (
                path, name))
    truths = {}
    if "float64" in reference:
        for key in reference["float64"]:
            name = unquote(key)
            what = "%s: float64 reference activation '%s'" % (path, name)
            if name not in activations:
                raise IntermediateError("%s has no float32 reference activation beside it" % what)
            truths[name] = _float_dataset(reference["float64"], key, what)
            if truths[name].shape != activations[name].shape:
                raise IntermediateError("%s has shape %s, the float32 one %s" % (
                    what, list(truths[name].shape), list(activations[name].shape)))
    attrs = {key: _attr_value(value) for key, value in f.attrs.items()
             if key not in ("outputs", "layer_order")}
    labels = None
    if "labels" in reference:
        labels = reference["labels"]
        if not isinstance(labels, h5py.Dataset) or labels.dtype.kind not in "iu":
            raise IntermediateError("%s: reference labels are not an integer dataset" % path)
        labels = labels[()]
    model = Model(_text(f.attrs.get("model_name", os.path.basename(path))), layers, outputs, attrs,
                  reference_inputs, activations, labels, truths)
    model.source = path
    model.file = f
    for name in model.compared_layers():
        if name not in activations:
            raise IntermediateError("%s: no reference activation for compared layer '%s'" % (path, name))
    return model


def _float_dataset(group, key, what) -> h5py.Dataset:
    data = group[key]
    if not isinstance(data, h5py.Dataset) or data.dtype.kind != "f":
        raise IntermediateError("%s is not a floating-point dataset" % what)
    return data


def _read_layer(group, name, path, types) -> Layer:
    """`types`: the vocabulary (handlers.vocabulary())."""
    where = "%s: layer '%s'" % (path, name)
    kind = _text(group.attrs.get("type", ""))
    if kind not in types:
        raise IntermediateError("%s: unknown layer type '%s'" % (where, kind))
    required_config, required_arrays, optional_arrays = types[kind]
    config = _load_json(group, "config", where)
    for key in required_config:
        if key not in config:
            raise IntermediateError("%s: config lacks '%s'" % (where, key))
    arrays, tf_names = {}, {}
    for role in group:
        if role not in required_arrays + optional_arrays:
            raise IntermediateError("%s: unexpected array '%s' for type '%s'" % (where, role, kind))
        data = group[role]
        if not isinstance(data, h5py.Dataset) or data.dtype.kind != "f":
            raise IntermediateError("%s: array '%s' is not floating point" % (where, role))
        arrays[role] = data
        tf_names[role] = _text(data.attrs.get("tf_name", role))
    for role in required_arrays:
        if role not in arrays:
            raise IntermediateError("%s: missing array '%s'" % (where, role))
    layer = Layer(name, kind, _load_json(group, "inputs", where), config,
                  _load_json(group, "output_shape", where), arrays, tf_names,
                  _text(group.attrs.get("caffe_name", name)))
    layer.source = path
    return layer
