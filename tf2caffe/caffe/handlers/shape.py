"""Flatten, Reshape and Permute, and the element-order bookkeeping they make necessary.

TensorFlow flattens a 4-D tensor in H,W,C order, Caffe in C,H,W order. The two orders agree
when H·W == 1 or C == 1; otherwise the flattened blob is a permutation of TensorFlow's (its
`FlatOrder`). That permutation can be folded into the weights of a following Dense (and into
per-feature vectors of element-wise layers on the way), but BVLC Caffe has no Permute layer, so
anything else that sees the flattened order (a Concat, a model output, a reshape to another
shape) is refused.

The mirror image: a vector reshaped to (H, W, C) (a DCGAN generator's Dense -> Reshape) is read
in H,W,C order by TensorFlow and in C,H,W order by Caffe's Reshape. A Dense layer that reaches
such a reshape through element-wise layers only emits its output columns in C,H,W order: its
blob is then permuted exactly as if it were a Flatten of (H, W, C), and the same bookkeeping
(per-feature vectors, the reshape back to (H, W, C)) makes the Caffe Reshape exact.

A Permute (Keras's layer, TensorFlow's Transpose) whose only consumers are flattens read by Dense
layers (nets ported from Caffe flatten in C,H,W order this way) emits nothing: its blob is its
input's, TensorFlow's permuted value held by other axes (`Blob.axes`), and the flatten's order
folds into the Dense. Any other Permute is Caffe's Permute layer where the profile has it; so is
a reshape whose element order differs (Permute to TensorFlow's order, Reshape, Permute back).
"""
from __future__ import annotations

import weakref
from typing import FrozenSet, Optional

import numpy as np

from ..emit import nchw
from ..layout import FlatOrder, held_axes, inverse
from ..netspec import CaffeLayer, shape_param
from . import Handler, register
from .chain import Chain

# Layer types that treat every feature alike or per-feature with their own vectors, so they pass
# a flattened tensor through in Caffe's order (their per-feature arrays are permuted to match).
FEATURE_WISE = frozenset([
    "identity", "activation", "prelu", "batch_norm", "layer_norm", "rescale", "normalize",
    "add", "subtract", "multiply", "maximum", "minimum", "average",
])
# Layer types whose handlers deal with a flattened input themselves.
ORDER_AWARE = frozenset(["dense", "flatten", "reshape"])


def permutation(layer):
    """A permute layer's axes (TensorFlow's, with the batch axis first)."""
    return (0,) + tuple(int(d) for d in layer.config["dims"])


def permute_folds(model, layer) -> bool:
    """Whether permute `layer` emits nothing: every consumer flattens it for Dense layers only
    (through Dropout, activations, batch norm: layers that take any feature order)."""
    consumers = model.consumers(layer.name)
    return (layer.name not in model.outputs and bool(consumers) and all(
        c.type in ("flatten", "reshape") and len(c.output_shape) == 2 and _read_by_dense_only(model, c.name)
        for c in consumers))


def _read_by_dense_only(model, name) -> bool:
    consumers = model.consumers(name)
    return name not in model.outputs and bool(consumers) and all(
        c.type == "dense" or (c.type in FEATURE_WISE and len(c.inputs) == 1 and _read_by_dense_only(model, c.name))
        for c in consumers)


def held_axes_of(model, name):
    """How Caffe holds layer `name`'s output: the axes of TensorFlow's value giving the blob."""
    layer = model.layer(name)
    if layer.type == "permute" and permute_folds(model, layer):
        # Caffe holds the input x by h; the output is x.transpose(p), so x = output.transpose(p⁻¹).
        undo = inverse(permutation(layer))
        return tuple(undo[a] for a in held_axes_of(model, layer.inputs[0]))
    return held_axes(len(layer.output_shape))


