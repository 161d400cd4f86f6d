"""The op-pattern -> vocabulary table (`MAPPERS`): one function per TensorFlow op, given the
`_Mapper` walking the graph, adds the layer(s) the op (and the ops it absorbs) becomes."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from ...caffe.handlers.spatial import same_pads
from .nodes import _data_inputs, _split

if TYPE_CHECKING:
    from .mapper import _Mapper


# Ops whose output is their (first) input at inference.
PASS_THROUGH = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics",
                "EnsureShape"}
ACTIVATIONS = {"Relu": "relu", "Relu6": "relu6", "Elu": "elu", "Sigmoid": "sigmoid",
               "Tanh": "tanh", "Softmax": "softmax", "LeakyRelu": "leaky_relu"}
REDUCTIONS = {"Sum": "sum", "Mean": "mean", "Max": "max", "Min": "min", "Prod": "prod"}
ELEMENTWISE = {"Add": "add", "AddV2": "add", "AddN": "add", "Sub": "subtract", "Mul": "multiply",
               "Maximum": "maximum", "Minimum": "minimum"}


class _Unmappable(Exception):
    pass


def _attr_list(node, key) -> List[int]:
    return list(node.attr[key].list.i)


def _nhwc(node):
    if "data_format" in node.attr and node.attr["data_format"].s not in (b"NHWC", b""):
        raise _Unmappable("data_format %s; only NHWC is supported" % node.attr["data_format"].s.decode())


def _spatial(node, key) -> List[int]:
    values = _attr_list(node, key) or [1, 1, 1, 1]
    if values[0] != 1 or values[3] != 1:
        raise _Unmappable("%s %s moves along batch or channels" % (key, values))
    return values[1:3]


def _padding(node):
    padding = node.attr["padding"].s.decode()
    if padding == "EXPLICIT":
        pads = _attr_list(node, "explicit_paddings")
        if pads[0:2] != [0, 0] or pads[6:8] != [0, 0]:
            raise _Unmappable("explicit padding %s pads batch or channels" % pads)
        return [pads[2:4], pads[4:6]]
    return padding.lower()


def _per_channel(value, channels, what) -> np.ndarray:
    """A constant that broadcasts along the channel axis only, as a (channels,) vector."""
    value = np.asarray(value, np.float32)
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    raise _Unmappable("%s of shape %s is not per-channel" % (what, list(value.shape)))


def _with_bias(m: _Mapper, node, kind, config, data, kernel, kernel_input, last=None, claims=()):
    """Emit a convolution/dense layer, absorbing a constant per-channel bias added right after.
    `last` is the node computing the layer's result when it spans several ops (`claims`)."""
    arrays = {"kernel": (kernel, m.tf_name(kernel_input))}
    output = last or node
    user = m.only_user(output, ("BiasAdd", "BiasAddV1", "Add", "AddV2"))
    if user is not None and user.attr["data_format"].s in (b"NHWC", b""):
        others = [i for i in _data_inputs(user) if _split(i)[0] != output.name]
        if len(others) == 1 and m.constant(others[0]):
            try:
                bias = _per_channel(m.value(others[0]), m.values[output.name].shape[-1], "bias")
            except _Unmappable:
                bias = None  # not a bias: the add becomes a layer of its own
            if bias is not None:
                arrays["bias"] = (bias, m.tf_name(others[0]))
                output, claims = user, tuple(claims) + (user,)
    m.add(node, kind, [data], config, arrays, output, claims)


def _weighted_operands(m: _Mapper, node, data_index, kernel_index) -> Tuple[str, str]:
    inputs = _data_inputs(node)
    data, kernel = inputs[data_index], inputs[kernel_index]
    if m.constant(data) or not m.constant(kernel):
        raise _Unmappable("not an input tensor times constant weights")
    return data, kernel


