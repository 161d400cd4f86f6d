"""Keras 3 models -> the HDF5 intermediate.

Each Keras layer becomes one or more vocabulary layers (docs/intermediate-format.md): a fused
activation is split into `<layer>/<function>`, a SeparableConv2D into a depthwise and a 1x1
convolution. The model is then run eagerly, node by node in topological order, so that every
vocabulary layer's output exists as a TensorFlow value for verification.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Callable, Dict, List, Optional, Sequence

import h5py
import keras
import numpy as np
import tensorflow as tf

from .. import intermediate, progress
from ..errors import ConversionError, Refusal, Unmappable, UnsupportedError
from ..measure import relative_error
from .reference import reference_batch
from .slicing import slice_config

# Largest max|layer-by-layer - model(x)| / max|model(x)| accepted: both compute the same ops.
EAGER_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------
# Loading model files

def load_model(path, checkpoint=None) -> keras.Model:
    """Load a `.keras` or Keras `.h5` file without ever executing code stored in it."""
    path = str(path)
    _refuse_lambda_layers(path, _stored_config(path))
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError, OSError...
        raise ConversionError("%s: cannot load the Keras model: %s" % (path, _first_line(error)))
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ConversionError("%s: no such checkpoint (weights) file" % checkpoint)
        try:
            model.load_weights(str(checkpoint))
        except Exception as error:
            raise ConversionError("%s: cannot load these weights into %s: %s" % (
                checkpoint, path, _first_line(error)))
    return model


def _stored_config(path) -> dict:
    """The model's architecture JSON, read without Keras so nothing in it runs."""
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise ConversionError("%s: not a valid .keras file (not a zip archive; truncated or "
                                  "corrupt?)" % path)
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        except KeyError:
            raise ConversionError("%s: not a valid .keras file (no config.json inside)" % path)
        except (zipfile.BadZipFile, ValueError, OSError) as error:
            raise ConversionError("%s: corrupt .keras file: %s" % (path, _first_line(error)))
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") in ("tf2caffe-intermediate", b"tf2caffe-intermediate"):
                raise ConversionError("%s: this is a tf2caffe intermediate, not a Keras model; "
                                      "give it to 'tf2caffe import'" % path)
            config = f.attrs.get("model_config")
    except OSError as error:
        raise ConversionError("%s: not a readable HDF5 file (truncated or corrupt?): %s" % (
            path, _first_line(error)))
    if config is None:
        raise ConversionError("%s: HDF5 file without a Keras model config (weights only?)" % path)
    try:
        return json.loads(config.decode("utf-8") if isinstance(config, bytes) else config)
    except ValueError:
        raise ConversionError("%s: the Keras model config is not valid JSON" % path)


# Layer classes of a stored config that are structure, not layers to map.
STRUCTURE_CLASSES = {"InputLayer", "Functional", "Sequential", "Model"}
LAMBDA_REASON = "holds Python code, and tf2caffe never runs code from a model file; rebuild it with built-in layers"


def _refuse_lambda_layers(path, config) -> None:
    """A model with Lambda layers is never loaded (that would run their code): refused, with every
    Lambda and every other layer whose class has no mapping, as read from the stored config (a
    layer refused for its options shows once the Lambdas are gone)."""
    lambdas, unmapped = [], []

    def visit(node):
        if isinstance(node, dict):
            kind, inner = node.get("class_name"), node.get("config") or {}
            name = str(inner.get("name") or node.get("name") or "?") if isinstance(inner, dict) else "?"
            if kind == "Lambda":
                lambdas.append(Refusal(name, kind, LAMBDA_REASON))
            elif (node.get("module") == "keras.layers" and kind not in MAPPERS
                  and kind not in STRUCTURE_CLASSES):
                unmapped.append(Refusal(name, kind, "layer class %s is not supported" % kind))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    if lambdas:
        raise UnsupportedError(lambdas + unmapped)


def _first_line(error) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Layer mapping

class Piece:
    """One vocabulary layer produced from a Keras layer.

    `suffix` extends the Keras layer's name ("" keeps it). `arrays` maps a role to
    (value, TensorFlow variable path). `compute(previous)` returns the piece's TensorFlow
    output: `previous` is the list of the node's input values for the first piece, the output
    of the piece before it otherwise. A piece with an `output` index stands for that output of a
    multi-output node (a split): it reads the node's inputs, like the first piece.
    """

    def __init__(self, suffix, type, config, compute, arrays=None, output=None):
        self.suffix = suffix
        self.type = type
        self.config = config
        self.compute = compute
        self.arrays = arrays or {}
        self.output = output


class NodeCall:
    """One call of a Keras layer or keras.ops operation, replayable with its real arguments.

    `tensor_args` says which positional arguments are tensors of the graph (the others are
    constants, such as the 3.0 of `x + 3.0`); `used_outputs`, which outputs the graph reads."""

    def __init__(self, layer, args, kwargs, inputs, tensor_args=None, used_outputs=(0,)):
        self.layer = layer
        self.args = args
        self.kwargs = kwargs
        self.inputs = inputs  # the input tensors' values, in order
        self.tensor_args = tensor_args if tensor_args is not None else [True] * len(args)
        self.used_outputs = list(used_outputs)

    def rank(self, index=0) -> int:
        return len(self.inputs[index].shape)

    def output(self, _previous=None):
        if isinstance(self.layer, keras.layers.Layer):
            return self.layer(*self.args, **dict(self.kwargs, training=False))
        return self.layer(*self.args, **self.kwargs)  # an operation has no training mode

    def linear_output(self, _previous=None):
        """The layer's output with its fused activation switched off."""
        saved = self.layer.activation
        self.layer.activation = keras.activations.linear
        try:
            return self.output()
        finally:
            self.layer.activation = saved


