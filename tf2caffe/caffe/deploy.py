"""Deployment options: passes over the emitted Caffe net, after every handler has run.

- `fold_zero_padding` (default on): a zero-padding Convolution (pad2d's ones-weighted grouped 1x1
  Convolution, symmetric, nothing cut off after it) whose only consumer is a Convolution becomes
  part of that Convolution's `pad`. Exact: zero padding p then zero padding q is zero padding
  p + q, whatever the Convolution does with its own pad (a Slice after it still cuts the same
  rows). Into a MAX Pooling only after a ReLU (`_max_pool_takes`): Caffe pads MAX with -inf. Never
  into AVE pooling: Caffe counts pads in its divisor differently from TensorFlow's zeros.
- `fold_batch_norm` (--fold-bn): BatchNorm (+ Scale) merged into the Convolution / InnerProduct
  that feeds it alone (directly or through its odd-'same' crops). Not exact: the rounding
  differs; verification measures it.
- `input_to_bgr` (--bgr): the net takes the input's channels reversed. Channel-wise layers on the
  input (Scale, BatchNorm, Power, activations, depthwise convolutions with one output per
  channel, zero padding, ...) get their per-channel constants reversed and
  pass the reversal on; the first Convolution / InnerProduct absorbs it in its input-channel
  weights. Anything else (a Concat, a grouped Convolution, a net output) is refused by name.
- `preprocess_input` (--mean/--scale): the net takes raw values x and computes
  (x - mean)·scale per channel first, as OpenCV's blobFromImage(scalefactor, mean) does (one
  scale per channel allowed). Folded into the first Convolution when it is the input's only
  consumer and has no padding (a padded border would see -mean·scale instead of zero, so no fold
  there) or into an InnerProduct; otherwise an explicit Scale layer with a bias (BVLC).

BGR runs before the preprocessing, so mean and scale are in the order of the net's input
channels (B, G, R with --bgr). `DeployOptions.raw_input` is the inverse: what the user feeds for
a value the source takes (verification feeds that). Runs on Python 3.9 / numpy 1.19.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import ConversionError
from .handlers.spatial import caffe_pool_count
from .netspec import CaffeLayer, LazyBlob, NetSpec


@dataclass
class DeployOptions:
    bgr: bool = False
    mean: Optional[List[float]] = None  # per channel (or one value), in the net's input channel order
    scale: Optional[List[float]] = None
    fold_bn: bool = False
    fold_padding: bool = True

    def changes_the_input(self) -> bool:
        return self.bgr or self.mean is not None or self.scale is not None

    def check_prototxt(self, prototxt: Optional[str]) -> None:
        """The options rewrite the generated net; a hand-written one is filled as it is written
        (zero padding stays too)."""
        if prototxt and (self.changes_the_input() or self.fold_bn):
            raise ConversionError("%s: --bgr, --mean, --scale and --fold-bn rewrite the generated prototxt; "
                                  "drop --prototxt or those options" % prototxt)

    def argv(self) -> List[str]:
        """The import stage's options for these choices (import_options.add_deploy_arguments)."""
        argv = []
        for flag, wanted in (("--bgr", self.bgr), ("--fold-bn", self.fold_bn),
                             ("--no-fold-padding", not self.fold_padding)):
            if wanted:
                argv.append(flag)
        for flag, values in (("--mean", self.mean), ("--scale", self.scale)):
            if values is not None:
                argv += [flag, ",".join(repr(float(v)) for v in values)]
        return argv

    def to_json(self) -> Dict:
        return {"bgr": self.bgr, "mean": self.mean, "scale": self.scale, "fold_bn": self.fold_bn,
                "fold_padding": self.fold_padding}

    @classmethod
    def from_json(cls, data: Optional[Dict]) -> "DeployOptions":
        if not data:
            return cls()
        return cls(bool(data["bgr"]), data["mean"], data["scale"], bool(data["fold_bn"]), bool(data["fold_padding"]))

    def raw_input(self, value: np.ndarray) -> np.ndarray:
        """What the user feeds the net (Caffe layout, channels on axis 1) for `value`, the source's
        input: the preprocessing undone, then the channels reversed for --bgr."""
        raw = np.asarray(value, np.float64)
        if self.bgr:
            raw = raw[:, ::-1]
        channels = (1, -1) + (1,) * (raw.ndim - 2)
        if self.scale is not None:
            raw = raw / np.asarray(self.scale, np.float64).reshape(channels)
        if self.mean is not None:
            raw = raw + np.asarray(self.mean, np.float64).reshape(channels)
        return raw.astype(np.float32)


