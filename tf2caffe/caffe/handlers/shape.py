"""Flatten and Reshape, and the element-order bookkeeping they make necessary.

TensorFlow flattens a 4-D tensor in H,W,C order, Caffe in C,H,W order. The two orders agree
when H·W == 1 or C == 1; otherwise the flattened blob is a permutation of TensorFlow's. That
permutation can be folded into the weights of a following Dense (and into per-feature vectors
of element-wise layers on the way), but BVLC Caffe has no Permute layer, so anything else that
sees the flattened order (a Concat, a model output, a reshape to another shape) is refused.

The mirror image: a vector reshaped to (H, W, C) (a DCGAN generator's Dense -> Reshape) is read
in H,W,C order by TensorFlow and in C,H,W order by Caffe's Reshape. A Dense layer that reaches
such a reshape through element-wise layers only emits its output columns in C,H,W order: its
blob is then permuted exactly as if it were a Flatten of (H, W, C), and the same bookkeeping
(per-feature vectors, the reshape back to (H, W, C)) makes the Caffe Reshape exact.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..emit import nchw
from ..netspec import CaffeLayer, shape_param
from . import Handler, register

# Layer types that treat every feature alike or per-feature with their own vectors, so they pass
# a flattened tensor through in Caffe's order (their per-feature arrays are permuted to match).
FEATURE_WISE = frozenset([
    "identity", "activation", "prelu", "batch_norm", "layer_norm", "rescale", "normalize",
    "add", "subtract", "multiply", "maximum", "minimum", "average",
])
# Layer types whose handlers deal with a flattened input themselves.
ORDER_AWARE = frozenset(["dense", "flatten", "reshape"])


def orders_agree(hwc) -> bool:
    """Whether TensorFlow's H,W,C and Caffe's C,H,W flattening orders of (H, W, C) coincide."""
    h, w, c = hwc
    return h * w == 1 or c == 1


def flattening_of(model, name):
    """The layer that leaves 2-D tensor `name` in Caffe's C,H,W order of some (H, W, C) where
    TensorFlow holds H,W,C order: a Flatten/Reshape of a 4-D tensor, or a Dense emitted for a
    later reshape (see `unflattened_shape`); None when Caffe holds TensorFlow's order."""
    layer = model.layer(name)
    if len(layer.output_shape) != 2:
        return None
    if layer.type in ("flatten", "reshape"):
        source = model.layer(layer.inputs[0]).output_shape
        if len(source) == 4:
            return None if orders_agree(source[1:]) else layer
        return flattening_of(model, layer.inputs[0])
    if layer.type in FEATURE_WISE:
        return flattening_of(model, layer.inputs[0])
    if layer.type == "dense" and unflattened_shape(model, layer) is not None:
        return layer
    return None


def flattened_shape(model, flattening):
    """The (H, W, C) whose C,H,W order Caffe holds after `flattening` (from `flattening_of`)."""
    if flattening.type == "dense":
        return unflattened_shape(model, flattening)
    return tuple(model.layer(flattening.inputs[0]).output_shape[1:])


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
    return None if orders_agree(hwc) else hwc


def _describe(model, flattening) -> str:
    if flattening.type == "dense":
        return ("the Dense layer '%s' (its output emitted in C,H,W order for the reshape to %s)"
                % (flattening.name, list(unflattened_shape(model, flattening))))
    return "the Flatten of a 4-D tensor ('%s')" % flattening.name


def order_problem(layer, model) -> Optional[str]:
    """Why `layer` would see or expose a flattened tensor in the wrong order (None if fine)."""
    own = flattening_of(model, layer.name)
    if own is not None and layer.name in model.outputs:
        return ("model output comes from %s: TensorFlow orders it H,W,C, Caffe C,H,W, and BVLC "
                "Caffe has no Permute" % _describe(model, own))
    if layer.type in ORDER_AWARE:
        return None
    sources = [flattening_of(model, name) for name in layer.inputs]
    hwc = {None if f is None else flattened_shape(model, f) for f in sources}
    if hwc == {None} or (layer.type in FEATURE_WISE and len(hwc) == 1):
        return None
    flatten = next(f for f in sources if f is not None)
    return ("an input ordered by %s: Caffe holds it C,H,W where TensorFlow has H,W,C, and BVLC "
            "Caffe (no Permute) cannot reorder it for this %s layer" % (_describe(model, flatten), layer.type))