# Keras activation name -> (vocabulary function, extra config).
ACTIVATIONS = {
    "relu": ("relu", {}),
    "relu6": ("relu6", {}),
    "leaky_relu": ("leaky_relu", {"alpha": 0.2}),  # keras.activations.leaky_relu's default
    "elu": ("elu", {"alpha": 1.0}),
    "selu": ("selu", {}),
    "sigmoid": ("sigmoid", {}),
    "tanh": ("tanh", {}),
    "softmax": ("softmax", {}),
    "softplus": ("softplus", {}),
    "softsign": ("softsign", {}),
    "silu": ("swish", {}),
    "mish": ("mish", {}),
    # Keras 3: relu6(x + 3) / 6 (Keras 2 used 0.2 x + 0.5), so the slope is recorded.
    "hard_sigmoid": ("hard_sigmoid", {"slope": 1.0 / 6.0, "offset": 0.5}),
    "hard_silu": ("hard_swish", {}),  # x · relu6(x + 3) / 6
    "hard_swish": ("hard_swish", {}),
    "gelu": ("gelu", {"approximate": False}),  # keras.activations.gelu's default: the erf form
}


def activation_function_name(function) -> str:
    try:
        name = keras.activations.serialize(function)
    except Exception:
        name = None
    if not isinstance(name, str):
        raise Unmappable("custom activation function %r" % getattr(function, "__name__", function))
    return name


def activation_pieces(function, rank, suffix=None) -> List[Piece]:
    """The activation piece for a Keras activation function ([] for linear). `suffix`
    defaults to the function name (a fused activation); "" names the piece after the layer."""
    name = activation_function_name(function)
    if name == "linear":
        return []
    if name not in ACTIVATIONS:
        raise Unmappable("activation '%s' has no exact Caffe equivalent in tf2caffe" % name)
    vocabulary_name, extra = ACTIVATIONS[name]
    config = dict(extra, function=vocabulary_name)
    if vocabulary_name == "softmax":
        config["axis"] = rank - 1
    return [Piece(vocabulary_name if suffix is None else suffix, "activation", config,
                  lambda previous: function(previous))]


def weights(layer, **roles) -> Dict[str, tuple]:
    """{role: (array, variable path)} for the given role=attribute pairs (None skips)."""
    arrays = {}
    for role, attribute in roles.items():
        if attribute is None:
            continue
        value = getattr(layer, attribute)
        path = getattr(value, "path", "%s/%s" % (layer.name, attribute))
        arrays[role] = (to_numpy(value, np.float32), path)
    return arrays


def to_numpy(value, dtype) -> np.ndarray:
    """A Keras variable, tensor or number as a numpy array."""
    return np.asarray(tf.convert_to_tensor(value).numpy(), dtype=dtype)