def flattening_of(model, name, permuted=frozenset()):
    """The layer that leaves 2-D tensor `name` in an order other than TensorFlow's (a Flatten or
    Reshape of a 4-D tensor, or a Dense emitted for a later reshape, see `unflattened_shape`);
    None when Caffe holds TensorFlow's order (also after the flattens named in `permuted`, which
    Permute to it first)."""
    layer = model.layer(name)
    if len(layer.output_shape) != 2:
        return None
    if layer.type in ("flatten", "reshape"):
        source = model.layer(layer.inputs[0])
        if len(source.output_shape) > 2:
            return None if source_order(model, source).is_identity() or name in permuted else layer
        return flattening_of(model, layer.inputs[0], permuted)
    if layer.type in FEATURE_WISE:
        return flattening_of(model, layer.inputs[0], permuted)
    if layer.type == "dense" and unflattened_shape(model, layer) is not None:
        return layer
    return None


def source_order(model, source) -> FlatOrder:
    """The order in which Caffe holds the elements of layer `source`'s output."""
    return FlatOrder.of(source.output_shape, held_axes_of(model, source.name))


def flat_order(model, flattening) -> FlatOrder:
    """The order of the vector `flattening` (from `flattening_of`) leaves."""
    if flattening.type == "dense":
        return FlatOrder.chw(unflattened_shape(model, flattening))
    return source_order(model, model.layer(flattening.inputs[0]))


def unflattened_shape(model, dense):
    """The (H, W, C) that `dense`'s output is reshaped to, through element-wise layers only, when
    that reshape needs Caffe's C,H,W order (so the Dense emits its columns in it); None when
    there is none, or when the output is also reshaped to another 4-D shape."""
    targets, pending = set(), [dense.name]
    while pending:
        for consumer in model.consumers(pending.pop()):
            shape = consumer.output_shape
            if consumer.type in FEATURE_WISE or (consumer.type in ("flatten", "reshape") and len(shape) == 2):
                pending.append(consumer.name)
            elif consumer.type == "reshape" and len(shape) == 4:
                targets.add(tuple(shape[1:]))
    if len(targets) != 1:
        return None
    (hwc,) = targets
    return None if FlatOrder.chw(hwc).is_identity() else hwc


def _describe(model, flattening) -> str:
    if flattening.type == "dense":
        return ("the Dense layer '%s' (its output emitted in C,H,W order for the reshape to %s)"
                % (flattening.name, list(unflattened_shape(model, flattening))))
    return "the Flatten of a %d-D tensor ('%s')" % (len(model.layer(flattening.inputs[0]).output_shape),
                                                     flattening.name)


def order_problem(layer, model, profile=None) -> Optional[str]:
    """Why `layer` would see or expose a flattened tensor in the wrong order (None if fine), in
    `profile` (None: one without Permute)."""
    found = _order_problem(layer, model, permuted_flattens(model, profile))
    return found[1] if found else None


def _order_problem(layer, model, permuted):
    """(the layer leaving the order at fault, why) for `order_problem`, or None."""
    own = flattening_of(model, layer.name, permuted)
    if own is not None and layer.name in model.outputs:
        return own, ("model output comes from %s: TensorFlow orders it H,W,C, Caffe C,H,W, and BVLC "
                     "Caffe has no Permute" % _describe(model, own))
    if layer.type in ORDER_AWARE:
        return None
    sources = [flattening_of(model, name, permuted) for name in layer.inputs]
    hwc = {None if f is None else flat_order(model, f) for f in sources}
    if hwc <= {None} or (layer.type in FEATURE_WISE and len(hwc) == 1):
        return None
    flatten = next(f for f in sources if f is not None)
    return flatten, ("an input ordered by %s: Caffe holds it C,H,W where TensorFlow has H,W,C, and BVLC "
                     "Caffe (no Permute) cannot reorder it for this %s layer" % (_describe(model, flatten),
                                                                                 layer.type))


_PERMUTED = weakref.WeakKeyDictionary()  # model -> {profile name: permuted_flattens}


