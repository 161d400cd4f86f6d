"""The op-pattern -> vocabulary table (`MAPPERS`): one function per TensorFlow op, given the
`Mapper` walking the graph, adds the layer(s) the op (and the ops it absorbs) becomes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from ...caffe.handlers.spatial import same_pads
from ...errors import Unmappable
from ..slicing import slice_config
from .nodes import data_inputs, split_input

if TYPE_CHECKING:
    from .mapper import Mapper


# Ops whose output is their (first) input at inference.
PASS_THROUGH = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics",
                "EnsureShape"}
ACTIVATIONS = {"Relu": "relu", "Relu6": "relu6", "Elu": "elu", "Selu": "selu", "Sigmoid": "sigmoid",
               "Tanh": "tanh", "Softmax": "softmax", "LeakyRelu": "leaky_relu", "Softplus": "softplus",
               "Softsign": "softsign", "Abs": "abs"}
REDUCTIONS = {"Sum": "sum", "Mean": "mean", "Max": "max", "Min": "min", "Prod": "prod"}
ELEMENTWISE = {"Add": "add", "AddV2": "add", "AddN": "add", "Sub": "subtract", "Mul": "multiply",
               "Maximum": "maximum", "Minimum": "minimum"}


def _attr_list(node, key) -> List[int]:
    return list(node.attr[key].list.i)


def _nhwc(node):
    if "data_format" in node.attr and node.attr["data_format"].s not in (b"NHWC", b""):
        raise Unmappable("data_format %s; only NHWC is supported" % node.attr["data_format"].s.decode())


def _spatial(node, key) -> List[int]:
    values = _attr_list(node, key) or [1, 1, 1, 1]
    if values[0] != 1 or values[3] != 1:
        raise Unmappable("%s %s moves along batch or channels" % (key, values))
    return values[1:3]


def _padding(node):
    padding = node.attr["padding"].s.decode()
    if padding == "EXPLICIT":
        pads = _attr_list(node, "explicit_paddings")
        if pads[0:2] != [0, 0] or pads[6:8] != [0, 0]:
            raise Unmappable("explicit padding %s pads batch or channels" % pads)
        return [pads[2:4], pads[4:6]]
    return padding.lower()


def _per_channel(value, channels, what) -> np.ndarray:
    """A constant that broadcasts along the channel axis only, as a (channels,) vector."""
    value = np.asarray(value, np.float32)
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    raise Unmappable("%s of shape %s is not per-channel" % (what, list(value.shape)))


def _with_bias(m: Mapper, node, kind, config, data, kernel, kernel_input, last=None, claims=()):
    """Emit a convolution/dense layer, absorbing a constant per-channel bias added right after.
    `last` is the node computing the layer's result when it spans several ops (`claims`)."""
    arrays = {"kernel": (kernel, m.tf_name(kernel_input))}
    output = last or node
    user = m.only_user(output, ("BiasAdd", "BiasAddV1", "Add", "AddV2"))
    if user is not None and user.attr["data_format"].s in (b"NHWC", b""):
        others = [i for i in data_inputs(user) if split_input(i)[0] != output.name]
        if len(others) == 1 and m.constant(others[0]):
            try:
                bias = _per_channel(m.value(others[0]), m.values[output.name].shape[-1], "bias")
            except Unmappable:
                bias = None  # not a bias: the add becomes a layer of its own
            if bias is not None:
                arrays["bias"] = (bias, m.tf_name(others[0]))
                output, claims = user, tuple(claims) + (user,)
    m.add(node, kind, [data], config, arrays, output, claims)


def _weighted_operands(m: Mapper, node, data_index, kernel_index) -> Tuple[str, str]:
    inputs = data_inputs(node)
    data, kernel = inputs[data_index], inputs[kernel_index]
    if m.constant(data) or not m.constant(kernel):
        raise Unmappable("not an input tensor times constant weights")
    return data, kernel


def _convolution(m: Mapper, node, first=None, data=None, dilation=None, padding=None, claims=()):
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