def pair(value) -> List[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def require_channels_last(layer) -> None:
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format not in (None, "channels_last"):
        raise Unmappable("data_format '%s' (only channels_last is supported)" % data_format)


def _conv2d(layer, call):
    require_channels_last(layer)
    config = dict(filters=int(layer.filters), kernel_size=pair(layer.kernel_size),
                  strides=pair(layer.strides), dilation=pair(layer.dilation_rate),
                  padding=layer.padding, groups=int(layer.groups))
    arrays = weights(layer, kernel="kernel", bias="bias" if layer.use_bias else None)
    return [Piece("", "conv2d", config, call.linear_output, arrays)] + activation_pieces(
        layer.activation, 4)


def _depthwise_conv2d(layer, call):
    require_channels_last(layer)
    config = dict(depth_multiplier=int(layer.depth_multiplier), kernel_size=pair(layer.kernel_size),
                  strides=pair(layer.strides), dilation=pair(layer.dilation_rate),
                  padding=layer.padding)
    arrays = weights(layer, kernel="kernel", bias="bias" if layer.use_bias else None)
    return [Piece("", "depthwise_conv2d", config, call.linear_output, arrays)] + activation_pieces(
        layer.activation, 4)


def _separable_conv2d(layer, call):
    require_channels_last(layer)
    depthwise = weights(layer, kernel="depthwise_kernel")
    pointwise = weights(layer, kernel="pointwise_kernel", bias="bias" if layer.use_bias else None)
    multiplier = int(depthwise["kernel"][0].shape[3])

    def depthwise_output(_previous):
        return keras.ops.depthwise_conv(call.inputs[0], layer.depthwise_kernel, strides=layer.strides,
                                        padding=layer.padding, dilation_rate=layer.dilation_rate)

    def pointwise_output(previous):
        output = keras.ops.conv(previous, layer.pointwise_kernel, strides=1, padding="valid")
        return output + layer.bias if layer.use_bias else output

    return [
        Piece("depthwise", "depthwise_conv2d", dict(
            depth_multiplier=multiplier, kernel_size=pair(layer.kernel_size),
            strides=pair(layer.strides), dilation=pair(layer.dilation_rate),
            padding=layer.padding), depthwise_output, depthwise),
        Piece("", "conv2d", dict(filters=int(layer.filters), kernel_size=[1, 1], strides=[1, 1],
                                 dilation=[1, 1], padding="valid", groups=1),
              pointwise_output, pointwise),
    ] + activation_pieces(layer.activation, 4)


def _conv2d_transpose(layer, call):
    require_channels_last(layer)
    if layer.output_padding is not None:
        raise Unmappable("output_padding=%s is not supported" % (layer.output_padding,))
    if pair(layer.dilation_rate) != [1, 1]:
        raise Unmappable("dilation_rate=%s is not supported" % (layer.dilation_rate,))
    config = dict(filters=int(layer.filters), kernel_size=pair(layer.kernel_size),
                  strides=pair(layer.strides), padding=layer.padding)
    arrays = weights(layer, kernel="kernel", bias="bias" if layer.use_bias else None)
    return [Piece("", "conv2d_transpose", config, call.linear_output, arrays)] + activation_pieces(
        layer.activation, 4)


def _dense(layer, call):
    rank = call.rank()
    arrays = weights(layer, kernel="kernel", bias="bias" if layer.use_bias else None)
    if rank == 2:
        piece = Piece("", "dense", dict(units=int(layer.units)), call.linear_output, arrays)
    elif rank == 4:
        # Dense on NHWC multiplies the channel vector at every position: a 1x1 convolution.
        kernel, path = arrays["kernel"]
        arrays["kernel"] = (kernel.reshape((1, 1) + kernel.shape), path)
        piece = Piece("", "conv2d", dict(filters=int(layer.units), kernel_size=[1, 1],
                                         strides=[1, 1], dilation=[1, 1], padding="valid",
                                         groups=1), call.linear_output, arrays)
    else:
        raise Unmappable("Dense on a %d-D input (only 2-D, or 4-D as a 1x1 convolution)" % rank)
    return [piece] + activation_pieces(layer.activation, 2 if rank == 2 else 4)


def _batch_norm(layer, call):
    rank = call.rank()
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [axis % rank for axis in axes] != [rank - 1]:
        raise Unmappable("normalises axis %s; only the last (channel) axis is supported" % (layer.axis,))
    arrays = weights(layer, moving_mean="moving_mean", moving_variance="moving_variance",
                     gamma="gamma" if layer.scale else None, beta="beta" if layer.center else None)
    return [Piece("", "batch_norm", dict(epsilon=float(layer.epsilon)), call.output, arrays)]


def _pool(kind):
    def mapper(layer, call):
        require_channels_last(layer)
        config = dict(pool_size=pair(layer.pool_size), strides=pair(layer.strides),
                      padding=layer.padding)
        return [Piece("", kind, config, call.output)]
    return mapper


def _global_pool(kind):
    def mapper(layer, call):
        require_channels_last(layer)
        return [Piece("", kind, dict(keepdims=bool(layer.keepdims)), call.output)]
    return mapper


def _pad2d(layer, call):
    require_channels_last(layer)
    padding = [pair(side) for side in layer.padding]
    return [Piece("", "pad2d", dict(padding=padding, mode="constant", value=0.0), call.output)]


def _crop2d(layer, call):
    require_channels_last(layer)
    return [Piece("", "crop2d", dict(cropping=[pair(side) for side in layer.cropping]), call.output)]


def _activation(layer, call):
    pieces = activation_pieces(layer.activation, call.rank(), suffix="")
    if not pieces:
        return [Piece("", "identity", dict(reason="linear activation"), call.output)]
    pieces[0].compute = call.output
    return pieces


def _relu(layer, call):
    max_value = None if layer.max_value is None else float(layer.max_value)
    slope, threshold = float(layer.negative_slope), float(layer.threshold)
    if slope == 0.0 and threshold == 0.0 and max_value in (None, 6.0):
        config = dict(function="relu" if max_value is None else "relu6")
    elif threshold == 0.0 and max_value is None:
        config = dict(function="leaky_relu", alpha=slope)
    else:
        config = dict(function="relu", max_value=max_value, negative_slope=slope,
                      threshold=threshold)
    return [Piece("", "activation", config, call.output)]


def _leaky_relu(layer, call):
    return [Piece("", "activation", dict(function="leaky_relu", alpha=float(layer.negative_slope)),
                  call.output)]


def _elu(layer, call):
    return [Piece("", "activation", dict(function="elu", alpha=float(layer.alpha)), call.output)]


def _softmax(layer, call):
    rank = call.rank()
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1:
        raise Unmappable("softmax over several axes %s" % (layer.axis,))
    return [Piece("", "activation", dict(function="softmax", axis=axes[0] % rank), call.output)]


def _prelu(layer, call):
    shared = sorted(int(axis) for axis in (layer.shared_axes or []))
    return [Piece("", "prelu", dict(shared_axes=shared), call.output, weights(layer, alpha="alpha"))]


def _elementwise(kind):
    def mapper(layer, call):
        return [Piece("", kind, {}, call.output)]
    return mapper


def _concat(layer, call):
    return [Piece("", "concat", dict(axis=int(layer.axis) % call.rank()), call.output)]


def _flatten(layer, call):
    require_channels_last(layer)
    return [Piece("", "flatten", {}, call.output)]


def _reshape(layer, call):
    # The walker replaces target_shape by the concrete output shape (a -1 resolved).
    return [Piece("", "reshape", dict(target_shape=list(layer.target_shape)), call.output)]


def _permute(layer, call):
    return [Piece("", "permute", dict(dims=[int(d) for d in layer.dims]), call.output)]


def _identity(layer, call):
    return [Piece("", "identity", dict(reason="%s: identity at inference" % type(layer).__name__),
                  call.output)]


def _upsample2d(layer, call):
    require_channels_last(layer)
    return [Piece("", "upsample2d", dict(size=pair(layer.size), interpolation=layer.interpolation),
                  call.output)]


def _resizing(layer, call):
    require_channels_last(layer)
    if layer.interpolation not in ("bilinear", "nearest") or layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio:
        raise Unmappable("only plain bilinear or nearest resizing is supported (got interpolation '%s'%s)" % (
            layer.interpolation, ", cropping or padding to the aspect ratio"
            if layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio else ""))
    if layer.antialias and any(int(o) < int(i) for o, i in zip((layer.height, layer.width),
                                                                call.inputs[0].shape[1:3])):
        raise Unmappable("antialiased downsampling")
    # keras.ops.image.resize samples with half-pixel centres.
    kind = "resize_%s" % layer.interpolation
    return [Piece("", kind, dict(size=[int(layer.height), int(layer.width)], mode="half_pixel"), call.output)]


def _number_or_list(value):
    values = to_numpy(value, np.float64).ravel()
    return float(values[0]) if values.size == 1 else [float(v) for v in values]


def _rescale(layer, call):
    return [Piece("", "rescale", dict(scale=_number_or_list(layer.scale),
                                      offset=_number_or_list(layer.offset)), call.output)]


def _normalize(layer, call):
    if layer.invert:
        raise Unmappable("invert=True is not supported")
    rank, channels = call.rank(), int(call.inputs[0].shape[-1])
    axes = [axis % rank for axis in (layer.axis or ())]
    if axes not in ([rank - 1], []):
        raise Unmappable("normalises axes %s; only the last (channel) axis is supported" % (layer.axis,))
    arrays = {}
    for role in ("mean", "variance"):
        value = to_numpy(getattr(layer, role), np.float32).ravel()
        variable = [v.path for v in layer.weights if v.path.endswith("/" + role)]
        arrays[role] = (np.broadcast_to(value, (channels,)).copy(),
                        variable[0] if variable else "%s/%s" % (layer.name, role))
    config = dict(epsilon=float(keras.backend.epsilon()))  # Keras: max(sqrt(var), epsilon)
    return [Piece("", "normalize", config, call.output, arrays)]


def _unit_normalization(layer, call):
    # Keras: x · min(rsqrt(sum(x²)), 1/eps) = x · rsqrt(max(sum(x²), eps²)), eps = 1e-12.
    rank = call.rank()
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    config = {"axes": sorted(int(a) % rank for a in axis), "epsilon": 1e-24}
    return [Piece("", "l2_normalize", config, call.output)]


def _layer_norm(layer, call):
    rank = call.rank()
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [axis % rank for axis in axes] != [rank - 1]:
        raise Unmappable("normalises axes %s; only the last (channel) axis is supported" % (layer.axis,))
    if getattr(layer, "rms_scaling", False):
        raise Unmappable("rms_scaling=True is not supported")
    arrays = weights(layer, gamma="gamma" if layer.scale else None,
                     beta="beta" if layer.center else None)
    return [Piece("", "layer_norm", dict(epsilon=float(layer.epsilon)), call.output, arrays)]


def _layer_scale(layer, call):
    # ConvNeXt's LayerScale: x · gamma, one learned factor per channel.
    return [Piece("", "rescale", {}, call.output, weights(layer, scale="gamma"))]


def _custom_scale(layer, call):
    # InceptionResNetV2's CustomScaleLayer: inputs[0] + inputs[1] · scale.
    return [Piece("", "add", dict(coefficients=[1.0, float(layer.scale)]), call.output)]


def _sequential(model, call):
    """A Sequential model used as a layer (ConvNeXt's stem and downsampling blocks): its layers
    in order, each named `<sequential>/<layer>`."""
    pieces, value = [], call.inputs[0]
    for inner in model.layers:
        inner_call = NodeCall(inner, (value,), {}, [value])
        try:
            inner_pieces = map_layer(inner, inner_call)
        except Unmappable as reason:
            raise Unmappable("its layer '%s' (%s): %s" % (inner.name, type(inner).__name__, reason))
        for piece in inner_pieces:
            piece.suffix = inner.name + ("/" + piece.suffix if piece.suffix else "")
        pieces += inner_pieces
        value = inner_call.output()
    return pieces


MAPPERS: Dict[str, Callable] = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": _depthwise_conv2d,
    "SeparableConv2D": _separable_conv2d,
    "Conv2DTranspose": _conv2d_transpose,
    "Dense": _dense,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _pool("max_pool2d"),
    "AveragePooling2D": _pool("avg_pool2d"),
    "GlobalMaxPooling2D": _global_pool("global_max_pool2d"),
    "GlobalAveragePooling2D": _global_pool("global_avg_pool2d"),
    "ZeroPadding2D": _pad2d,
    "Cropping2D": _crop2d,
    "Activation": _activation,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "Softmax": _softmax,
    "PReLU": _prelu,
    "Add": _elementwise("add"),
    "Subtract": _elementwise("subtract"),
    "Multiply": _elementwise("multiply"),
    "Maximum": _elementwise("maximum"),
    "Minimum": _elementwise("minimum"),
    "Average": _elementwise("average"),
    "Concatenate": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "Dropout": _identity,
    "SpatialDropout2D": _identity,
    "GaussianNoise": _identity,
    "GaussianDropout": _identity,
    "AlphaDropout": _identity,
    "ActivityRegularization": _identity,
    "Identity": _identity,
    "UpSampling2D": _upsample2d,
    "Resizing": _resizing,
    "Rescaling": _rescale,
    "Normalization": _normalize,
    "UnitNormalization": _unit_normalization,
    "LayerNormalization": _layer_norm,
    "LayerScale": _layer_scale,  # keras.applications.convnext
    "StochasticDepth": _identity,  # keras.applications.convnext: drops paths only in training
    "CustomScaleLayer": _custom_scale,  # keras.applications.inception_resnet_v2
}


