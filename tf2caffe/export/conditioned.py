"""Seeded random weights that behave like trained ones, for architecture modules' `train(seed)`.

Untrained weights make poor test cases: with tflearn's initial values BatchNorm is the identity
(mean 0, variance 1, gamma ~1, beta 0), biases are zero, and deep nets grow or shrink their
activations until TensorFlow's own float32 output is no fair reference. So, walking the graph
in data-flow order on a seeded batch:

- every kernel (convolution, depthwise, transposed convolution, dense) is rescaled so that its
  layer's output has unit root-mean-square over the batch (unit gain), after the layer's bias `b`
  (where it has one) moved each channel part of the way to zero mean (CENTRING), plus N(0, 0.1)
  noise;
- every tflearn batch_normalization gets moving statistics near its input's real ones (mean
  shifted by a tenth of a standard deviation, variance times U(0.5, 2)), gamma from U(0.5, 1.5)
  and beta from N(0, 0.1): normalising, but not the identity;
- the last layer of a residual branch (a kernel or batch normalisation whose output, through a
  bias, is added to another data tensor) gets a quarter of that gain (RESIDUAL_GAIN).

Activations stay O(1) through any depth.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

from ..errors import ConversionError
from .graph.session import SESSION_CONFIG

v1 = tf.compat.v1
# Op type -> index of its kernel input.
KERNEL_INPUT = {"Conv2D": 1, "DepthwiseConv2dNative": 1, "Conv2DBackpropInput": 1, "MatMul": 1}
VARIABLE_OPS = ("VarHandleOp", "VariableV2")
BATCH = 8
# How far each layer's bias moves its channels towards zero mean (measured on the tflearn
# GoogLeNet). Without it, deep ReLU nets drift to a constant output: 4 % of the logits' spread
# depends on the input. Fully centred, every layer passes its float32 rounding on amplified: the
# deepest layers differ between TensorFlow and Caffe by 3e-5 of their maximum, though no layer is
# converted wrongly. A quarter keeps about a third of the spread input-dependent and every layer
# within 5e-6.
CENTRING = 0.25
# Trained residual nets add small branch outputs to their stream (what Fixup and SkipInit
# initialise on purpose): each block is then close to the identity, and float32 rounding passes
# through 30-40 blocks unamplified. At full gain, a random ResNeXt amplifies it ~1.5x per block:
# TensorFlow's own float32 output ends 1e-4 away from a float64 run of the same weights.
RESIDUAL_GAIN = 0.25
ADDITIONS = ("Add", "AddV2")


def _variable_behind(tensor):
    """The variable op a tensor reads (through ReadVariableOp/Identity), or None."""
    op = tensor.op
    while op.type in ("ReadVariableOp", "Identity") and op.inputs:
        op = op.inputs[0].op
    return op if op.type in VARIABLE_OPS else None


def _batch_norm_input(graph, scope: str):
    """The tensor a tflearn batch_normalization in `scope` normalises: tf.nn.batch_normalization
    computes x * (rsqrt(var + eps) * gamma) in `<scope>/batchnorm/mul_1`."""
    try:
        op = graph.get_operation_by_name(scope + "/batchnorm/mul_1")
    except KeyError:
        raise ConversionError("batch normalisation '%s': cannot find its input (no batchnorm/mul_1 op)"
                              % scope)
    return op.inputs[0]


def _is_data(tensor) -> bool:
    return tensor.op.type != "Const" and _variable_behind(tensor) is None


def _ends_residual_branch(tensor) -> bool:
    """Whether `tensor`, directly or through a bias, is added to another data tensor."""
    for consumer in tensor.consumers():
        if consumer.type == "BiasAdd" and consumer.inputs[0] is tensor:
            if _ends_residual_branch(consumer.outputs[0]):
                return True
        elif consumer.type in ADDITIONS and all(_is_data(i) for i in consumer.inputs):
            return True
    return False


def _batch_norm_output(graph, scope: str):
    """What a tflearn batch_normalization in `scope` outputs: x * scale + (beta - mean * scale)."""
    return graph.get_tensor_by_name(scope + "/batchnorm/add_1:0")


def _normalise(weights, op, kernel, rng) -> None:
    """Shift each output channel CENTRING of the way to zero mean with the layer's bias `b` (if it
    has one, plus N(0, 0.1) noise) and scale the kernel so that the output's root-mean-square over
    the batch is one (RESIDUAL_GAIN at a residual branch's end): offsets count, so a following
    tanh or sigmoid sees values of order one."""
    y = weights.measure(op.outputs[0])
    mean = y.mean(axis=tuple(range(y.ndim - 1)))
    bias = kernel.rpartition("/")[0] + "/b"
    has_bias = bias in weights.values and weights.values[bias].shape == mean.shape
    shift = CENTRING * mean if has_bias else np.zeros_like(mean)
    spread = float(np.sqrt(np.mean((y - shift) ** 2)))
    if _ends_residual_branch(op.outputs[0]):
        spread /= RESIDUAL_GAIN
    if spread == 0:
        return  # an output that is always zero keeps its weights
    weights.assign(kernel, weights.values[kernel] / spread)
    if has_bias:
        weights.assign(bias, -shift / spread + rng.normal(0.0, 0.1, mean.shape))


class _Weights:
    """The variables' values, kept here and sent to the session together just before the next
    measurement: every session.run with new fetches builds an executor over the graph, so one run
    per assignment made a DenseNet's conditioning take minutes."""

    def __init__(self, session, variables, feed):
        self.session, self.variables, self.feed = session, variables, feed
        self.values = session.run(variables)
        self.pending = set()

    def assign(self, name, value):
        self.values[name] = np.asarray(value, np.float32)
        self.pending.add(name)

    def measure(self, tensor) -> np.ndarray:
        if self.pending:
            # An initializer's second input is the initial value: fed, it loads ours.
            initializers = {self.variables[name].initializer: self.values[name] for name in self.pending}
            self.session.run(list(initializers), {op.inputs[1]: value for op, value in initializers.items()})
            self.pending.clear()
        return self.session.run(tensor, self.feed)


def conditioned_weights(build: Callable, input_shape: Sequence[int], seed: int,
                        sample: Callable = None) -> Dict[str, np.ndarray]:
    """Build the network (in the current default graph), condition its weights on a seeded batch
    and return {variable name: value}. `sample(rng, shape)` draws the batch (standard normal)."""
    rng = np.random.default_rng(seed)
    v1.set_random_seed(seed)
    output = build(list(input_shape))
    graph = output.graph
    inputs = graph.get_collection("inputs")
    if len(inputs) != 1:
        raise ConversionError("conditioned_weights needs a single tflearn input_data layer (found %d)"
                              % len(inputs))
    shape = [BATCH] + list(input_shape[1:])
    batch = (sample or (lambda r, s: r.standard_normal(s)))(rng, shape).astype(np.float32)
    variables = {v.op.name: v for v in v1.global_variables()}
    with v1.Session(graph=graph, config=SESSION_CONFIG) as session:
        session.run(v1.global_variables_initializer())
        if graph.get_collection("is_training"):
            import tflearn
            tflearn.is_training(False, session=session)
        weights = _Weights(session, variables, {inputs[0]: batch})
        for name, variable in variables.items():
            if name.rpartition("/")[2] == "b":
                weights.assign(name, rng.normal(0.0, 0.1, variable.shape.as_list()))
        batch_norms = {}  # normalised tensor -> the batch normalisation scopes reading it
        for name in variables:
            if name.endswith("/moving_mean"):
                scope = name[:-len("/moving_mean")]
                batch_norms.setdefault(_batch_norm_input(graph, scope).name, []).append(scope)
        # Graph construction order is data-flow order: each layer is measured after every layer
        # before it was conditioned.
        for op in graph.get_operations():
            kernel = (_variable_behind(op.inputs[KERNEL_INPUT[op.type]])
                      if op.type in KERNEL_INPUT else None)
            if kernel is not None and kernel.name in variables:
                _normalise(weights, op, kernel.name, rng)
            for scope in batch_norms.get(op.outputs[0].name if op.outputs else None, []):
                x = weights.measure(op.outputs[0])
                axes = tuple(range(x.ndim - 1))
                mean, std = x.mean(axis=axes), x.std(axis=axes)
                channels = mean.shape
                gain = RESIDUAL_GAIN if _ends_residual_branch(_batch_norm_output(graph, scope)) else 1.0
                weights.assign(scope + "/moving_mean", mean + 0.1 * std * rng.standard_normal(channels))
                weights.assign(scope + "/moving_variance", std ** 2 * rng.uniform(0.5, 2.0, channels))
                weights.assign(scope + "/gamma", gain * rng.uniform(0.5, 1.5, channels))
                weights.assign(scope + "/beta", gain * rng.normal(0.0, 0.1, channels))
        return dict(weights.values)


# ---------------------------------------------------------------------------------------------
# Keras models (keras.applications in the tests): the same conditioning, walked over the
# functional graph eagerly, in place.

# Keras layers that pass a residual branch's end on to the addition unchanged.
KERAS_PASS_THROUGH = ("Activation", "StochasticDepth", "Dropout", "Identity")
# Keras layers whose learned scale (and offset) ends a residual branch in place of a kernel.
KERAS_SCALES = ("BatchNormalization", "LayerNormalization", "LayerScale")


def _keras_is_addition(operation) -> bool:
    return type(operation).__name__ == "Add"  # the merge layer or keras.ops.add (x + y)


def _keras_ends_residual(tensor, consumers) -> bool:
    """Whether `tensor`, directly or through pass-through layers, is added to another tensor."""
    for operation, node in consumers.get(id(tensor), []):
        if _keras_is_addition(operation) and len(node.input_tensors) >= 2:
            return True
        if type(operation).__name__ in KERAS_PASS_THROUGH and _keras_ends_residual(
                node.outputs[0], consumers):
            return True
    return False


def _keras_call(layer, args, kwargs):
    import keras

    if isinstance(layer, keras.layers.Layer):
        kwargs = dict(kwargs, training=False)
    return layer(*args, **kwargs)


def _keras_linear_output(layer, args):
    """The layer's output without its fused activation."""
    import keras

    saved = getattr(layer, "activation", None)
    if saved is not None:
        layer.activation = keras.activations.linear
    try:
        return np.asarray(_keras_call(layer, args, {}), np.float64)
    finally:
        if saved is not None:
            layer.activation = saved


def _keras_condition(layer, args, kwargs, gain: float, rng) -> object:
    """Condition one layer call's weights on its real input `args`, then return its output."""
    import keras

    kind = type(layer).__name__
    if isinstance(layer, keras.Sequential):
        value = args[0]
        for index, inner in enumerate(layer.layers):
            last = index == len(layer.layers) - 1
            value = _keras_condition(inner, (value,), {}, gain if last else 1.0, rng)
        return value
    if kind == "BatchNormalization":
        # Statistics of the input's scale, but not its own per-channel ones: random deep nets drift
        # towards an input-independent output, so a channel's spread over the batch can be tiny
        # beside its mean, and subtracting that mean and dividing by that spread would amplify
        # the channel's float32 rounding, BatchNorm after BatchNorm (TensorFlow's own float32
        # output ended 1e-4 to 1e-2 away from float64).
        x = np.asarray(args[0], np.float64)
        channels, square = x.shape[-1], float(np.mean(x ** 2))
        layer.moving_mean.assign(rng.normal(0.0, 0.1 * np.sqrt(square), channels).astype(np.float32))
        layer.moving_variance.assign((square * rng.uniform(0.5, 1.5, channels)).astype(np.float32))
    if kind in KERAS_SCALES:
        # BatchNorm's and LayerNorm's gamma/beta, LayerScale's gamma (1e-6 at initialisation:
        # every ConvNeXt block would be the identity, hiding a wrong LayerNorm or GELU).
        for role, draw in (("gamma", lambda shape: rng.uniform(0.5, 1.5, shape)),
                           ("beta", lambda shape: rng.normal(0.0, 0.1, shape))):
            variable = getattr(layer, role, None)
            if variable is not None:
                variable.assign((gain * draw(tuple(variable.shape))).astype(np.float32))
    kernel = {"SeparableConv2D": "pointwise_kernel"}.get(kind, "kernel")
    kernel = getattr(layer, kernel, None) if kind not in KERAS_SCALES else None
    if kernel is not None:
        bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
        if bias is not None:
            bias.assign(np.zeros(tuple(bias.shape), np.float32))
        y = _keras_linear_output(layer, args)
        mean = y.mean(axis=tuple(range(y.ndim - 1)))
        shift = CENTRING * mean if bias is not None else np.zeros_like(mean)
        spread = float(np.sqrt(np.mean((y - shift) ** 2))) / gain
        if spread > 0:  # an output that is always zero keeps its weights
            kernel.assign((np.asarray(kernel) / spread).astype(np.float32))
            if bias is not None:
                bias.assign((-shift / spread + rng.normal(0.0, 0.1, mean.shape)).astype(np.float32))
    return _keras_call(layer, args, kwargs)


def condition_keras_model(model, seed: int) -> None:
    """Condition a functional Keras model's weights in place, as `conditioned_weights` does for
    tflearn graphs: kernels (convolutions, dense, a separable convolution's pointwise kernel)
    to unit gain after a CENTRING bias, BatchNorm statistics near their input's, BatchNorm and
    LayerNorm gamma/beta and LayerScale gamma random, the end of a residual branch at
    RESIDUAL_GAIN; measured on a seeded standard-normal batch, layer after layer."""
    rng = np.random.default_rng(seed)
    (tensor,) = model.inputs
    batch = rng.standard_normal([BATCH] + list(tensor.shape[1:])).astype(np.float32)
    values = {id(tensor): tf.constant(batch)}
    consumers = {}
    nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True)
             for node in model._nodes_by_depth[depth] if not node.is_input]
    for node in nodes:
        for inputs in node.input_tensors:
            consumers.setdefault(id(inputs), []).append((node.operation, node))
    for node in nodes:
        args, kwargs = node.arguments.fill_in(values)
        gain = RESIDUAL_GAIN if _keras_ends_residual(node.outputs[0], consumers) else 1.0
        outputs = _keras_condition(node.operation, args, kwargs, gain, rng)
        for output, value in zip(node.outputs, tf.nest.flatten(outputs)):
            values[id(output)] = value
