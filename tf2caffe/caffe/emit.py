"""Intermediate graph -> Caffe net: check support for every layer, then let each handler emit."""
from __future__ import annotations

import contextlib
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConversionError, Refusal, UnsupportedError
from ..intermediate import Layer, Model
from .layout import FlatOrder, held_axes
from .handlers import HANDLERS, BroadcastsTo, Handler, handler_for, load_builtin
from .netspec import CaffeLayer, NetSpec
from .profiles import Profile, get_profile


class Blob:
    """A Caffe blob standing for one TensorFlow tensor.

    `shape` is Caffe's. `axes` is how Caffe holds TensorFlow's value: the blob is that value
    transposed by `axes` (None: `held_axes` of its rank, NCHW for 4-D); a Permute folded into a later
    Dense leaves its input's blob, TensorFlow's permuted value held by other axes.
    `flattened_from` is a `FlatOrder` when the blob is a flattened tensor whose order differs
    from TensorFlow's (a 4-D tensor flattened in C,H,W order where TensorFlow used H,W,C).
    """

    def __init__(self, name, shape, flattened_from: Optional[FlatOrder] = None,
                 axes: Optional[Sequence[int]] = None):
        self.name = name
        self.shape = [int(d) for d in shape]
        self.flattened_from = flattened_from
        self.axes = tuple(int(a) for a in axes) if axes is not None else None

    def to_caffe(self, tf_value: np.ndarray) -> np.ndarray:
        """Bring a TensorFlow activation into this blob's layout (for verification)."""
        value = np.asarray(tf_value)
        if self.flattened_from is not None:
            order = self.flattened_from
            value = value.reshape((-1,) + order.shape).transpose((0,) + tuple(a + 1 for a in order.axes))
        else:
            value = value.transpose(self.axes or held_axes(value.ndim))
        return value.reshape(self.shape)


def nchw(shape: Sequence[int]) -> List[int]:
    shape = [int(d) for d in shape]
    return [shape[0], shape[3], shape[1], shape[2]] if len(shape) == 4 else shape


class EmitContext:
    """What a handler sees while emitting: the model, the net being built, the blobs so far."""

    def __init__(self, model: Model, net: NetSpec, profile: Profile):
        self.model = model
        self.net = net
        self.profile = profile
        self.blobs: Dict[str, Blob] = {}
        self.emitting: Optional[Tuple[Layer, Handler]] = None  # set by build_net, for add()

    def bottom(self, layer: Layer, index: int = 0) -> Blob:
        return self.blobs[layer.inputs[index]]

    def input_tf_shape(self, layer: Layer, index: int = 0) -> List[int]:
        return self.model.layer(layer.inputs[index]).output_shape

    def name(self, layer: Layer, suffix: str = "") -> str:
        return layer.caffe_name + ("/" + suffix if suffix else "")

    def add(self, caffe_layer: CaffeLayer) -> CaffeLayer:
        layer, handler = self.emitting
        if caffe_layer.type not in handler.caffe_layers:
            # A handler bug: the docs and the profile checks trust caffe_layers.
            raise ConversionError("%s: layer '%s' (%s): handler %s emitted Caffe layer type '%s', which "
                                  "its caffe_layers (%s) do not declare" % (
                                      self.model.source, layer.name, layer.type, type(handler).__name__,
                                      caffe_layer.type, ", ".join(handler.caffe_layers)))
        caffe_layer.source = layer.name
        return self.net.add(caffe_layer)

    def produce(self, layer: Layer, top: str, shape: Optional[Sequence[int]] = None,
                flattened_from: Optional[FlatOrder] = None, axes: Optional[Sequence[int]] = None) -> Blob:
        """Declare that Caffe blob `top` holds `layer`'s output (default shape: TF's, in NCHW)."""
        blob = Blob(top, shape if shape is not None else nchw(layer.output_shape), flattened_from, axes)
        self.blobs[layer.name] = blob
        return blob


@contextlib.contextmanager
def malformed_config_reported(model: Model, layer: Layer):
    """The reader checks that config keys exist, not their form: a value a handler cannot use
    (hand-made or damaged file) becomes one line naming the layer."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ConversionError("%s: layer '%s' (%s): malformed config %s: %s" % (
            model.source, layer.name, layer.type, json.dumps(layer.config), error))


def array_problem(layer: Layer, model: Model, handler) -> Optional[str]:
    """Why the layer's arrays do not have the shapes its handler declares (None when they do)."""
    expected = handler.array_shapes(layer, model)
    for role, array in sorted(layer.arrays.items()):
        shape = [int(d) for d in array.shape]
        if role not in expected:
            return "holds an array '%s' that a %s layer does not use" % (role, layer.type)
        want = expected[role]
        fits = want.admits(shape) if isinstance(want, BroadcastsTo) else shape == [int(d) for d in want]
        if not fits:
            return "array '%s' has shape %s; its config and input imply %s%s" % (
                role, shape, [int(d) for d in want],
                " (or a shape that broadcasts to it)" if isinstance(want, BroadcastsTo) else "")
    return None