# ---------------------------------------------------------------------------------------------
# keras.ops operation nodes: Keras 3 records `x + 3.0`, `ops.mean(x, axis)` and the like on
# symbolic tensors as operations in the functional graph, beside the layers.

def _constant(value, call) -> np.ndarray:
    """A constant operand as float64: a scalar or one value per channel of the tensor operand."""
    array = to_numpy(value, np.float64)
    channels = int(call.inputs[0].shape[-1])
    if array.size == 1:
        return array.reshape(())
    if array.size == channels and all(d == 1 for d in array.shape[:-1]) and array.ndim <= call.rank():
        return array.reshape(-1)
    raise Unmappable("a constant operand of shape %s (only a scalar or one value per channel of "
                     "the %s tensor)" % (tuple(array.shape), tuple(call.inputs[0].shape)))


def _rescale_piece(op, scale, offset, compute) -> Piece:
    """x·scale + offset: numbers in the config, per-channel vectors as arrays."""
    config, arrays = {}, {}
    for role, value in (("scale", scale), ("offset", offset)):
        value = np.asarray(value, np.float64)
        if value.ndim == 0:
            config[role] = float(value)
        else:
            arrays[role] = (value.astype(np.float32), "%s/%s" % (op.name, role))
    return Piece("", "rescale", config, compute, arrays)