def _atrous_convolution(m: Mapper, node):
    """tf.nn.atrous_conv2d / dilated tf.nn.convolution: SpaceToBatchND (pads, then folds the
    `rate` phases into the batch) -> a 'valid' Conv2D -> BatchToSpaceND (unfolds, crops): one
    convolution with dilation `rate` over the input padded by paddings - crops."""
    x, block, paddings = data_inputs(node)[:3]
    conv = m.only_user(node, ("Conv2D", "DepthwiseConv2dNative"))
    unfold = conv and m.only_user(conv, ("BatchToSpaceND",))
    if unfold is None:
        raise Unmappable("space-to-batch that does not feed one convolution and back")
    rate = [int(r) for r in np.asarray(m.value(block)).reshape(-1)]
    _, unfold_block, crops = data_inputs(unfold)[:3]
    if len(rate) != 2 or [int(r) for r in np.asarray(m.value(unfold_block)).reshape(-1)] != rate:
        raise Unmappable("block shapes differ between space-to-batch and batch-to-space")
    if _padding(conv) != "valid" or _spatial(conv, "strides") != [1, 1] or _spatial(conv, "dilations") != [1, 1]:
        raise Unmappable("the convolution between space-to-batch and batch-to-space is not "
                          "'valid' with stride 1")
    pads = (np.asarray(m.value(paddings)) - np.asarray(m.value(crops))).reshape(2, 2).tolist()
    if min(min(pair) for pair in pads) < 0:
        raise Unmappable("batch-to-space crops more than space-to-batch padded")
    kernel = m.value(data_inputs(conv)[1])
    same = [list(same_pads(size, k, 1, r)) for size, k, r in zip(m.shape(x)[1:3], kernel.shape[:2], rate)]
    padding = "same" if pads == same else "valid" if pads == [[0, 0], [0, 0]] else pads
    _convolution(m, conv, node, x, rate, padding, (conv, unfold))


def _conv2d_transpose(m: Mapper, node):
    _nhwc(node)
    data, kernel_input = _weighted_operands(m, node, 2, 1)
    if _spatial(node, "dilations") != [1, 1]:
        raise Unmappable("dilated transposed convolution")
    kernel = m.value(kernel_input)
    strides, padding = _spatial(node, "strides"), _padding(node)
    if not isinstance(padding, str):
        raise Unmappable("explicit padding in a transposed convolution")
    kh, kw = kernel.shape[:2]
    # TF lets the caller pick any output size that rounds to the input (tflearn's upscore_layer
    # takes (in - 1)·s + 1): the layer's output shape says which, the handler crops to it.
    config = {"filters": int(kernel.shape[2]), "kernel_size": [int(kh), int(kw)],
              "strides": strides, "padding": padding}
    _with_bias(m, node, "conv2d_transpose", config, data, kernel, kernel_input)


def _matmul(m: Mapper, node):
    if node.attr["transpose_a"].b:
        raise Unmappable("transposed input")
    data, kernel_input = _weighted_operands(m, node, 0, 1)
    if len(m.shape(data)) != 2:
        raise Unmappable("input of rank %d" % len(m.shape(data)))
    kernel = m.value(kernel_input)
    if node.attr["transpose_b"].b:
        kernel = kernel.T
    _with_bias(m, node, "dense", {"units": int(kernel.shape[1])}, data, kernel, kernel_input)


def _fused_batch_norm(m: Mapper, node):
    _nhwc(node)
    x, scale, offset, mean, variance = data_inputs(node)[:5]
    if node.attr["is_training"].b:
        raise Unmappable("batch normalization in training mode (uses batch statistics)")
    if not all(m.constant(i) for i in (scale, offset, mean, variance)):
        raise Unmappable("statistics computed from the input")
    arrays = {"gamma": (m.value(scale), m.tf_name(scale)), "beta": (m.value(offset), m.tf_name(offset)),
              "moving_mean": (m.value(mean), m.tf_name(mean)),
              "moving_variance": (m.value(variance), m.tf_name(variance))}
    m.add(node, "batch_norm", [x], {"epsilon": float(node.attr["epsilon"].f)}, arrays)