def unsupported_layers(model: Model, profile: Profile) -> List[str]:
    """Every layer that cannot be converted, as 'name (type): reason' lines."""
    load_builtin()
    problems = []
    for layer in model.layers:
        if layer.type not in HANDLERS:
            problems.append(Refusal(layer.name, layer.type, "no handler for this layer type"))
            continue
        handler = HANDLERS[layer.type]
        with malformed_config_reported(model, layer):
            reason = array_problem(layer, model, handler) or handler.check(layer, model, profile)
        if reason:
            problems.append(Refusal(layer.name, layer.type, reason))
    return problems


def build_net(model: Model, profile_name: str = "bvlc") -> Tuple[NetSpec, Dict[str, Blob]]:
    profile = get_profile(profile_name)
    problems = unsupported_layers(model, profile)
    if problems:
        raise UnsupportedError(problems)
    net = NetSpec(model.name)
    ctx = EmitContext(model, net, profile)
    for layer in model.layers:
        handler = handler_for(layer.type)
        ctx.emitting = (layer, handler)
        with malformed_config_reported(model, layer):
            handler.emit(layer, ctx)
    deployable_outputs(model, net, ctx.blobs)
    profile.enforce(net)
    names = [layer.name for layer in net.layers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConversionError("%s: Caffe layer names would repeat: %s" % (model.source, ", ".join(duplicates)))
    return net, ctx.blobs


def deployable_outputs(model: Model, net: NetSpec, blobs: Dict[str, Blob]) -> None:
    """Give each model output's Caffe blob, and the layer writing it, the output's TensorFlow name
    (what a user asks Caffe and OpenCV for); whatever held that name before becomes
    `<name>/logits` (the input of an output's softmax or sigmoid) or `<name>/<its Caffe type>`.
    An output that other layers also read is written by a one-top Split named like it: OpenCV
    fuses an activation into the convolution before it and, when a Concat reads the result too,
    never fills the activation's own output blob (OpenCV 4.14 returns ~1e35 there); a Split keeps
    the requested blob apart from the fused one (tests/test_deployed_opencv.py)."""
    logits = {blobs[name].name for name in model.compared_layers() if name not in model.outputs and name in blobs}
    for output, tf_name in zip(model.outputs, model.output_names()):
        blob = blobs.get(output)
        writers = _writers_of(net, blob.name) if blob is not None else []
        if not writers:  # an output that is an input: nothing in the net writes it
            continue
        writer = writers[-1]
        after = net.layers[net.layers.index(writer) + 1:]
        # A Split too where the writer has several tops: OpenCV hands out a layer's first only.
        shared = len(writer.tops) > 1 or any(blob.name in layer.bottoms for layer in after)
        for layer in net.layers:
            if layer.name == tf_name and (shared or layer is not writer):
                layer.name = _freed_name(tf_name, layer.type, layer.tops and layer.tops[0] in logits)
        for other in {top for layer in net.layers for top in layer.tops} - {blob.name}:
            if other == tf_name:
                _rename_blob(net, blobs, other, _freed_name(tf_name, _writers_of(net, other)[-1].type,
                                                            other in logits))
        if shared:
            if blob.name == tf_name:  # the Split takes the name
                _rename_blob(net, blobs, tf_name, _freed_name(tf_name, writer.type, False))
                blob = blobs[output]
            split = CaffeLayer(tf_name, "Split", [blob.name], [tf_name])
            split.source = output
            net.layers.insert(net.layers.index(writer) + 1, split)
            for layer in after:
                layer.bottoms = [tf_name if bottom == blob.name else bottom for bottom in layer.bottoms]
            blobs[output] = Blob(tf_name, blob.shape, blob.flattened_from, blob.axes)
        else:
            writer.name = tf_name
            _rename_blob(net, blobs, blob.name, tf_name)


def _writers_of(net: NetSpec, blob: str) -> List[CaffeLayer]:
    return [layer for layer in net.layers if blob in layer.tops]


def _freed_name(name: str, caffe_type: str, is_logits: bool) -> str:
    return "%s/%s" % (name, "logits" if is_logits else caffe_type.lower())


def _rename_blob(net: NetSpec, blobs: Dict[str, Blob], old: str, new: str) -> None:
    if old == new:
        return
    for layer in net.layers:
        layer.bottoms = [new if name == old else name for name in layer.bottoms]
        layer.tops = [new if name == old else name for name in layer.tops]
    for tf_layer, blob in list(blobs.items()):
        if blob.name == old:
            blobs[tf_layer] = Blob(new, blob.shape, blob.flattened_from, blob.axes)