def _arithmetic(kind):
    """add, subtract, multiply, divide (and maximum, minimum) of two tensors, or of a tensor
    and a constant."""
    def mapper(op, call):
        if all(call.tensor_args[:2]):
            if kind == "divide":
                raise Unmappable("division of two tensors (Caffe has no element-wise division)")
            return [Piece("", kind, {}, call.output)]
        tensor_first = call.tensor_args[0]
        c = _constant(call.args[1 if tensor_first else 0], call)
        if kind == "add":
            return [_rescale_piece(op, 1.0, c, call.output)]
        if kind == "subtract":
            return [_rescale_piece(op, 1.0, -c, call.output) if tensor_first else
                    _rescale_piece(op, -1.0, c, call.output)]
        if kind == "multiply":
            return [_rescale_piece(op, c, 0.0, call.output)]
        if kind == "divide" and tensor_first:
            # x · (1/c) where TensorFlow divides by c: they differ by at most one rounding.
            return [_rescale_piece(op, 1.0 / c, 0.0, call.output)]
        if kind == "divide":
            return [Piece("reciprocal", "activation", dict(function="power", exponent=-1.0),
                          lambda previous: 1.0 / previous[0]),
                    _rescale_piece(op, c, 0.0, call.output)]
        raise Unmappable("%s of a tensor and a constant is not supported" % kind)
    return mapper


def _operation_activation(function, **attributes):
    """An activation operation; `attributes` maps config keys to the operation's attributes."""
    def mapper(op, call):
        config = dict(function=function)
        config.update({key: getattr(op, attribute) for key, attribute in attributes.items()})
        if function == "softmax":
            config["axis"] = int(op.axis) % call.rank()
        return [Piece("", "activation", config, call.output)]
    return mapper


def _operation_reduce(operation):
    def mapper(op, call):
        if op.axis is None:
            raise Unmappable("%s over every axis, the batch axis included" % operation)
        return [Piece("", "reduce", dict(operation=operation, keepdims=bool(op.keepdims),
                                         axes=sorted(int(a) % call.rank() for a in op.axis)),
                      call.output)]
    return mapper


def _operation_concat(op, call):
    return [Piece("", "concat", dict(axis=int(op.axis) % len(call.output().shape)), call.output)]


def _operation_reshape(op, call):
    # reshape, squeeze and expand_dims: the reshape handler converts those where Caffe's element
    # order is TensorFlow's, and names the others. The walker sets the concrete target shape.
    return [Piece("", "reshape", dict(target_shape=[]), call.output)]


def _operation_permute(op, call):
    """transpose, swapaxes, moveaxis: the permutation read off the op applied to a tensor whose
    axes have distinct sizes."""
    rank = call.rank()
    perm = [int(size) - 2 for size in op(tf.zeros(list(range(2, rank + 2)))).shape]
    if perm[0] != 0:
        raise Unmappable("permutation %s moves the batch axis" % perm)
    return [Piece("", "permute", dict(dims=perm[1:]), call.output)]


def _index_operand(op, call):
    """The op applied to an index array in place of its tensor operand (export/slicing.py)."""
    if len(call.inputs) != 1 or not call.tensor_args[0]:
        raise Unmappable("indices computed from the input")
    return lambda index: op(tf.constant(index), *call.args[1:], **call.kwargs)


def _operation_slice(op, call):
    """x[:, 1:3, ::2] (GetItem) and ops.slice."""
    return [Piece("", "slice", slice_config(call.inputs[0].shape, _index_operand(op, call)), call.output)]