def _match_unfused_batch_norm(m: Mapper, mul, add) -> Optional[dict]:
    """tf.nn.batch_normalization: x * inv + (beta - mean * inv), inv = rsqrt(var + eps) [* gamma].
    Returns the batch_norm arrays and epsilon when `mul`/`add` are that pattern."""
    (x,), (inv,) = m.data_operands(mul)
    _, inv_node = m.source(inv)
    gamma = None
    if inv_node.op == "Mul":
        operands = data_inputs(inv_node)
        first = 0 if m.source(operands[0])[1].op == "Rsqrt" else 1
        rsqrt, gamma = m.source(operands[first])[1], operands[1 - first]
    else:
        rsqrt = inv_node
    if rsqrt.op != "Rsqrt":
        return None
    _, sum_node = m.source(rsqrt.input[0])
    if sum_node.op not in ("Add", "AddV2"):
        return None
    variance, eps = data_inputs(sum_node)
    if np.asarray(m.value(eps)).size != 1:
        variance, eps = eps, variance
    if np.asarray(m.value(eps)).size != 1:
        return None
    _, (shift,) = m.data_operands(add)
    _, shift_node = m.source(shift)
    if shift_node.op == "Sub":
        beta, product = data_inputs(shift_node)
    elif shift_node.op == "Neg":
        beta, product = None, shift_node.input[0]
    else:
        return None
    _, product_node = m.source(product)
    if product_node.op != "Mul" or inv_node.name not in [m.source(i)[0] for i in data_inputs(product_node)]:
        return None
    mean = [i for i in data_inputs(product_node) if m.source(i)[0] != inv_node.name][0]
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


def _elementwise(m: Mapper, node):
    data, constants = m.data_operands(node)
    inputs = data_inputs(node)
    if not constants:
        if node.op not in ELEMENTWISE or len(data) < 2:
            raise Unmappable("no layer type for this op on %d input tensors" % len(data))
        m.add(node, ELEMENTWISE[node.op], data)
        return
    if len(data) != 1 or len(constants) != 1:
        raise Unmappable("unexpected operands")
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
        raise Unmappable("%s with a constant other than 0" % node.op.lower())
    if node.op in ("BiasAdd", "BiasAddV1"):
        _nhwc(node)
    per_channel = _per_channel(value, channels, "constant operand")
    scale, offset = 1.0, 0.0
    if node.op == "Mul":
        scale = per_channel
    elif node.op == "RealDiv":
        if inputs[0] != data[0]:
            raise Unmappable("constant divided by a tensor")
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


def _activation(m: Mapper, node):
    data, _ = m.data_operands(node)
    config = {"function": ACTIVATIONS[node.op]}
    if node.op == "LeakyRelu":
        config["alpha"] = float(node.attr["alpha"].f)
    elif node.op == "Elu":
        config["alpha"] = 1.0
    elif node.op == "Softmax":
        config["axis"] = len(m.shape(data[0])) - 1
    m.add(node, "activation", data, config)


def _pow(m: Mapper, node):
    x, exponent = data_inputs(node)
    if not m.constant(exponent) or _scalar(m, exponent) is None:
        raise Unmappable("not a tensor to a constant scalar power")
    m.add(node, "activation", [x], {"function": "power", "exponent": _scalar(m, exponent)})


def _pool(m: Mapper, node):
    _nhwc(node)
    data, _ = m.data_operands(node)
    kind = "max_pool2d" if node.op.startswith("MaxPool") else "avg_pool2d"
    m.add(node, kind, data[:1], {"pool_size": _spatial(node, "ksize"), "strides": _spatial(node, "strides"),
                                 "padding": _padding(node)})


def _reduced_axes(m: Mapper, x, axes) -> List[int]:
    if not m.constant(axes):
        raise Unmappable("axes computed from the input")
    rank = len(m.shape(x))
    return sorted({int(a) % rank for a in np.asarray(m.value(axes)).reshape(-1)})


def _reduce(m: Mapper, node):
    x, axes = data_inputs(node)
    axes = _reduced_axes(m, x, axes)
    keepdims = bool(node.attr["keep_dims"].b)
    if len(m.shape(x)) == 4 and axes == [1, 2] and node.op in ("Mean", "Max"):
        kind = "global_avg_pool2d" if node.op == "Mean" else "global_max_pool2d"
        m.add(node, kind, [x], {"keepdims": keepdims})
        return
    m.add(node, "reduce", [x], {"operation": REDUCTIONS[node.op], "axes": axes, "keepdims": keepdims})