class Deployed(NamedTuple):
    applied: List[str]  # what the passes changed, a line per change
    unlike_source: Set[str]  # TF layers whose Caffe blob no longer holds their value (not compared)


def apply(net: NetSpec, blobs: Dict, inputs: Sequence[str], outputs: Sequence[str], options: DeployOptions,
          where: str) -> Deployed:
    """Run the chosen passes on `net` in place. `blobs`: TF layer -> emit.Blob (left as they are:
    lazy weights read them); `inputs`, `outputs`: TF input and compared layers."""
    applied: List[str] = []
    unlike_source: Set[str] = set()
    shapes = {blob.name: blob.shape for blob in blobs.values()}
    if options.fold_padding:
        fold_zero_padding(net, shapes, applied)
    if options.fold_bn:
        fold_batch_norm(net, applied)
    if options.changes_the_input():
        if len(inputs) != 1:
            raise ConversionError("%s: --bgr, --mean and --scale need a model with one input (it has %d)" % (
                where, len(inputs)))
        blob = blobs[inputs[0]]
        if options.bgr:
            reversed_blobs = input_to_bgr(net, blob.name, blob.shape, where, applied)
            unlike_source = {name for name, held in blobs.items() if held.name in reversed_blobs} - set(inputs)
            reversed_outputs = sorted(unlike_source & set(outputs))
            if reversed_outputs:
                raise ConversionError("%s: --bgr: output '%s' would hold its channels reversed" % (
                    where, reversed_outputs[0]))
        if options.mean is not None or options.scale is not None:
            preprocess_input(net, blob.name, blob.shape, options, where, applied)
    return Deployed(applied, unlike_source)


# ---------------------------------------------------------------- net queries and edits

def consumers(net: NetSpec, blob: str) -> List[CaffeLayer]:
    return [layer for layer in net.layers if blob in layer.bottoms]


def _conv_pads(params: Dict) -> List[int]:
    if "pad_h" in params:
        return [int(params["pad_h"]), int(params["pad_w"])]
    return [int(params.get("pad", 0))] * 2


def _set_conv_pads(params: Dict, pads: Sequence[int]) -> None:
    for key in ("pad", "pad_h", "pad_w"):
        params.pop(key, None)
    if pads[0] != pads[1]:
        params.update({"pad_h": int(pads[0]), "pad_w": int(pads[1])})
    elif pads[0]:
        params["pad"] = int(pads[0])


def _conv_pair(params: Dict, name: str, default: int) -> List[int]:
    if name + "_h" in params:
        return [int(params[name + "_h"]), int(params[name + "_w"])]
    key = name + "_size" if name == "kernel" else name
    value = params.get(key, default)
    return [int(value)] * 2 if not isinstance(value, (list, tuple)) else [int(v) for v in value]


def _transformed(make: Callable[[], np.ndarray], transform: Callable[[np.ndarray], np.ndarray]):
    """A blob callable computing transform(make()) lazily, keeping the declared shape."""
    def compute():
        return np.ascontiguousarray(transform(np.asarray(make(), np.float64)), dtype=np.float32)
    shape = getattr(make, "shape", None)
    return LazyBlob(shape, compute) if shape is not None else compute