def _operation_split(op, call):
    """split and unstack: one slice per output the graph reads (`call.used_outputs`)."""
    taken = _index_operand(op, call)
    return [Piece("" if i == 0 else str(i), "slice",
                  slice_config(call.inputs[0].shape, lambda index, i=i: taken(index)[i]),
                  lambda _previous, i=i: call.output()[i], output=i)
            for i in call.used_outputs]


def _operation_stack(op, call):
    """stack([a, b, ...], axis): the inputs concatenated along `axis`, whose length n·L a reshape
    then splits into (n, L): TensorFlow's element order. A new last axis interleaves the inputs:
    concatenated along the last axis, reshaped to (..., n, L), then the last two axes swapped."""
    rank = call.rank()
    axis = int(op.axis) % (rank + 1)
    if axis == 0:
        raise Unmappable("stacks along the batch axis")
    joined = min(axis, rank - 1)
    shape = [int(d) for d in call.inputs[0].shape]
    split = shape[:joined] + [len(call.inputs), shape[joined]] + shape[joined + 1:]
    pieces = [Piece("concat", "concat", dict(axis=joined), lambda previous: tf.concat(previous, joined)),
              Piece("", "reshape", dict(target_shape=[]), lambda previous: tf.reshape(previous, split))]
    if axis == rank:
        pieces[-1].suffix = "reshape"
        pieces.append(Piece("", "permute", dict(dims=list(range(1, rank - 1)) + [rank, rank - 1]),
                            lambda previous: tf.experimental.numpy.swapaxes(previous, -1, -2)))
    return pieces


OPERATIONS: Dict[str, Callable] = {
    "Add": _arithmetic("add"),
    "Subtract": _arithmetic("subtract"),
    "Multiply": _arithmetic("multiply"),
    "Divide": _arithmetic("divide"),
    "TrueDivide": _arithmetic("divide"),
    "Maximum": _arithmetic("maximum"),
    "Minimum": _arithmetic("minimum"),
    "Relu": _operation_activation("relu"),
    "Relu6": _operation_activation("relu6"),
    "Sigmoid": _operation_activation("sigmoid"),
    "Tanh": _operation_activation("tanh"),
    "Silu": _operation_activation("swish"),
    "HardSigmoid": _operation_activation("hard_sigmoid"),  # relu6(x + 3) / 6: the handler's default
    "HardSilu": _operation_activation("hard_swish"),
    "Gelu": _operation_activation("gelu", approximate="approximate"),
    "Elu": _operation_activation("elu", alpha="alpha"),
    "LeakyRelu": _operation_activation("leaky_relu", alpha="negative_slope"),
    "Selu": _operation_activation("selu"),
    "Softplus": _operation_activation("softplus"),
    "Softmax": _operation_activation("softmax"),
    "Mean": _operation_reduce("mean"),
    "Max": _operation_reduce("max"),
    "Min": _operation_reduce("min"),
    "Sum": _operation_reduce("sum"),
    "Concatenate": _operation_concat,
    "Reshape": _operation_reshape,
    "Squeeze": _operation_reshape,
    "ExpandDims": _operation_reshape,
    "Transpose": _operation_permute,
    "Moveaxis": _operation_permute,
    "Swapaxes": _operation_permute,
    "GetItem": _operation_slice,
    "Slice": _operation_slice,
    "Split": _operation_split,
    "Unstack": _operation_split,
    "Stack": _operation_stack,
}


def map_layer(layer, call) -> List[Piece]:
    """The vocabulary pieces of one Keras layer, nested Sequential or keras.ops operation."""
    kind = type(layer).__name__
    if isinstance(layer, keras.Sequential):
        return _sequential(layer, call)
    if isinstance(layer, keras.Model):
        raise Unmappable("nested functional model; tf2caffe flattens only nested Sequential models")
    if not type(layer).__module__.startswith("keras."):
        raise Unmappable("class %s is not a built-in Keras class" % kind)
    if not isinstance(layer, keras.layers.Layer):
        if kind not in OPERATIONS:
            raise Unmappable("operation %s is not supported" % kind)
        return OPERATIONS[kind](layer, call)
    if kind not in MAPPERS:
        raise Unmappable("layer class %s is not supported" % kind)
    return MAPPERS[kind](layer, call)


# ---------------------------------------------------------------------------------------------
# The walk

def functional_graph(model) -> keras.Model:
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ConversionError("Sequential model '%s' has no defined input; build it with "
                                  "keras.Input(shape) first" % model.name)
        return graph
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "inputs", None):
        raise ConversionError("model '%s' is a subclassed Keras model without a layer graph; "
                              "only functional and Sequential models are supported" % model.name)
    return model


def input_shapes(graph, input_shape: Optional[Sequence[int]]) -> List[List[int]]:
    """Concrete shapes of the model inputs: --input-shape fills undefined dimensions."""
    shapes = []
    for tensor in graph.inputs:
        name = tensor._keras_history.operation.name
        shape = list(tensor.shape)
        if input_shape is not None:
            if len(input_shape) != len(shape):
                raise ConversionError("--input-shape %s has %d dimensions; input '%s' has %d %s" % (
                    ",".join(map(str, input_shape)), len(input_shape), name, len(shape), tuple(shape)))
            for axis, (own, given) in enumerate(zip(shape, input_shape)):
                if own is None or axis == 0:
                    shape[axis] = int(given)
                elif int(own) != int(given):
                    raise ConversionError("--input-shape %s contradicts input '%s' %s at axis %d" % (
                        ",".join(map(str, input_shape)), name, tuple(tensor.shape), axis))
        elif shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise ConversionError("input '%s' has undefined dimensions %s; give --input-shape "
                                  "N,H,W,C" % (name, tuple(tensor.shape)))
        shapes.append([int(d) for d in shape])
    return shapes