def _l2_normalize(m: Mapper, node):
    """tf.math.l2_normalize (and tflearn's): x · rsqrt(max(sum(square(x), axes), epsilon)),
    matched from its Square."""
    (x,) = data_inputs(node)
    total = m.only_user(node, ("Sum",))
    floor = total and m.only_user(total, ("Maximum",))
    rsqrt = floor and m.only_user(floor, ("Rsqrt",))
    product = rsqrt and m.only_user(rsqrt, ("Mul",))
    if product is None or not total.attr["keep_dims"].b or m.source(x)[0] not in [
            m.source(i)[0] for i in data_inputs(product)]:
        raise Unmappable("a square that is not part of an L2 normalization")
    _, epsilon = m.data_operands(floor)
    if len(epsilon) != 1 or np.asarray(m.value(epsilon[0])).size != 1:
        raise Unmappable("an L2 normalization whose floor is not a constant")
    config = {"axes": _reduced_axes(m, x, data_inputs(total)[1]),
              "epsilon": float(np.asarray(m.value(epsilon[0])).reshape(-1)[0])}
    # Named after its output op (tflearn and tf.math.l2_normalize name it after the layer).
    m.add(node, "l2_normalize", [x], config, output_node=product, claims=(total, floor, rsqrt, product),
          name=product.name)


def _pad(m: Mapper, node):
    inputs = data_inputs(node)
    x, paddings = inputs[0], inputs[1]
    if node.op == "MirrorPad":
        raise Unmappable("%s padding has no exact Caffe form" % node.attr["mode"].s.decode().lower())
    pads = np.asarray(m.value(paddings)).tolist()
    value = float(np.asarray(m.value(inputs[2])).reshape(-1)[0]) if len(inputs) > 2 else 0.0
    if len(pads) != 4:
        raise Unmappable("pads a %d-D tensor (only 4-D NHWC ones)" % len(pads))
    if pads[0] != [0, 0]:
        raise Unmappable("paddings %s pad the batch axis" % pads)
    if pads[3] == [0, 0]:
        m.add(node, "pad2d", [x], {"padding": [pads[1], pads[2]], "mode": "constant", "value": value})
    elif pads[1:3] == [[0, 0], [0, 0]]:
        # tflearn's residual blocks widen the shortcut this way.
        m.add(node, "pad_channels", [x], {"padding": pads[3], "value": value})
    else:
        raise Unmappable("paddings %s pad channels and spatial axes at once" % pads)


def _reshape(m: Mapper, node):
    x = data_inputs(node)[0]
    before, after = m.shape(x), list(m.values[node.name].shape)
    if before == after:
        m.layer_of[node.name] = m.layer_input(x)
        return
    # (reading an attribute a node lacks would add it to the node: Reshape has no squeeze_dims)
    squeeze_dims = [d % len(before) for d in _attr_list(node, "squeeze_dims")] if node.op == "Squeeze" else []
    if node.op == "Squeeze" and (not squeeze_dims or 0 in squeeze_dims) and before[0] == 1:
        raise Unmappable("squeezes the batch axis too (pass squeeze axes)")
    if not after or after[0] != before[0]:
        raise Unmappable("changes the batch axis (%s -> %s)" % (before, after))
    if len(after) == 2:
        m.add(node, "flatten", [x])
    else:
        m.add(node, "reshape", [x], {"target_shape": after[1:]})


def _transpose(m: Mapper, node):
    x, perm = data_inputs(node)
    if not m.constant(perm):
        raise Unmappable("permutation computed from the input")
    perm = [int(p) for p in np.asarray(m.value(perm)).reshape(-1)]
    if perm[0] != 0:
        raise Unmappable("permutation %s moves the batch axis" % perm)
    m.add(node, "permute", [x], {"dims": perm[1:]})


def _taken(node, index: np.ndarray, bounds) -> np.ndarray:
    """What StridedSlice/Slice `node` takes from `index` (TensorFlow applies the masks itself, in
    a graph of its own)."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        if node.op == "Slice":
            return session.run(tf.slice(index, *bounds))
        masks = {key: int(node.attr[key].i) for key in (
            "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
        return session.run(tf.raw_ops.StridedSlice(input=index, begin=bounds[0], end=bounds[1],
                                                   strides=bounds[2], **masks))


def _slice(m: Mapper, node):
    """StridedSlice or Slice with constant bounds: what the op takes along each axis is read off
    the op applied to that axis's index tensor (export/slicing.py)."""
    x, bounds = data_inputs(node)[0], data_inputs(node)[1:]
    if not all(m.constant(b) for b in bounds):
        raise Unmappable("bounds computed from the input")
    bounds = [np.asarray(m.value(b)) for b in bounds]
    m.add(node, "slice", [x], slice_config(m.shape(x), lambda index: _taken(node, index, bounds)))