def mixes_channels(layer: CaffeLayer) -> bool:
    """A Convolution, or an InnerProduct over everything from axis 1 on: its first blob is
    (outputs, input channels · positions), its outputs are channels (axis 1). (InnerProducts over
    a later axis, e.g. resize's along W, are not.)"""
    if layer.type == "Convolution":
        return True
    return layer.type == "InnerProduct" and layer.params["inner_product_param"].get("axis", 1) == 1


def _remove(net: NetSpec, layers: Sequence[CaffeLayer]) -> None:
    gone = {id(layer) for layer in layers}
    net.layers = [layer for layer in net.layers if id(layer) not in gone]


# ---------------------------------------------------------------- zero padding

def is_zero_padding(layer: CaffeLayer) -> bool:
    """pad2d's form: a grouped 1x1 stride-1 Convolution copying each channel (weights one, no
    bias), whose only effect is its zero `pad`."""
    if layer.type != "Convolution" or len(layer.blobs) != 1:
        return False
    params = layer.params["convolution_param"]
    if (params.get("bias_term", True) or params.get("group", 1) != params["num_output"]
            or _conv_pair(params, "kernel", 1) != [1, 1] or _conv_pair(params, "stride", 1) != [1, 1]):
        return False
    weight = layer.blobs[0]()
    return tuple(weight.shape) == (params["num_output"], 1, 1, 1) and bool(np.all(weight == 1))


def fold_zero_padding(net: NetSpec, shapes: Dict[str, List[int]], applied: List[str]) -> None:
    for padding in [layer for layer in net.layers if is_zero_padding(layer)]:
        users = consumers(net, padding.tops[0])
        if len(users) != 1:
            continue
        user = users[0]
        added = _conv_pads(padding.params["convolution_param"])
        shape = shapes.get(padding.bottoms[0])
        if user.type == "Convolution":
            params = user.params["convolution_param"]
            if _opencv_depthwise_trap(params, _conv_pads(params), added, shape):
                continue
        elif not (user.type == "Pooling" and _max_pool_takes(net, padding, user, added, shape)):
            continue
        params = user.params["convolution_param" if user.type == "Convolution" else "pooling_param"]
        pads = [own + extra for own, extra in zip(_conv_pads(params), added)]
        _set_conv_pads(params, pads)
        user.bottoms = [padding.bottoms[0] if bottom == padding.tops[0] else bottom for bottom in user.bottoms]
        _remove(net, [padding])
        applied.append("zero padding '%s' folded into %s '%s' (pad %s)" % (padding.name, user.type, user.name, pads))


def _max_pool_takes(net: NetSpec, padding: CaffeLayer, pool: CaffeLayer, added: Sequence[int],
                    shape: Optional[Sequence[int]]) -> bool:
    """Whether MAX `pool` after `padding` computes the same with the padding as its own pad.
    Caffe pads MAX pooling with -inf: the same only where the values are non-negative (a ReLU's
    output: a padded zero never beats a real cell) and every window keeps a real cell; and only
    where Caffe's and OpenCV's output sizes (they clip the last window differently) stay."""
    params = pool.params["pooling_param"]
    source = _writer(net, padding.bottoms[0])
    non_negative = source is not None and source.type == "ReLU" and not source.params.get(
        "relu_param", {}).get("negative_slope")
    if (params.get("pool", "MAX") != "MAX" or params.get("global_pooling") or not non_negative
            or shape is None or len(shape) != 4):
        return False
    for size, kernel, stride, own, extra in zip(shape[2:], _conv_pair(params, "kernel", 1),
                                                _conv_pair(params, "stride", 1), _conv_pads(params), added):
        pad = own + extra
        counts = {caffe_pool_count(size + 2 * extra, kernel, stride, own, clip) for clip in (True, False)}
        counts |= {caffe_pool_count(size, kernel, stride, pad, clip) for clip in (True, False)}
        if len(counts) != 1 or pad >= kernel or (counts.pop() - 1) * stride - pad >= size:
            return False
    return True