def _float64_config(config):
    """A layer's config with every dtype (a DTypePolicy or a dtype name) made float64, and every
    initializer zeros: the twin's weights are all set from the layer's, and drawing random ones
    first took most of the float64 walk's time (ResNet50: 1.8 of 4 s)."""
    if isinstance(config, dict):
        return {key: "float64" if key == "dtype" and _is_float32(value) else
                "zeros" if key.endswith("_initializer") and value is not None else _float64_config(value)
                for key, value in config.items()}
    if isinstance(config, list):
        return [_float64_config(value) for value in config]
    return config


def _is_float32(dtype) -> bool:
    if isinstance(dtype, dict):  # a serialized DTypePolicy
        return dtype.get("config", {}).get("name") == "float32"
    return dtype in ("float32", None)


def float64_twin(layer):
    """The layer rebuilt from its config under a float64 dtype policy, holding its weights in
    float64 (a float32 weight is exact in float64). A keras.ops operation has no dtype of its own:
    given float64 tensors, it computes in float64 (a float32 constant operand is promoted)."""
    if not isinstance(layer, keras.layers.Layer):
        return layer
    twin = type(layer).from_config(_float64_config(layer.get_config()))
    twin.build_from_config(layer.get_build_config())
    twin.set_weights([np.asarray(w, np.float64) for w in layer.get_weights()])
    return twin


class GraphWalk:
    """Runs a functional graph node by node in topological order, mapping each layer onto
    vocabulary layers and keeping every vocabulary layer's TensorFlow output.

    With `float64`, each layer runs as its float64 twin on float64 inputs: the float64 truth of
    the same weights and input (see graph/float64.py for why verification wants it)."""

    def __init__(self, graph, name, float64=False):
        self.graph, self.name, self.float64 = graph, name, float64
        self.values = {}  # id(KerasTensor) -> its value
        self.names = {}  # id(KerasTensor) -> the vocabulary layer that outputs it
        self.layers: List[intermediate.Layer] = []
        self.activations = {}
        self.problems = []
        self.failures = []
        self.failure = None  # the first failure's exception: the traceback --debug shows
        self.uses = {}
        self.read = {id(tensor) for tensor in graph.outputs}  # id(KerasTensor) of every tensor read
        for nodes in graph._nodes_by_depth.values():
            for node in nodes:
                self.uses[id(node.operation)] = self.uses.get(id(node.operation), 0) + 1
                self.read.update(id(tensor) for tensor in node.input_tensors)

    def run(self, inputs, step: str) -> "GraphWalk":
        """Visit every node, from the model inputs' values `inputs`, showing progress as `step`."""
        for tensor, value in zip(self.graph.inputs, inputs):
            self.add_input(tensor, value)
        nodes = [node for depth in sorted(self.graph._nodes_by_depth, reverse=True)
                 for node in self.graph._nodes_by_depth[depth] if node.operation and not node.is_input]
        for node in progress.each(nodes, step, "layer"):
            self.visit(node)
        return self

    def add_input(self, tensor, value) -> None:
        name = tensor._keras_history.operation.name
        value = value.astype(np.float64) if self.float64 else value
        self.values[id(tensor)], self.names[id(tensor)] = tf.constant(value), name
        self.layers.append(intermediate.Layer(name, "input", config=dict(shape=list(value.shape)),
                                              output_shape=value.shape))
        self.activations[name] = value

    def visit(self, node) -> None:
        layer = node.operation
        args, kwargs = node.arguments.fill_in(self.values)
        call = NodeCall(layer, args, kwargs, [self.values[id(t)] for t in node.input_tensors],
                        [isinstance(arg, keras.KerasTensor) for arg in node.arguments.args],
                        [i for i, tensor in enumerate(node.outputs) if id(tensor) in self.read])
        kind = type(layer).__name__
        try:
            if self.uses[id(layer)] > 1:
                raise Unmappable("called %d times (shared layers are not supported)" % self.uses[id(layer)])
            if self.float64:
                layer = call.layer = float64_twin(layer)
            pieces = map_layer(layer, call)
            if len(node.outputs) != 1 and not all(piece.output is not None for piece in pieces):
                raise Unmappable("%d outputs (only single-output layers are supported)" % len(node.outputs))
            computed = self.compute(layer, call, pieces)
        except Unmappable as reason:
            self.problems.append(Refusal(layer.name, kind, reason))
            self.stand_in(node, call)
            return
        except ConversionError:
            raise
        except Exception as error:  # a bug or a Keras surprise in a supported layer: not "unsupported"
            self.failures.append(Refusal(layer.name, kind, _first_line(error)))
            self.failure = self.failure or error
            self.stand_in(node, call)
            return
        node_inputs = inputs = [self.names[id(t)] for t in node.input_tensors]
        for piece, (name, value) in zip(pieces, computed):
            inputs = node_inputs if piece.output is not None else inputs
            self.layers.append(intermediate.Layer(
                name, piece.type, inputs, piece.config, list(value.shape),
                {role: array for role, (array, _) in piece.arrays.items()},
                {role: path for role, (_, path) in piece.arrays.items()}))
            self.activations[name] = value
            inputs = [name]
            if piece.output is not None:
                self.values[id(node.outputs[piece.output])], self.names[id(node.outputs[piece.output])] = value, name
        if pieces[-1].output is None:
            self.values[id(node.outputs[0])], self.names[id(node.outputs[0])] = computed[-1][1], inputs[0]

    @staticmethod
    def compute(layer, call, pieces) -> List[tuple]:
        """(vocabulary layer name, TensorFlow output) of each piece, checked against the layer."""
        computed, value = [], call.inputs
        for piece in pieces:
            value = piece.compute(call.inputs if piece.output is not None else value)
            if piece.type == "reshape":
                piece.config["target_shape"] = list(value.shape[1:])  # a -1 resolved
            computed.append((layer.name + ("/" + piece.suffix if piece.suffix else ""), value))
        if len(pieces) > 1 and pieces[-1].output is None:  # a split's pieces are its outputs
            error = relative_error(value, call.output())
            if error > EAGER_TOLERANCE:
                raise ConversionError("'%s' (%s): its %d vocabulary layers compute something else "
                                      "than the layer (relative error %.3g)" % (
                                          layer.name, type(layer).__name__, len(pieces), error))
        return computed

    def stand_in(self, node, call) -> None:
        """Keep walking past a refused or failed node, so that every later one is checked too: its
        output stands in as an input, so the import side can check the layers after it."""
        layer = node.operation
        try:
            outputs = tf.nest.flatten(call.output())
        except Exception as error:  # nothing to stand in: report what is known so far
            self.failures.append(Refusal(layer.name, type(layer).__name__, _first_line(error)))
            raise self.error() from (self.failure or error)
        for tensor, value in zip(node.outputs, outputs):
            self.values[id(tensor)], self.names[id(tensor)] = value, layer.name
        if layer.name not in {known.name for known in self.layers}:
            self.layers.append(intermediate.Layer(layer.name, "input", config=dict(
                shape=list(value.shape)), output_shape=value.shape))

    def error(self, outputs=()) -> UnsupportedError:
        # Without failures, what could be mapped lets --check-only check the rest; a failure is
        # an error to report as such, never a list of problems to check further.
        partial = None if self.failures else intermediate.Model(self.name, self.layers, list(outputs))
        # a shared layer is refused once
        return UnsupportedError(list(dict.fromkeys(self.problems)), partial, self.failures)