def permuted_flattens(model, profile) -> FrozenSet[str]:
    """The flattens emitted as Permute (to TensorFlow's order) + Flatten: where the profile has
    Permute, each flatten whose order some layer could not take otherwise (a Concat, a model
    output: SSD's heads); found pass by pass, as permuting one may leave another at fault."""
    if profile is None or not profile.allows("Permute"):
        return frozenset()
    known = _PERMUTED.setdefault(model, {})
    if profile.name not in known:
        permuted = frozenset()
        while True:
            faults = {found[0].name for found in (_order_problem(layer, model, permuted) for layer in model.layers)
                      if found and found[0].type in ("flatten", "reshape")}
            if faults <= permuted:
                break
            permuted |= faults
        known[profile.name] = permuted
    return known[profile.name]


def caffe_axis(axis, rank) -> int:
    """A TensorFlow axis (NHWC for 4-D, possibly negative) as the Caffe (NCHW) axis."""
    axis = int(axis) % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def in_blob_order(values: np.ndarray, blob) -> np.ndarray:
    """A vector over TensorFlow's last axis, reordered like the features of Caffe `blob`."""
    if blob.flattened_from is None:
        return values
    return values[blob.flattened_from.indices()]


def emit_flatten(layer, ctx) -> None:
    bottom = ctx.bottom(layer)
    if len(bottom.shape) == 2:
        ctx.produce(layer, bottom.name, bottom.shape, bottom.flattened_from)
        return
    name = ctx.name(layer)
    shape = ctx.input_tf_shape(layer)
    held = bottom.axes or held_axes(len(shape))
    order = FlatOrder.of(shape, held)
    source = bottom.name
    if not order.is_identity() and layer.name in permuted_flattens(ctx.model, ctx.profile):
        source = ctx.name(layer, "to_tf_order")
        ctx.add(CaffeLayer(source, "Permute", [bottom.name], [source],
                           {"permute_param": {"order": list(inverse(held))}}))
        order = FlatOrder.of(shape, range(len(shape)))
    ctx.add(CaffeLayer(name, "Flatten", [source], [name]))
    ctx.produce(layer, name, flattened_from=None if order.is_identity() else order)


@register("flatten")
class Flatten(Handler):
    summary = ("Flatten; a following Dense takes TensorFlow's H,W,C order into its weights; where "
               "anything else needs TensorFlow's order, Permute first if the profile has it")
    caffe_layers = ("Flatten", "Permute")

    def check(self, layer, model, profile):
        if len(model.layer(layer.inputs[0]).output_shape) not in (2, 3, 4):
            return "only 2-D to 4-D inputs are supported"
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        emit_flatten(layer, ctx)


def reshape_form(layer, model, profile):
    """How a reshape is emitted: 'same' (nothing), 'flatten', 'reshape' (Caffe's element order
    agrees), 'permuted' (Permute to TensorFlow's order, Reshape, Permute back); or why none can."""
    source = model.layer(layer.inputs[0])
    shape_in, shape_out = source.output_shape, layer.output_shape
    if len(shape_in) not in (2, 3, 4) or len(shape_out) not in (2, 3, 4):
        return None, "only reshapes between 2-D and 4-D tensors are supported (got %s -> %s)" % (
            shape_in, shape_out)
    if shape_in == shape_out:
        return "same", None
    if len(shape_out) == 2:
        return "flatten", None
    target = FlatOrder.of(shape_out, held_axes(len(shape_out)))
    flatten = flattening_of(model, source.name, permuted_flattens(model, profile))
    if flatten is not None:
        if flat_order(model, flatten) == target:
            return "reshape", None
    elif source_order(model, source).is_identity() and target.is_identity():
        return "reshape", None
    elif profile.allows("Permute"):
        return "permuted", None
    reason = ("reshape %s -> %s: Caffe's element order differs (TensorFlow reshapes in H,W,C "
              "order, Caffe in C,H,W) and the '%s' profile has no Permute" % (
                  shape_in[1:], shape_out[1:], profile.name))
    if len(shape_in) == 2:
        reason += ("; a vector can be emitted in Caffe's order only by the Dense layer computing "
                   "it (directly or through element-wise layers), and only for one reshape")
    return None, reason