def _opencv_depthwise_trap(params: Dict, pads: Sequence[int], added: Sequence[int],
                           shape: Optional[Sequence[int]]) -> bool:
    """Whether the fold would send OpenCV 4.x into its 3x3 depthwise kernel (group == channels ==
    num_output, pads <= 1) over an axis of one pixel, which it reads past (see conv.py)."""
    depthwise = params.get("group", 1) == params["num_output"] > 1
    if not depthwise or _conv_pair(params, "kernel", 1) != [3, 3]:
        return False
    if shape is None:
        return True
    return any(size == 1 and own + extra <= 1 for size, own, extra in zip(shape[2:], pads, added))


# ---------------------------------------------------------------- BatchNorm

def fold_batch_norm(net: NetSpec, applied: List[str]) -> None:
    for norm in [layer for layer in net.layers if layer.type == "BatchNorm"]:
        found = _weighted_producer(net, norm.bottoms[0])
        if found is None:
            continue
        weighted, last = found
        after = consumers(net, norm.tops[0])
        scale = after[0] if (len(after) == 1 and after[0].type == "Scale" and len(after[0].bottoms) == 1
                             and after[0].params.get("scale_param", {}).get("axis", 1) == 1) else None
        _merge_batch_norm(weighted, norm, scale)
        last.tops = [(scale or norm).tops[0] if top == norm.bottoms[0] else top for top in last.tops]
        _remove(net, [norm] + ([scale] if scale else []))
        applied.append("BatchNorm '%s'%s merged into %s '%s'" % (
            norm.name, " and Scale '%s'" % scale.name if scale else "", weighted.type, weighted.name))


def _weighted_producer(net: NetSpec, blob: str) -> Optional[Tuple[CaffeLayer, CaffeLayer]]:
    """(the Convolution / InnerProduct whose output alone becomes `blob`, the layer writing
    `blob`): directly, or through the spatial crops of odd 'same' padding (Slice along H or W,
    a one-top Split), which commute with a per-channel affine map. Every blob on the way must be
    read by the next layer only. None when there is no such layer."""
    last = writer = _writer(net, blob)
    while writer is not None and len(consumers(net, blob)) == 1:
        if mixes_channels(writer):
            return (writer, last) if len(writer.tops) == 1 else None
        crop = writer.type == "Slice" and writer.params.get("slice_param", {}).get("axis", 1) in (2, 3)
        if not (crop or (writer.type == "Split" and len(writer.tops) == 1)):
            return None
        blob = writer.bottoms[0]
        writer = _writer(net, blob)
    return None


def _writer(net: NetSpec, blob: str) -> Optional[CaffeLayer]:
    writers = [layer for layer in net.layers if blob in layer.tops]
    return writers[0] if len(writers) == 1 else None


def _merge_batch_norm(weighted: CaffeLayer, norm: CaffeLayer, scale: Optional[CaffeLayer]) -> None:
    """y = (Wx + b - mean)·gamma/sqrt(var + eps) + beta = (factor·W)x + (b - mean)·factor + beta,
    with Caffe's BatchNorm statistics divided by its moving-average factor blob."""
    eps = float(norm.params.get("batch_norm_param", {}).get("eps", 1e-5))
    param = weighted.params["convolution_param" if weighted.type == "Convolution" else "inner_product_param"]
    mean_of, variance_of, average_of = norm.blobs
    gamma_of = scale.blobs[0] if scale else None
    beta_of = scale.blobs[1] if scale and len(scale.blobs) > 1 else None
    outputs = int(param["num_output"])
    old_weight = weighted.blobs[0]
    old_bias = weighted.blobs[1] if param.get("bias_term", True) else None

    def factor_and_shift():
        average = float(np.asarray(average_of()).reshape(-1)[0])
        average = 1.0 / average if average != 0 else 0.0
        mean = np.asarray(mean_of(), np.float64) * average
        variance = np.asarray(variance_of(), np.float64) * average
        factor = 1.0 / np.sqrt(variance + eps)
        if gamma_of is not None:
            factor = factor * np.asarray(gamma_of(), np.float64)
        shift = -mean * factor + (np.asarray(beta_of(), np.float64) if beta_of is not None else 0.0)
        return factor, shift

    def weight(value):
        factor = factor_and_shift()[0]
        return value * factor.reshape((-1,) + (1,) * (value.ndim - 1))

    def bias():
        factor, shift = factor_and_shift()
        own = np.asarray(old_bias(), np.float64) if old_bias is not None else np.zeros(outputs)
        return np.ascontiguousarray(own * factor + shift, dtype=np.float32)

    param["bias_term"] = True
    weighted.blobs = [_transformed(old_weight, weight), LazyBlob((outputs,), bias)]