def model_to_intermediate(model, name, input_shape=None, per_layer=False, seed=0,
                          user_input=None) -> intermediate.Model:
    """Map a Keras 3 functional/Sequential model onto the vocabulary, with TensorFlow's
    reference activations for a seeded standard-normal input (and `user_input`, see reference.py).

    Raises UnsupportedError listing every layer that cannot be mapped, after the whole model
    has been walked."""
    graph = functional_graph(model)
    shapes = input_shapes(graph, input_shape)
    inputs = reference_batch(shapes, seed, user_input, "model '%s': " % name,
                             [tensor._keras_history.operation.name for tensor in graph.inputs])
    walk = GraphWalk(graph, name).run(inputs, "forward pass, layer by layer")
    outputs = [walk.names[id(tensor)] for tensor in graph.outputs]
    if walk.problems or walk.failures:
        raise walk.error(outputs) from walk.failure

    expected = tf.nest.flatten(model(inputs if len(inputs) > 1 else inputs[0], training=False))
    for output, tensor, reference in zip(outputs, graph.outputs, expected):
        error = relative_error(walk.values[id(tensor)], reference)
        if error > EAGER_TOLERANCE:
            raise ConversionError("model '%s': layer-by-layer execution differs from model(x) at "
                                  "output '%s' (relative error %.3g)" % (model.name, output, error))

    result = intermediate.Model(
        name, walk.layers, outputs,
        attrs=dict(source_framework="keras", source_version=keras.__version__,
                   tensorflow_version=tf.__version__, source_path="(in memory)",
                   output_names=json.dumps([tensor._keras_history.operation.name for tensor in graph.outputs])),
        reference_inputs={layer.name: value for layer, value in zip(walk.layers, inputs)})
    stored = [layer.name for layer in walk.layers] if per_layer else result.compared_layers()
    result.reference_activations = {layer: np.asarray(walk.activations[layer], dtype=np.float32)
                                    for layer in stored}
    truths, why_not = float64_truth(graph, name, inputs, stored)
    if truths is None:
        result.attrs["float64_reference"] = "none: %s" % why_not
    else:
        result.reference_float64 = truths
    return result


def float64_truth(graph, name, inputs, stored):
    """({layer: float64 activation}, None) of the same walk with every layer's float64 twin, or
    (None, why there is no float64 truth)."""
    walk = GraphWalk(graph, name, float64=True).run(inputs, "float64 forward pass, layer by layer")
    if walk.problems or walk.failures:
        return None, str(walk.error())
    truths = {layer: np.asarray(walk.activations[layer]) for layer in stored}
    in_float32 = [layer for layer in stored if truths[layer].dtype != np.float64]
    if in_float32:  # a layer that ignores its dtype policy: its output would be no truth
        return None, "layer '%s' computes in %s under a float64 dtype policy" % (
            in_float32[0], truths[in_float32[0]].dtype)
    return truths, None