@register("reshape")
class Reshape(Handler):
    config_keys = ("target_shape",)
    notes = "target_shape without batch"
    summary = ("Reshape where TensorFlow's and Caffe's element orders agree, or where the Dense "
               "computing the vector (through element-wise layers) emits it in C,H,W order; "
               "flatten-like reshapes as Flatten; otherwise Permute, Reshape, Permute where the "
               "profile has Permute")
    caffe_layers = ("Reshape", "Flatten", "Permute")

    def check(self, layer, model, profile):
        _, reason = reshape_form(layer, model, profile)
        return reason or order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        form, _ = reshape_form(layer, ctx.model, ctx.profile)
        if form == "same":
            ctx.produce(layer, bottom.name, bottom.shape, bottom.flattened_from, bottom.axes)
        elif form == "flatten":
            emit_flatten(layer, ctx)
        elif form == "reshape":
            name = ctx.name(layer)
            ctx.add(CaffeLayer(name, "Reshape", [bottom.name], [name], {
                "reshape_param": {"shape": shape_param([0] + nchw(layer.output_shape)[1:])}}))
            ctx.produce(layer, name)
        else:
            steps = Chain(ctx, layer)
            reshape_steps(steps, ctx.input_tf_shape(layer), layer.output_shape, permuted=True)
            steps.produce()


def same_element_order(shape_in, shape_out) -> bool:
    """Whether Caffe holds tensors of TensorFlow shapes `shape_in` and `shape_out` (same number
    of elements) in the same element order, so that a Caffe Reshape turns one into the other."""
    orders = [FlatOrder.of(shape, held_axes(len(shape))).indices() for shape in (shape_in, shape_out)]
    return bool(np.array_equal(*orders))


def reshape_steps(steps, shape_in, shape_out, permuted) -> None:
    """Append to chain `steps` the reshape of its blob (TensorFlow shape `shape_in`) to
    `shape_out`: one Reshape, or (`permuted`) Permute to TensorFlow's order, Reshape, Permute
    back to Caffe's."""
    shape_in, shape_out = list(shape_in), list(shape_out)
    if permuted and len(shape_in) == 4:
        steps.then("to_tf_order", "Permute", {"permute_param": {"order": [0, 2, 3, 1]}}, shape_in)
    target = shape_out if permuted else nchw(shape_out)
    steps.then("reshape", "Reshape", {"reshape_param": {"shape": shape_param([0] + target[1:])}}, target)
    if permuted and len(shape_out) == 4:
        steps.then("to_caffe_order", "Permute", {"permute_param": {"order": [0, 3, 1, 2]}}, nchw(shape_out))


@register("permute")
class Permute(Handler):
    config_keys = ("dims",)
    notes = ("dims: the output's axes as input axes, batch excluded, counted from 1 (Keras's "
             "Permute; TensorFlow's Transpose perm without its leading 0)")
    summary = ("nothing when it only feeds Flatten -> Dense (the order goes into the Dense's "
               "weights); otherwise Permute where the profile has it")
    caffe_layers = ("Permute",)

    def check(self, layer, model, profile):
        dims = [int(d) for d in layer.config["dims"]]
        rank = len(layer.output_shape)
        if sorted(dims) != list(range(1, rank)):
            return "dims %s are not a permutation of the axes 1..%d" % (dims, rank - 1)
        if rank not in (3, 4):
            return "only 3-D and 4-D tensors are supported"
        if permute_folds(model, layer) or profile.allows("Permute"):
            return None
        return ("permute %s: the '%s' profile has no Permute layer; only a permute whose every "
                "consumer is a Flatten read by Dense layers folds into their weights" % (dims, profile.name))

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        permuted = permutation(layer)
        if permute_folds(ctx.model, layer):
            ctx.produce(layer, bottom.name, bottom.shape, axes=held_axes_of(ctx.model, layer.name))
            return
        # Caffe's output axis k is TensorFlow's output axis out[k] = input axis permuted[out[k]],
        # which Caffe's input holds as its axis held⁻¹[permuted[out[k]]].
        held_in = inverse(bottom.axes or held_axes(len(bottom.shape)))
        order = [held_in[permuted[a]] for a in held_axes(len(permuted))]
        steps = Chain(ctx, layer)
        steps.then("permute", "Permute", {"permute_param": {"order": order}}, nchw(layer.output_shape))
        steps.produce()