# ---------------------------------------------------------------- BGR

# Layers computing each channel from that channel alone: the reversal passes through them, with
# their per-channel blobs reversed (`_per_channel_blobs`). Flatten too: it keeps the channels
# major, so an InnerProduct after it absorbs the reversal like one on the image.
CHANNEL_WISE = ("Scale", "BatchNorm", "Power", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL",
                "Exp", "Log", "Swish", "Mish", "HardSigmoid", "HardSwish", "Gelu", "ReLU6", "Pooling",
                "Split", "Dropout", "Eltwise", "Silence", "Flatten", "Slice")


def input_to_bgr(net: NetSpec, blob: str, shape: Sequence[int], where: str, applied: List[str]) -> Set[str]:
    """Make the net take `blob`'s channels reversed. Returns the blobs that now hold their
    channels reversed (the input's channel-wise successors)."""
    if len(shape) != 4 or shape[1] != 3:
        raise ConversionError("%s: --bgr: the input '%s' has shape %s; a 3-channel image is needed" % (
            where, blob, list(shape)))
    channels = int(shape[1])
    reversed_blobs = {blob}
    absorbed = []
    for layer in net.layers:
        if not any(bottom in reversed_blobs for bottom in layer.bottoms):
            continue
        problem = _bgr_problem(layer, reversed_blobs, channels)
        if problem:
            raise ConversionError("%s: --bgr: the input's channels reach layer '%s' (%s), %s" % (
                where, layer.name, layer.type, problem))
        if mixes_channels(layer) and not _per_channel_convolution(layer, channels):
            layer.blobs[0] = _transformed(layer.blobs[0], lambda w: w.reshape(
                (w.shape[0], channels, -1))[:, ::-1].reshape(w.shape))
            absorbed.append(layer.name)
        else:
            if _per_channel_blobs(layer, channels):
                layer.blobs = [_reversed_per_channel(make, channels) for make in layer.blobs]
            reversed_blobs.update(layer.tops)
    applied.append("input '%s' takes BGR: channels reversed in %s" % (blob, ", ".join(
        "'%s'" % name for name in absorbed)))
    return reversed_blobs


def _bgr_problem(layer: CaffeLayer, reversed_blobs: Set[str], channels: int) -> Optional[str]:
    """Why the reversal cannot pass through or into `layer` (None when it can)."""
    if layer.type == "Convolution" and layer.params["convolution_param"].get("group", 1) != 1:
        return None if _per_channel_convolution(layer, channels) else "a grouped convolution"
    if mixes_channels(layer):
        return None
    if layer.type not in CHANNEL_WISE:
        return "whose channels cannot be permuted"
    if not all(bottom in reversed_blobs for bottom in layer.bottoms):
        return "which also takes blobs in the source's channel order"
    if layer.type == "Slice" and layer.params.get("slice_param", {}).get("axis", 1) not in (2, 3):
        return "a Slice across the channels"
    if layer.type == "Scale" and len(layer.bottoms) > 1:
        return "a Scale by another blob"
    return None