def _convolution(m: _Mapper, node, first=None, data=None, dilation=None, padding=None, claims=()):
    """Conv2D or DepthwiseConv2dNative `node`; the atrous form passes its SpaceToBatchND as
    `first`, the original input as `data`, and the dilation and padding it stands for."""
    _nhwc(node)
    operand, kernel_input = _weighted_operands(m, node, 0, 1)
    data = data or operand
    kernel = m.value(kernel_input)
    config = {"kernel_size": list(kernel.shape[:2]), "strides": _spatial(node, "strides"),
              "dilation": dilation or _spatial(node, "dilations"), "padding": padding or _padding(node)}
    if node.op == "DepthwiseConv2dNative":
        kind = "depthwise_conv2d"
        config["depth_multiplier"] = int(kernel.shape[3])
    else:
        kind = "conv2d"
        config.update(filters=int(kernel.shape[3]), groups=int(m.shape(data)[-1] // kernel.shape[2]))
    last = claims[-1] if claims else None
    _with_bias(m, first or node, kind, config, data, kernel, kernel_input, last, claims)


def _atrous_convolution(m: _Mapper, node):
    """tf.nn.atrous_conv2d / dilated tf.nn.convolution: SpaceToBatchND (pads, then folds the
    `rate` phases into the batch) -> a 'valid' Conv2D -> BatchToSpaceND (unfolds, crops): one
    convolution with dilation `rate` over the input padded by paddings - crops."""
    x, block, paddings = _data_inputs(node)[:3]
    conv = m.only_user(node, ("Conv2D", "DepthwiseConv2dNative"))
    unfold = conv and m.only_user(conv, ("BatchToSpaceND",))
    if unfold is None:
        raise _Unmappable("space-to-batch that does not feed one convolution and back")
    rate = [int(r) for r in np.asarray(m.value(block)).reshape(-1)]
    _, unfold_block, crops = _data_inputs(unfold)[:3]
    if len(rate) != 2 or [int(r) for r in np.asarray(m.value(unfold_block)).reshape(-1)] != rate:
        raise _Unmappable("block shapes differ between space-to-batch and batch-to-space")
    if _padding(conv) != "valid" or _spatial(conv, "strides") != [1, 1] or _spatial(conv, "dilations") != [1, 1]:
        raise _Unmappable("the convolution between space-to-batch and batch-to-space is not "
                          "'valid' with stride 1")
    pads = (np.asarray(m.value(paddings)) - np.asarray(m.value(crops))).reshape(2, 2).tolist()
    if min(min(pair) for pair in pads) < 0:
        raise _Unmappable("batch-to-space crops more than space-to-batch padded")
    kernel = m.value(_data_inputs(conv)[1])
    same = [list(same_pads(size, k, 1, r)) for size, k, r in zip(m.shape(x)[1:3], kernel.shape[:2], rate)]
    padding = "same" if pads == same else "valid" if pads == [[0, 0], [0, 0]] else pads
    _convolution(m, conv, node, x, rate, padding, (conv, unfold))


def _conv2d_transpose(m: _Mapper, node):
    _nhwc(node)
    data, kernel_input = _weighted_operands(m, node, 2, 1)
    if _spatial(node, "dilations") != [1, 1]:
        raise _Unmappable("dilated transposed convolution")
    kernel = m.value(kernel_input)
    strides, padding = _spatial(node, "strides"), _padding(node)
    if not isinstance(padding, str):
        raise _Unmappable("explicit padding in a transposed convolution")
    kh, kw = kernel.shape[:2]
    # TF lets the caller pick any output size that rounds to the input (tflearn's upscore_layer
    # takes (in - 1)·s + 1): the layer's output shape says which, the handler crops to it.
    config = {"filters": int(kernel.shape[2]), "kernel_size": [int(kh), int(kw)],
              "strides": strides, "padding": padding}
    _with_bias(m, node, "conv2d_transpose", config, data, kernel, kernel_input)


def _matmul(m: _Mapper, node):
    if node.attr["transpose_a"].b:
        raise _Unmappable("transposed input")
    data, kernel_input = _weighted_operands(m, node, 0, 1)
    if len(m.shape(data)) != 2:
        raise _Unmappable("input of rank %d" % len(m.shape(data)))
    kernel = m.value(kernel_input)
    if node.attr["transpose_b"].b:
        kernel = kernel.T
    _with_bias(m, node, "dense", {"units": int(kernel.shape[1])}, data, kernel, kernel_input)


def _fused_batch_norm(m: _Mapper, node):
    _nhwc(node)
    x, scale, offset, mean, variance = _data_inputs(node)[:5]
    if node.attr["is_training"].b:
        raise _Unmappable("batch normalization in training mode (uses batch statistics)")
    if not all(m.constant(i) for i in (scale, offset, mean, variance)):
        raise _Unmappable("statistics computed from the input")
    arrays = {"gamma": (m.value(scale), m.tf_name(scale)), "beta": (m.value(offset), m.tf_name(offset)),
              "moving_mean": (m.value(mean), m.tf_name(mean)),
              "moving_variance": (m.value(variance), m.tf_name(variance))}
    m.add(node, "batch_norm", [x], {"epsilon": float(node.attr["epsilon"].f)}, arrays)


def _match_unfused_batch_norm(m: _Mapper, mul, add) -> Optional[dict]:
    """tf.nn.batch_normalization: x * inv + (beta - mean * inv), inv = rsqrt(var + eps) [* gamma].
    Returns the batch_norm arrays and epsilon when `mul`/`add` are that pattern."""
    (x,), (inv,) = m.data_operands(mul)
    _, inv_node = m.source(inv)
    gamma = None
    if inv_node.op == "Mul":
        operands = _data_inputs(inv_node)
        first = 0 if m.source(operands[0])[1].op == "Rsqrt" else 1
        rsqrt, gamma = m.source(operands[first])[1], operands[1 - first]
    else:
        rsqrt = inv_node
    if rsqrt.op != "Rsqrt":
        return None
    _, sum_node = m.source(rsqrt.input[0])
    if sum_node.op not in ("Add", "AddV2"):
        return None
    variance, eps = _data_inputs(sum_node)
    if np.asarray(m.value(eps)).size != 1:
        variance, eps = eps, variance
    if np.asarray(m.value(eps)).size != 1:
        return None
    _, (shift,) = m.data_operands(add)
    _, shift_node = m.source(shift)
    if shift_node.op == "Sub":
        beta, product = _data_inputs(shift_node)
    elif shift_node.op == "Neg":
        beta, product = None, shift_node.input[0]
    else:
        return None
    _, product_node = m.source(product)
    if product_node.op != "Mul" or inv_node.name not in [m.source(i)[0] for i in _data_inputs(product_node)]:
        return None
    mean = [i for i in _data_inputs(product_node) if m.source(i)[0] != inv_node.name][0]
    arrays = {"moving_mean": (m.value(mean), m.tf_name(mean)),
              "moving_variance": (m.value(variance), m.tf_name(variance))}
    if gamma is not None:
        arrays["gamma"] = (m.value(gamma), m.tf_name(gamma))
    if beta is not None:
        arrays["beta"] = (m.value(beta), m.tf_name(beta))
    channels = m.values[add.name].shape[-1]
    for role, (value, name) in arrays.items():
        arrays[role] = (_per_channel(value, channels, role), name)
    return {"arrays": arrays, "epsilon": float(np.asarray(m.value(eps)).reshape(-1)[0]), "x": x}


def _elementwise(m: _Mapper, node):
    data, constants = m.data_operands(node)
    inputs = _data_inputs(node)
    if not constants:
        if node.op not in ELEMENTWISE or len(data) < 2:
            raise _Unmappable("no layer type for this op on %d input tensors" % len(data))
        m.add(node, ELEMENTWISE[node.op], data)
        return
    if len(data) != 1 or len(constants) != 1:
        raise _Unmappable("unexpected operands")
    if node.op == "Mul":
        adder = m.only_user(node, ("Add", "AddV2"))
        if adder is not None and len(m.data_operands(adder)[1]) == 1:
            match = _match_unfused_batch_norm(m, node, adder)
            if match is not None:
                m.add(node, "batch_norm", [match["x"]], {"epsilon": match["epsilon"]},
                      match["arrays"], adder, (adder,))
                return
    channels = m.values[node.name].shape[-1]
    value = m.value(constants[0])
    if node.op == "Maximum" and np.all(value == 0):
        m.add(node, "activation", data, {"function": "relu"})
        return
    if node.op in ("Maximum", "Minimum"):
        raise _Unmappable("%s with a constant other than 0" % node.op.lower())
    if node.op in ("BiasAdd", "BiasAddV1"):
        _nhwc(node)
    per_channel = _per_channel(value, channels, "constant operand")
    scale, offset = 1.0, 0.0
    if node.op == "Mul":
        scale = per_channel
    elif node.op == "RealDiv":
        if inputs[0] != data[0]:
            raise _Unmappable("constant divided by a tensor")
        scale = 1.0 / per_channel
    elif node.op == "Sub" and inputs[0] != data[0]:
        scale, offset = -1.0, per_channel
    else:
        offset = per_channel if node.op != "Sub" else -per_channel
    m.add(node, "rescale", data, {"scale": _number_or_list(scale), "offset": _number_or_list(offset)})


def _number_or_list(value):
    value = np.asarray(value, np.float64)
    if value.ndim == 0 or np.all(value == value.reshape(-1)[0]):
        return float(value.reshape(-1)[0])
    return [float(v) for v in value]


def _activation(m: _Mapper, node):
    data, _ = m.data_operands(node)
    config = {"function": ACTIVATIONS[node.op]}
    if node.op == "LeakyRelu":
        config["alpha"] = float(node.attr["alpha"].f)
    elif node.op == "Elu":
        config["alpha"] = 1.0
    elif node.op == "Softmax":
        config["axis"] = len(m.shape(data[0])) - 1
    m.add(node, "activation", data, config)


def _pool(m: _Mapper, node):
    _nhwc(node)
    data, _ = m.data_operands(node)
    kind = "max_pool2d" if node.op.startswith("MaxPool") else "avg_pool2d"
    m.add(node, kind, data[:1], {"pool_size": _spatial(node, "ksize"), "strides": _spatial(node, "strides"),
                                 "padding": _padding(node)})


def _reduced_axes(m: _Mapper, x, axes) -> List[int]:
    if not m.constant(axes):
        raise _Unmappable("axes computed from the input")
    rank = len(m.shape(x))
    return sorted({int(a) % rank for a in np.asarray(m.value(axes)).reshape(-1)})


def _reduce(m: _Mapper, node):
    x, axes = _data_inputs(node)
    axes = _reduced_axes(m, x, axes)
    keepdims = bool(node.attr["keep_dims"].b)
    if len(m.shape(x)) == 4 and axes == [1, 2] and node.op in ("Mean", "Max"):
        kind = "global_avg_pool2d" if node.op == "Mean" else "global_max_pool2d"
        m.add(node, kind, [x], {"keepdims": keepdims})
        return
    m.add(node, "reduce", [x], {"operation": REDUCTIONS[node.op], "axes": axes, "keepdims": keepdims})


def _l2_normalize(m: _Mapper, node):
    """tf.math.l2_normalize (and tflearn's): x · rsqrt(max(sum(square(x), axes), epsilon)),
    matched from its Square."""
    (x,) = _data_inputs(node)
    total = m.only_user(node, ("Sum",))
    floor = total and m.only_user(total, ("Maximum",))
    rsqrt = floor and m.only_user(floor, ("Rsqrt",))
    product = rsqrt and m.only_user(rsqrt, ("Mul",))
    if product is None or not total.attr["keep_dims"].b or m.source(x)[0] not in [
            m.source(i)[0] for i in _data_inputs(product)]:
        raise _Unmappable("a square that is not part of an L2 normalization")
    _, epsilon = m.data_operands(floor)
    if len(epsilon) != 1 or np.asarray(m.value(epsilon[0])).size != 1:
        raise _Unmappable("an L2 normalization whose floor is not a constant")
    config = {"axes": _reduced_axes(m, x, _data_inputs(total)[1]),
              "epsilon": float(np.asarray(m.value(epsilon[0])).reshape(-1)[0])}
    # Named after its output op (tflearn and tf.math.l2_normalize name it after the layer).
    m.add(node, "l2_normalize", [x], config, output_node=product, claims=(total, floor, rsqrt, product),
          name=product.name)


def _pad(m: _Mapper, node):
    inputs = _data_inputs(node)
    x, paddings = inputs[0], inputs[1]
    if node.op == "MirrorPad":
        raise _Unmappable("%s padding has no exact Caffe form" % node.attr["mode"].s.decode().lower())
    pads = np.asarray(m.value(paddings)).tolist()
    value = float(np.asarray(m.value(inputs[2])).reshape(-1)[0]) if len(inputs) > 2 else 0.0
    if len(pads) != 4:
        raise _Unmappable("pads a %d-D tensor (only 4-D NHWC ones)" % len(pads))
    if pads[0] != [0, 0]:
        raise _Unmappable("paddings %s pad the batch axis" % pads)
    if pads[3] == [0, 0]:
        m.add(node, "pad2d", [x], {"padding": [pads[1], pads[2]], "mode": "constant", "value": value})
    elif pads[1:3] == [[0, 0], [0, 0]]:
        # tflearn's residual blocks widen the shortcut this way.
        m.add(node, "pad_channels", [x], {"padding": pads[3], "value": value})
    else:
        raise _Unmappable("paddings %s pad channels and spatial axes at once" % pads)


def _reshape(m: _Mapper, node):
    x = _data_inputs(node)[0]
    before, after = m.shape(x), list(m.values[node.name].shape)
    if before == after:
        m.layer_of[node.name] = m.layer_input(x)
        return
    squeeze_dims = [d % len(before) for d in _attr_list(node, "squeeze_dims")]
    if node.op == "Squeeze" and (not squeeze_dims or 0 in squeeze_dims) and before[0] == 1:
        raise _Unmappable("squeezes the batch axis too (pass squeeze axes)")
    if not after or after[0] != before[0]:
        raise _Unmappable("changes the batch axis (%s -> %s)" % (before, after))
    if len(after) == 2:
        m.add(node, "flatten", [x])
    else:
        m.add(node, "reshape", [x], {"target_shape": after[1:]})


def _concat(m: _Mapper, node):
    inputs = _data_inputs(node)
    data, axis = inputs[:-1], inputs[-1]
    if any(m.constant(i) for i in data):
        raise _Unmappable("concatenates a constant")
    rank = len(m.shape(data[0]))
    m.add(node, "concat", data, {"axis": int(np.asarray(m.value(axis))) % rank})


def _lrn(m: _Mapper, node):
    data, _ = m.data_operands(node)
    config = {key: (int(node.attr[key].i) if key == "depth_radius" else float(node.attr[key].f))
              for key in ("depth_radius", "bias", "alpha", "beta")}
    m.add(node, "lrn", data, config)


def _resize(m: _Mapper, node):
    x, _ = _data_inputs(node)
    before, after = m.shape(x), list(m.values[node.name].shape)
    factors = [a // b for a, b in zip(after[1:3], before[1:3])]
    if [b * f for b, f in zip(before[1:3], factors)] != after[1:3] or node.attr["align_corners"].b:
        raise _Unmappable("resize %s -> %s is not an integer upsampling" % (before[1:3], after[1:3]))
    interpolation = "nearest" if node.op == "ResizeNearestNeighbor" else "bilinear"
    if interpolation == "bilinear" and not node.attr["half_pixel_centers"].b:
        raise _Unmappable("bilinear resize without half-pixel centers (TF1's legacy sampling)")
    m.add(node, "upsample2d", [x], {"size": factors, "interpolation": interpolation})


def _repeat(m: _Mapper, node):
    """tf.repeat of a 4-D tensor along H or W (Keras 3's UpSampling2D): ExpandDims after the
    axis, Tile along the new axis, Reshape merging the two: nearest upsampling on one axis."""
    x, axis = _data_inputs(node)
    before = m.shape(x)
    axis = int(np.asarray(m.value(axis))) % (len(before) + 1)
    tile = m.only_user(node, ("Tile",))
    merge = tile and m.only_user(tile, ("Reshape",))
    if len(before) != 4 or axis not in (2, 3) or merge is None:
        raise _Unmappable("expands a tensor other than for repeating rows or columns")
    multiples = list(np.asarray(m.value(_data_inputs(tile)[1])).reshape(-1))
    factor = int(multiples[axis])
    size = [factor if a == axis - 1 else 1 for a in (1, 2)]
    expected = [before[0], before[1] * size[0], before[2] * size[1], before[3]]
    if multiples[:axis] + multiples[axis + 1:] != [1] * 4 or list(m.values[merge.name].shape) != expected:
        raise _Unmappable("tiles %s, not a repeat along one axis" % multiples)
    scope = node.name.rsplit("/", 1)[0]
    m.add(node, "upsample2d", [x], {"size": size, "interpolation": "nearest"}, output_node=merge,
          claims=(tile, merge), name=scope if scope not in m.reserved and "/" in node.name else None)
    m.reserved.add(m.layers[-1].name)


def _pass_through(m: _Mapper, node):
    x = _data_inputs(node)[0]
    if node.op == "Cast" and node.attr["SrcT"].type != node.attr["DstT"].type:
        raise _Unmappable("casts %s to %s" % (tf.as_dtype(node.attr["SrcT"].type).name,
                                              tf.as_dtype(node.attr["DstT"].type).name))
    m.layer_of[node.name] = m.layer_input(x)


def _negate(m: _Mapper, node):
    m.add(node, "rescale", [_data_inputs(node)[0]], {"scale": -1.0, "offset": 0.0})


MAPPERS = {"Conv2D": _convolution, "DepthwiseConv2dNative": _convolution,
           "Conv2DBackpropInput": _conv2d_transpose, "MatMul": _matmul,
           "FusedBatchNorm": _fused_batch_norm, "FusedBatchNormV2": _fused_batch_norm,
           "FusedBatchNormV3": _fused_batch_norm, "MaxPool": _pool, "AvgPool": _pool,
           "Pad": _pad, "PadV2": _pad, "MirrorPad": _pad, "SpaceToBatchND": _atrous_convolution,
           "Square": _l2_normalize,
           "Reshape": _reshape, "Squeeze": _reshape, "ConcatV2": _concat, "LRN": _lrn,
           "Neg": _negate, "Cast": _pass_through, "BiasAdd": _elementwise,
           "BiasAddV1": _elementwise, "RealDiv": _elementwise,
           "ResizeNearestNeighbor": _resize, "ResizeBilinear": _resize, "ExpandDims": _repeat}
MAPPERS.update({op: _activation for op in ACTIVATIONS})
MAPPERS.update({op: _elementwise for op in ELEMENTWISE})
MAPPERS.update({op: _reduce for op in REDUCTIONS})
MAPPERS.update({op: _pass_through for op in PASS_THROUGH})
