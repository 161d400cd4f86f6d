"""Prototxt files as Caffe reads them: parse, check before Caffe sees them, patch input shapes,
and hold a hand-written net up against the generated one.

Caffe aborts the whole process on a prototxt it dislikes, so everything it would refuse that can
be found in Python is found here first, as a one-line error naming the file and layer.
Caffe side only (uses Caffe's own protobuf schema, `caffe.proto.caffe_pb2`).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from caffe.proto import caffe_pb2
from google.protobuf import text_format

from ..errors import ConversionError
from . import upgrade
from .netspec import NetSpec

TEST = caffe_pb2.TEST


def parse(text: str, path: str) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as error:
        raise ConversionError("%s: not a valid Caffe prototxt: %s" % (path, error))
    if net.layers:  # the legacy V1 format: upgraded as Caffe does when it loads the file
        return upgrade.upgrade_v1(net, path)
    return net


def read(path: str) -> caffe_pb2.NetParameter:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ConversionError("%s: no such prototxt file" % path)
    except OSError as error:
        raise ConversionError("%s: cannot read the prototxt: %s" % (path, error.strerror or error))
    except UnicodeDecodeError as error:
        raise ConversionError("%s: cannot read the prototxt: %s" % (path, error))
    return parse(text, path)


def to_text(net: caffe_pb2.NetParameter) -> str:
    return text_format.MessageToString(net)


def in_test_phase(layer) -> bool:
    """Caffe's phase filter (NetState rules restricted to the phase): TRAIN-only layers vanish."""
    if any(rule.HasField("phase") and rule.phase == TEST for rule in layer.exclude):
        return False
    if not layer.include:
        return True
    return any(not rule.HasField("phase") or rule.phase == TEST for rule in layer.include)


def test_layers(net: caffe_pb2.NetParameter) -> List:
    return [layer for layer in net.layer if in_test_phase(layer)]


def layer_tops(net: caffe_pb2.NetParameter) -> List[Tuple[str, List[str]]]:
    return [(layer.name, list(layer.top)) for layer in test_layers(net)]


def check(net: caffe_pb2.NetParameter, path: str, known_types: Sequence[str]) -> None:
    """Refuse what Caffe would abort on: unknown layer types, a bottom nothing produced before,
    repeated layer names."""
    known = set(known_types)
    produced = set(net.input)
    seen = set()
    for layer in test_layers(net):
        if layer.name in seen:
            raise ConversionError("%s: layer name '%s' is used twice" % (path, layer.name))
        seen.add(layer.name)
        if layer.type not in known:
            raise ConversionError("%s: layer '%s' has type '%s', which this Caffe does not know" % (
                path, layer.name, layer.type))
        for bottom in layer.bottom:
            if bottom not in produced:
                raise ConversionError("%s: layer '%s' reads blob '%s', which no earlier layer produces" % (
                    path, layer.name, bottom))
        produced.update(layer.top)


def input_blobs(net: caffe_pb2.NetParameter) -> List[Tuple[str, str]]:
    """(layer name, blob) of every network input: Input layers and the legacy `input:` fields."""
    found = [(name, name) for name in net.input]
    found += [(layer.name, top) for layer in test_layers(net) if layer.type == "Input" for top in layer.top]
    return found


def match_inputs(net: caffe_pb2.NetParameter, names: Dict[str, str], path: str) -> Dict[str, str]:
    """TF input layer -> prototxt input blob. `names` maps each TF input layer to its caffe_name;
    it matches an Input layer or blob of that name, or the only input when there is one."""
    inputs = input_blobs(net)
    if not inputs:
        raise ConversionError("%s: the net has no Input layer or 'input:' field" % path)
    matched = {}
    for tf_name, caffe_name in names.items():
        hits = [blob for layer, blob in inputs if caffe_name in (layer, blob)]
        if not hits and len(inputs) == 1 and len(names) == 1:
            hits = [inputs[0][1]]
        if not hits:
            raise ConversionError("%s: no input named '%s' for the model's input layer '%s' (inputs: %s)" % (
                path, caffe_name, tf_name, ", ".join(blob for _, blob in inputs)))
        matched[tf_name] = hits[0]
    return matched


def set_input_shapes(net: caffe_pb2.NetParameter, shapes: Dict[str, Sequence[int]]) -> None:
    """Write each input blob's shape (Caffe layout) into the Input layer or the legacy fields."""
    for layer in test_layers(net):
        if layer.type != "Input":
            continue
        tops = list(layer.top)
        if not any(top in shapes for top in tops):
            continue
        old = list(layer.input_param.shape)
        del layer.input_param.shape[:]
        for index, top in enumerate(tops):
            shape = layer.input_param.shape.add()
            if top in shapes:
                shape.dim.extend(int(d) for d in shapes[top])
            elif index < len(old):
                shape.CopyFrom(old[index])
            elif old:
                shape.CopyFrom(old[-1])  # Caffe reuses a single shape for every top
    legacy = list(net.input)
    if not legacy:
        return
    if net.input_dim:
        dims = list(net.input_dim)
        for index, name in enumerate(legacy):
            if name in shapes:
                dims[4 * index:4 * index + 4] = _four(shapes[name])
        del net.input_dim[:]
        net.input_dim.extend(dims)
    else:
        old = list(net.input_shape)
        del net.input_shape[:]
        for index, name in enumerate(legacy):
            shape = net.input_shape.add()
            if name in shapes:
                shape.dim.extend(int(d) for d in shapes[name])
            elif index < len(old):
                shape.CopyFrom(old[index])


def _four(shape: Sequence[int]) -> List[int]:
    # The legacy input_dim field is always 4-D.
    dims = [int(d) for d in shape]
    return dims + [1] * (4 - len(dims))


def check_against_generated(net: caffe_pb2.NetParameter, generated: NetSpec, h5_path: str,
                            path: str) -> None:
    """Every generated layer with weights must have a layer of that name in the prototxt."""
    names = {layer.name for layer in test_layers(net)}
    missing = [layer.name for layer in generated.weighted_layers() if layer.name not in names]
    if missing:
        raise ConversionError("%s: %d layer(s) with weights in %s have no layer of that name in the "
                              "prototxt: %s" % (path, len(missing), h5_path, ", ".join(missing)))