class _Output(NamedTuple):
    """Output `name` ('split:1') of a multi-output op, standing in for a node in `Mapper.add`."""
    name: str


def _split(m: Mapper, node):
    """Split/SplitV: one slice layer per output some op reads, along the split axis."""
    inputs = data_inputs(node)
    x, axis = (inputs[1], inputs[0]) if node.op == "Split" else (inputs[0], inputs[2])
    if not m.constant(axis):
        raise Unmappable("axis computed from the input")
    shape = m.shape(x)
    axis = int(np.asarray(m.value(axis))) % len(shape)
    if axis == 0:
        raise Unmappable("splits the batch axis")
    used = {split_input(i)[1] for user in m.users[node.name] for i in data_inputs(m.nodes[user])
            if split_input(i)[0] == node.name}
    if node.name in m.outputs:
        used.add(0)
    begin = 0
    for port in range(int(node.attr["num_split"].i)):
        key = m.port_key("%s:%d" % (node.name, port))
        if key not in m.values:
            m.values[key] = m.session.run(m.session.graph.get_tensor_by_name("%s:%d" % (node.name, port)),
                                          m.feed_dict)
        size = m.values[key].shape[axis]
        if port in used:
            config = {"begin": [0] * (len(shape) - 1), "end": list(shape[1:]), "strides": [1] * (len(shape) - 1)}
            config["begin"][axis - 1], config["end"][axis - 1] = begin, begin + size
            m.add(node if port == 0 else _Output(key), "slice", [x], config,
                  name=None if port == 0 else "%s/%d" % (node.name, port))
        begin += size


def _concat(m: Mapper, node):
    inputs = data_inputs(node)
    data, axis = inputs[:-1], inputs[-1]
    if any(m.constant(i) for i in data):
        raise Unmappable("concatenates a constant")
    rank = len(m.shape(data[0]))
    m.add(node, "concat", data, {"axis": int(np.asarray(m.value(axis))) % rank})


def _lrn(m: Mapper, node):
    data, _ = m.data_operands(node)
    config = {key: (int(node.attr[key].i) if key == "depth_radius" else float(node.attr[key].f))
              for key in ("depth_radius", "bias", "alpha", "beta")}
    m.add(node, "lrn", data, config)