def caffe_axis(axis, rank) -> int:
    """A TensorFlow axis (NHWC for 4-D, possibly negative) as the Caffe (NCHW) axis."""
    axis = int(axis) % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def chw_order(hwc) -> np.ndarray:
    """Caffe's feature i of a flattened (H, W, C) is TensorFlow's feature chw_order(hwc)[i]."""
    h, w, c = hwc
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def in_blob_order(values: np.ndarray, blob) -> np.ndarray:
    """A vector over TensorFlow's last axis, reordered like the features of Caffe `blob`."""
    if blob.flattened_from is None:
        return values
    return values[chw_order(blob.flattened_from)]


def emit_flatten(layer, ctx) -> None:
    bottom = ctx.bottom(layer)
    if len(bottom.shape) == 2:
        ctx.produce(layer, bottom.name, bottom.shape, bottom.flattened_from)
        return
    name = ctx.name(layer)
    ctx.add(CaffeLayer(name, "Flatten", [bottom.name], [name]))
    hwc = ctx.input_tf_shape(layer)[1:]
    # Caffe holds a 3-D tensor in TensorFlow's order: only a 4-D one flattens permuted.
    ctx.produce(layer, name, flattened_from=None if len(hwc) != 3 or orders_agree(hwc) else hwc)


@register("flatten")
class Flatten(Handler):
    summary = "Flatten; a following Dense takes TensorFlow's H,W,C order into its weights"
    caffe_layers = ("Flatten",)

    def check(self, layer, model, profile):
        if len(model.layer(layer.inputs[0]).output_shape) not in (2, 3, 4):
            return "only 2-D to 4-D inputs are supported"
        return order_problem(layer, model)

    def emit(self, layer, ctx):
        emit_flatten(layer, ctx)


@register("reshape")
class Reshape(Handler):
    config_keys = ("target_shape",)
    notes = "target_shape without batch"
    summary = ("Reshape where TensorFlow's and Caffe's element orders agree, or where the Dense "
               "computing the vector (through element-wise layers) emits it in C,H,W order; "
               "flatten-like reshapes as Flatten")
    caffe_layers = ("Reshape", "Flatten")

    def check(self, layer, model, profile):
        source = model.layer(layer.inputs[0])
        shape_in, shape_out = source.output_shape, layer.output_shape
        if len(shape_in) not in (2, 4) or len(shape_out) not in (2, 4):
            return "only reshapes between 2-D and 4-D tensors are supported (got %s -> %s)" % (
                shape_in, shape_out)
        if len(shape_out) == 2 or shape_in == shape_out:
            return order_problem(layer, model)
        flatten = flattening_of(model, source.name)
        if flatten is not None:
            if tuple(shape_out[1:]) == flattened_shape(model, flatten):
                return order_problem(layer, model)
        elif orders_agree(shape_out[1:]) and (len(shape_in) == 2 or orders_agree(shape_in[1:])):
            return order_problem(layer, model)
        reason = ("reshape %s -> %s: Caffe's element order differs (TensorFlow reshapes in H,W,C "
                  "order, Caffe in C,H,W) and BVLC Caffe has no Permute" % (shape_in[1:], shape_out[1:]))
        if len(shape_in) == 2:
            reason += ("; a vector can be emitted in Caffe's order only by the Dense layer computing "
                       "it (directly or through element-wise layers), and only for one reshape")
        return reason

    def emit(self, layer, ctx):
        bottom = ctx.bottom(layer)
        if list(ctx.input_tf_shape(layer)) == list(layer.output_shape):
            ctx.produce(layer, bottom.name, bottom.shape, bottom.flattened_from)
        elif len(layer.output_shape) == 2:
            emit_flatten(layer, ctx)
        else:
            name = ctx.name(layer)
            ctx.add(CaffeLayer(name, "Reshape", [bottom.name], [name], {
                "reshape_param": {"shape": shape_param([0] + nchw(layer.output_shape)[1:])}}))
            ctx.produce(layer, name)