def _per_channel_blobs(layer: CaffeLayer, channels: int) -> bool:
    """Whether the layer's blobs hold one value (or kernel) per channel (else none, or per
    position: a Scale over axes 2 and 3 correcting pooling borders)."""
    if layer.type == "Scale":
        return layer.params.get("scale_param", {}).get("axis", 1) == 1
    return layer.type in ("BatchNorm", "PReLU") or _per_channel_convolution(layer, channels)


def _per_channel_convolution(layer: CaffeLayer, channels: int) -> bool:
    """A depthwise Convolution with one output per channel (zero padding's copy included):
    output channel c reads input channel c alone."""
    params = layer.params.get("convolution_param", {})
    return layer.type == "Convolution" and params.get("group", 1) == params["num_output"] == channels


def _reversed_per_channel(make, channels: int):
    def reverse(value):
        return value[::-1] if value.ndim and value.shape[0] == channels else value
    return _transformed(make, reverse)


# ---------------------------------------------------------------- mean and scale

def preprocess_input(net: NetSpec, blob: str, shape: Sequence[int], options: DeployOptions, where: str,
                     applied: List[str]) -> None:
    """Make the net compute (x - mean)·scale on input `blob` first."""
    channels = int(shape[1])
    mean = _per_channel(options.mean, 0.0, channels, "--mean", where)
    scale = _per_channel(options.scale, 1.0, channels, "--scale", where)
    if np.any(scale == 0):
        raise ConversionError("%s: --scale: a scale of 0 loses the input" % where)
    users = consumers(net, blob)
    if len(users) == 1 and _folds_preprocessing(users[0]):
        _fold_preprocessing(users[0], mean, scale, channels)
        applied.append("mean and scale folded into %s '%s'" % (users[0].type, users[0].name))
        return
    name = blob + "/preprocess"
    for user in users:
        user.bottoms = [name if bottom == blob else bottom for bottom in user.bottoms]
    layer = CaffeLayer(name, "Scale", [blob], [name], {"scale_param": {"bias_term": True}},
                       [scale.astype(np.float32), (-mean * scale).astype(np.float32)])
    net.layers.insert(next(index for index, existing in enumerate(net.layers) if blob in existing.tops) + 1, layer)
    applied.append("mean and scale as Scale layer '%s'%s" % (name, "" if len(users) != 1 else (
        " ('%s' pads or is no Convolution / InnerProduct)" % users[0].name)))


def _per_channel(values: Optional[List[float]], default: float, channels: int, flag: str, where: str) -> np.ndarray:
    if values is None:
        return np.full(channels, default)
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size not in (1, channels):
        raise ConversionError("%s: %s has %d values for an input of %d channels" % (where, flag, values.size, channels))
    return np.broadcast_to(values, (channels,)).copy()


def _folds_preprocessing(layer: CaffeLayer) -> bool:
    if layer.type != "Convolution":
        return mixes_channels(layer)
    params = layer.params["convolution_param"]
    return params.get("group", 1) == 1 and _conv_pads(params) == [0, 0]


def _fold_preprocessing(layer: CaffeLayer, mean: np.ndarray, scale: np.ndarray, channels: int) -> None:
    """W(x - mean)·scale + b = (W·scale)x + b - sum (W·scale)·mean, per input channel."""
    param = layer.params["convolution_param" if layer.type == "Convolution" else "inner_product_param"]
    outputs = int(param["num_output"])
    old_weight = layer.blobs[0]
    old_bias = layer.blobs[1] if param.get("bias_term", True) else None

    def by_channel(weight):
        return weight.reshape((weight.shape[0], channels, -1))

    def weight(value):
        return (by_channel(value) * scale[None, :, None]).reshape(value.shape)

    def bias():
        scaled = by_channel(np.asarray(old_weight(), np.float64)) * scale[None, :, None]
        own = np.asarray(old_bias(), np.float64) if old_bias is not None else np.zeros(outputs)
        return np.ascontiguousarray(own - np.einsum("ocp,c->o", scaled, mean), dtype=np.float32)

    param["bias_term"] = True
    layer.blobs = [_transformed(old_weight, weight), LazyBlob((outputs,), bias)]