def _resize(m: Mapper, node):
    x, _ = data_inputs(node)
    before, after = m.shape(x), list(m.values[node.name].shape)
    mode = ("align_corners" if node.attr["align_corners"].b else
            "half_pixel" if node.attr["half_pixel_centers"].b else "asymmetric")
    if node.op == "ResizeBilinear":
        m.add(node, "resize_bilinear", [x], {"size": after[1:3], "mode": mode})
        return
    factors = [a // b for a, b in zip(after[1:3], before[1:3])]
    # An integer upsampling copies each input f times, in the half-pixel and legacy samplings alike.
    if [b * f for b, f in zip(before[1:3], factors)] == after[1:3] and mode != "align_corners":
        m.add(node, "upsample2d", [x], {"size": factors, "interpolation": "nearest"})
    else:
        m.add(node, "resize_nearest", [x], {"size": after[1:3], "mode": mode})


def _repeat(m: Mapper, node):
    """tf.repeat of a 4-D tensor along H or W (Keras 3's UpSampling2D): ExpandDims after the
    axis, Tile along the new axis, Reshape merging the two: nearest upsampling on one axis."""
    x, axis = data_inputs(node)
    before = m.shape(x)
    axis = int(np.asarray(m.value(axis))) % (len(before) + 1)
    tile = m.only_user(node, ("Tile",))
    if tile is None:
        _reshape(m, node)  # a plain ExpandDims, e.g. (N, T, F) -> (N, T, F, 1)
        return
    merge = m.only_user(tile, ("Reshape",))
    if len(before) != 4 or axis not in (2, 3) or merge is None:
        raise Unmappable("expands a tensor other than for repeating rows or columns")
    multiples = list(np.asarray(m.value(data_inputs(tile)[1])).reshape(-1))
    factor = int(multiples[axis])
    size = [factor if a == axis - 1 else 1 for a in (1, 2)]
    expected = [before[0], before[1] * size[0], before[2] * size[1], before[3]]
    if multiples[:axis] + multiples[axis + 1:] != [1] * 4 or list(m.values[merge.name].shape) != expected:
        raise Unmappable("tiles %s, not a repeat along one axis" % multiples)
    m.add(node, "upsample2d", [x], {"size": size, "interpolation": "nearest"}, output_node=merge,
          claims=(tile, merge), name=_scope_name(m, node))


def _scope_name(m: Mapper, node) -> Optional[str]:
    """For a layer made of several ops: their name scope ('Conv2D/PReLU'), unless a node or an
    earlier layer has that name (then None: the mapper names it)."""
    scope = node.name.rsplit("/", 1)[0] if "/" in node.name else None
    if scope is None or scope in m.reserved:
        return None
    m.reserved.add(scope)
    return scope


# --------------------------------------------------------------------------- op patterns
class _Fused(NamedTuple):
    """A pattern of ops computing one layer of `x`: `root` is the op whose output is the
    layer's, `members` the other ops it absorbs."""
    root: object
    members: Tuple
    kind: str
    x: str
    config: Dict
    arrays: Dict = {}


def _producer(m: Mapper, name, op):
    """The node computing tensor `name` if it is a `op`, else None."""
    node = m.source(name)[1]
    return node if node.op == op else None


def _scalar(m: Mapper, name) -> Optional[float]:
    value = np.asarray(m.value(name))
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _data_and_constant(m: Mapper, node) -> Tuple[Optional[str], Optional[str]]:
    """(tensor, constant) operands of a binary op with exactly one of each, else (None, None)."""
    data, constants = m.data_operands(node)
    return (data[0], constants[0]) if len(data) == 1 and len(constants) == 1 else (None, None)


def _match_leaky_relu(m: Mapper, sub) -> Optional[_Fused]:
    """tflearn's leaky_relu: relu(x) - alpha·relu(-x) with a scalar alpha. For x < 0 that is
    -(alpha·(-x)) = alpha·x exactly, Caffe's ReLU with negative_slope alpha."""
    inputs = data_inputs(sub)
    positive, scaled = _producer(m, inputs[0], "Relu"), _producer(m, inputs[1], "Mul")
    if positive is None or scaled is None:
        return None
    relu_input, alpha = _data_and_constant(m, scaled)
    negative = relu_input and _producer(m, relu_input, "Relu")
    negation = negative and _producer(m, negative.input[0], "Neg")
    x = data_inputs(positive)[0]
    if negation is None or _scalar(m, alpha) is None or m.source(negation.input[0])[0] != m.source(x)[0]:
        return None
    return _Fused(sub, (positive, scaled, negative, negation), "activation", x,
                  {"function": "leaky_relu", "alpha": _scalar(m, alpha)})


def _match_prelu(m: Mapper, add) -> Optional[_Fused]:
    """tflearn's prelu: relu(x) + alphas·(x - |x|)·0.5 with constant alphas, one or one per
    channel. For x < 0 that is alphas·(2x)·0.5 = alphas·x exactly, Caffe's PReLU."""
    operands = [m.source(i)[1] for i in data_inputs(add)]
    positive = next((n for n in operands if n.op == "Relu"), None)
    halved = next((n for n in operands if n.op == "Mul"), None)
    if positive is None or halved is None:
        return None
    scaled_input, half = _data_and_constant(m, halved)
    scaled = scaled_input and _producer(m, scaled_input, "Mul")
    difference_input, alphas = _data_and_constant(m, scaled) if scaled else (None, None)
    difference = difference_input and _producer(m, difference_input, "Sub")
    if difference is None or _scalar(m, half) != 0.5:
        return None
    x, magnitude = data_inputs(difference)
    absolute = _producer(m, magnitude, "Abs")
    same_x = {m.source(i)[0] for i in (x, data_inputs(positive)[0])}
    if absolute is None or same_x != {m.source(absolute.input[0])[0]}:
        return None
    try:
        slopes = _per_channel(m.value(alphas), m.values[add.name].shape[-1], "alphas")
    except Unmappable:
        return None  # slopes varying over H or W: op by op
    return _Fused(add, (positive, halved, scaled, difference, absolute), "prelu", x, {},
                  {"alpha": (slopes, m.tf_name(alphas))})


def _match_clip(m: Mapper, maximum) -> Optional[_Fused]:
    """tf.clip_by_value(x, 0, c) with c > 0: maximum(minimum(x, c), 0) = min(max(x, 0), c),
    a ReLU with max_value c."""
    clipped, low = _data_and_constant(m, maximum)
    minimum = clipped and _producer(m, clipped, "Minimum")
    x, high = _data_and_constant(m, minimum) if minimum else (None, None)
    if x is None or _scalar(m, low) != 0.0 or not (_scalar(m, high) or 0.0) > 0.0:
        return None
    return _Fused(maximum, (minimum,), "activation", x, {"function": "relu", "max_value": _scalar(m, high)})


# The op a pattern's output comes from -> the patterns ending there.
PATTERNS = {"Sub": (_match_leaky_relu,), "Add": (_match_prelu,), "AddV2": (_match_prelu,),
            "Maximum": (_match_clip,)}
PATTERN_DEPTH = 4  # the most ops between a pattern's first op and its root


def _pattern_of(m: Mapper, node) -> Optional[_Fused]:
    """The pattern `node` belongs to: its single consumers are followed down to a root that a
    pattern matches with `node` among its ops, every op but the root feeding only the pattern."""
    candidate = node
    for _ in range(PATTERN_DEPTH + 1):
        for match in PATTERNS.get(candidate.op, ()):
            fused = match(m, candidate)
            names = {n.name for n in fused.members + (fused.root,)} if fused else set()
            if node.name in names and all(
                    m.users[n.name] and set(m.users[n.name]) <= names and n.name not in m.outputs
                    for n in fused.members):
                return fused
        users = m.users[candidate.name]
        if len(users) != 1 or candidate.name in m.outputs:
            return None
        candidate = m.nodes[users[0]]
    return None


def _pattern_or(mapper):
    """`mapper`, unless the node begins a pattern of ops that maps as one layer (the first of
    its ops the walk meets maps the whole pattern; the others are absorbed)."""
    def map_node(m: Mapper, node):
        fused = _pattern_of(m, node)
        if fused is None:
            mapper(m, node)
            return
        m.add(fused.root, fused.kind, [fused.x], fused.config, fused.arrays, claims=fused.members,
              name=_scope_name(m, fused.root))
    return map_node


def _pass_through(m: Mapper, node):
    x = data_inputs(node)[0]
    if node.op == "Cast" and node.attr["SrcT"].type != node.attr["DstT"].type:
        raise Unmappable("casts %s to %s" % (tf.as_dtype(node.attr["SrcT"].type).name,
                                             tf.as_dtype(node.attr["DstT"].type).name))
    m.layer_of[node.name] = m.layer_input(x)


def _negate(m: Mapper, node):
    m.add(node, "rescale", [data_inputs(node)[0]], {"scale": -1.0, "offset": 0.0})


MAPPERS = {"Conv2D": _convolution, "DepthwiseConv2dNative": _convolution,
           "Conv2DBackpropInput": _conv2d_transpose, "MatMul": _matmul,
           "FusedBatchNorm": _fused_batch_norm, "FusedBatchNormV2": _fused_batch_norm,
           "FusedBatchNormV3": _fused_batch_norm, "MaxPool": _pool, "AvgPool": _pool,
           "Pad": _pad, "PadV2": _pad, "MirrorPad": _pad, "SpaceToBatchND": _atrous_convolution,
           "Square": _l2_normalize,
           "Reshape": _reshape, "Squeeze": _reshape, "ConcatV2": _concat, "LRN": _lrn,
           "Neg": _negate, "Cast": _pass_through, "BiasAdd": _elementwise,
           "BiasAddV1": _elementwise, "RealDiv": _elementwise,
           "ResizeNearestNeighbor": _resize, "ResizeBilinear": _resize, "ExpandDims": _repeat, "Pow": _pow,
           "Transpose": _transpose, "StridedSlice": _slice, "Slice": _slice,
           "Split": _split, "SplitV": _split}
MAPPERS.update({op: _activation for op in ACTIVATIONS})
MAPPERS.update({op: _elementwise for op in ELEMENTWISE})
MAPPERS.update({op: _reduce for op in REDUCTIONS})
MAPPERS.update({op: _pass_through for op in PASS_THROUGH})
MAPPERS = {op: _pattern_or(mapper) for op, mapper in MAPPERS.items()}
