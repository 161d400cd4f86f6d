"""tflearn architectures -> the HDF5 intermediate.

An architecture module (architectures/README.md) builds a tflearn network in a fresh TF1-style
graph. tflearn records each layer's output tensor in a graph collection `layer_tensor/<name>`
but not its hyper-parameters, so each layer is identified from the ops between its output and
the layers it reads (walking the op graph backwards), and its configuration is read from those
ops' attributes. Weights come from a tflearn checkpoint, the module's `train(seed)`, or a seeded
random initialisation, in that order.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import time
from collections import Counter
from typing import Dict, List

import numpy as np
import tensorflow as tf

from .. import intermediate
from ..errors import ConversionError, UnsupportedError
from .reference import append_user_input, reference_batch
from .tflearn_compat import import_tflearn

v1 = tf.compat.v1
# Ops that move values around without computing anything a layer is made of.
PLUMBING = {"Const", "Identity", "ReadVariableOp", "VarHandleOp", "VariableV2", "NoOp"}
# TensorFlow activation op -> (vocabulary function, extra config).
ACTIVATION_OPS = {
    "Relu": ("relu", {}),
    "Relu6": ("relu6", {}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Sigmoid": ("sigmoid", {}),
    "Tanh": ("tanh", {}),
    "Softmax": ("softmax", {}),
}
# tflearn variable basename -> intermediate array role.
ROLES = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
         "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


class Refused(Exception):
    pass


def load_architecture(path):
    """Import an architecture module by path and check its interface."""
    import_tflearn()
    path = str(path)
    name = "tf2caffe_architecture_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise ConversionError("%s: the architecture module fails to import: %s: %s" % (
            path, type(error).__name__, str(error).splitlines()[0] if str(error) else ""))
    for attribute in ("build", "DEFAULT_INPUT_SHAPE"):
        if not hasattr(module, attribute):
            raise ConversionError("%s: not an architecture module (no %s; see architectures/"
                                  "README.md)" % (path, attribute))
    return module


# ---------------------------------------------------------------------------------------------
# Graph -> layers

class Piece:
    """One vocabulary layer: its TensorFlow output tensor and its variables by role."""

    def __init__(self, name, type, inputs, config, tensor, variables=None):
        self.name = name
        self.type = type
        self.inputs = inputs
        self.config = config
        self.tensor = tensor
        self.variables = variables or {}
        self.caffe_name = name


def layer_name(tensor, key) -> str:
    """The layer's name: the name scope of its output op that the collection key names.

    Layers with a variable scope are recorded under their unique scope name ('Conv2D_1'); layers
    with a name scope under the name they were given ('MaxPool2D' for every max pooling), so
    the uniquified scope ('MaxPool2D_1') is read from the op name."""
    if tensor.op.name.startswith(key + "/"):
        return key
    parts = tensor.op.name.split("/")
    base = key.split("/")[-1]
    for end in range(1, len(parts) + 1):
        if re.fullmatch(re.escape(base) + r"(_\d+)?", parts[end - 1]):
            return "/".join(parts[:end])
    return key


def recorded_layers(graph) -> List[tuple]:
    """(name, output tensor) of every layer tflearn recorded, in graph construction order."""
    order = {op.name: index for index, op in enumerate(graph.get_operations())}
    found = {}
    for key in graph.get_all_collection_keys():
        if not key.startswith("layer_tensor/"):
            continue
        for tensor in graph.get_collection(key):
            if isinstance(tensor, tf.Tensor) and tensor.name not in found:
                found[tensor.name] = (layer_name(tensor, key[len("layer_tensor/"):]), tensor)
    layers = sorted(found.values(), key=lambda item: order[item[1].op.name])
    names = [name for name, _ in layers]
    return [(name if names.count(name) == 1 else tensor.op.name, tensor) for name, tensor in layers]


def trace(tensor, boundary: Dict[str, str]):
    """The ops computing `tensor` from other layers' outputs, and those layers' names."""
    ops, inputs, seen = [], [], set()

    def visit(op):
        if op.name in seen:
            return
        seen.add(op.name)
        ops.append(op)
        for source in op.inputs:
            if source.name in boundary and source is not tensor:
                if boundary[source.name] not in inputs:
                    inputs.append(boundary[source.name])
            elif source.op.type not in ("VarHandleOp", "VariableV2", "Const"):
                visit(source.op)

    visit(tensor.op)
    return ops, inputs


def scope_variables(name, variables) -> Dict[str, object]:
    """{role: variable} of the variables directly in the layer's scope."""
    found = {}
    for variable in variables:
        scope, _, basename = variable.op.name.rpartition("/")
        if scope == name and basename in ROLES:
            found[ROLES[basename]] = variable
    return found


def pair_from(attribute) -> List[int]:
    values = [int(v) for v in attribute]
    return values[1:3] if len(values) == 4 else values


def padding_of(op) -> str:
    padding = op.get_attr("padding").decode()
    if padding not in ("SAME", "VALID"):
        raise Refused("%s padding %s is not supported" % (op.type, padding))
    if op.get_attr("data_format").decode() != "NHWC":
        raise Refused("%s data_format %s (only NHWC)" % (op.type, op.get_attr("data_format").decode()))
    return padding.lower()


def else_branch_is_identity(op) -> bool:
    branch = op.graph._get_function(op.get_attr("else_branch").name)
    definition = branch.cached_definition
    return all(node.op == "Identity" for node in definition.node_def)


def rank(tensor) -> int:
    return len(tensor.shape)


class LayerOps:
    """The ops one tflearn layer consists of, a trailing activation op set apart."""

    def __init__(self, name, tensor, ops, inputs, input_tensors, variables):
        self.name = name
        self.tensor = tensor
        self.inputs = inputs  # vocabulary names of the layers it reads
        self.input_tensors = input_tensors
        self.weights = scope_variables(name, variables)
        self.core = [op for op in ops if op.type not in PLUMBING]
        self.activation = None
        if tensor.op.type in ACTIVATION_OPS and len(self.core) > 1:
            self.activation = tensor.op
            self.core.remove(tensor.op)
        # The layer's output before its activation.
        self.body = self.activation.inputs[0] if self.activation is not None else tensor

    @property
    def types(self) -> List[str]:
        return sorted(op.type for op in self.core)

    def op(self, type):
        return next(op for op in self.core if op.type == type)

    def has(self, type) -> bool:
        return any(op.type == type for op in self.core)

    def expect(self, *allowed) -> None:
        """Refuse ops beyond `allowed` (a multiset): the layer would compute something else."""
        if Counter(self.types) - Counter(allowed):
            raise Refused("unexpected TensorFlow ops %s in this layer" % ", ".join(self.types))

    def kernel(self):
        if "kernel" not in self.weights:
            raise Refused("no W variable in scope '%s'" % self.name)
        return self.weights["kernel"]

    def piece(self, type, config, **options) -> Piece:
        """The layer's main vocabulary layer (its weights, its pre-activation output)."""
        return Piece(options.get("name", self.name), type, options.get("inputs", self.inputs), config,
                     options.get("tensor", self.body), options.get("variables", self.weights))


def _conv2d(layer: LayerOps) -> List[Piece]:
    layer.expect("Conv2D", "BiasAdd")
    op = layer.op("Conv2D")
    kh, kw, per_group, filters = [int(d) for d in layer.kernel().shape]
    return [layer.piece("conv2d", dict(
        filters=filters, kernel_size=[kh, kw], strides=pair_from(op.get_attr("strides")),
        dilation=pair_from(op.get_attr("dilations")), padding=padding_of(op),
        groups=int(op.inputs[0].shape[-1]) // per_group))]


def _pool(layer: LayerOps) -> List[Piece]:
    layer.expect("MaxPool", "AvgPool")
    op = layer.core[0]
    return [layer.piece("max_pool2d" if op.type == "MaxPool" else "avg_pool2d", dict(
        pool_size=pair_from(op.get_attr("ksize")), strides=pair_from(op.get_attr("strides")),
        padding=padding_of(op)))]


def _dense(layer: LayerOps) -> List[Piece]:
    layer.expect("MatMul", "BiasAdd", "Reshape")
    op = layer.op("MatMul")
    if op.get_attr("transpose_a") or op.get_attr("transpose_b"):
        raise Refused("transposed MatMul")
    units = int(layer.kernel().shape[1])
    if not (layer.has("Reshape") and rank(layer.input_tensors[0]) > 2):
        return [layer.piece("dense", dict(units=units))]
    # tflearn flattens a 4-D input inside fully_connected (in H, W, C order); an explicit
    # flatten lets the import side permute the weights into Caffe's C, H, W order.
    flatten = layer.piece("flatten", {}, name=layer.name + "/flatten",
                          tensor=layer.op("Reshape").outputs[0], variables={})
    return [flatten, layer.piece("dense", dict(units=units), inputs=[flatten.name])]


def _lrn(layer: LayerOps) -> List[Piece]:
    layer.expect("LRN")
    op = layer.op("LRN")
    return [layer.piece("lrn", dict(
        depth_radius=int(op.get_attr("depth_radius")), bias=float(op.get_attr("bias")),
        alpha=float(op.get_attr("alpha")), beta=float(op.get_attr("beta"))))]


def _batch_norm(layer: LayerOps) -> List[Piece]:
    if "moving_mean" not in layer.weights:
        raise Refused("Rsqrt without batch_normalization's moving_mean variable")
    # tf.nn.batch_normalization: x * rsqrt(var + eps) * gamma + (beta - mean * rsqrt(var + eps) * gamma)
    layer.expect("If", "StatelessIf", "AddV2", "AddV2", "Rsqrt", "Mul", "Mul", "Mul", "Sub")
    constants = [tf.get_static_value(t) for t in layer.op("Rsqrt").inputs[0].op.inputs]
    epsilon = [float(value) for value in constants if value is not None]
    if len(epsilon) != 1:
        raise Refused("cannot find the batch normalization epsilon")
    return [layer.piece("batch_norm", dict(epsilon=epsilon[0]))]


def _dropout(layer: LayerOps) -> List[Piece]:
    layer.expect("If", "StatelessIf")
    if len(layer.core) != 1 or not else_branch_is_identity(layer.core[0]):
        raise Refused("a tf.cond whose inference branch is not the identity")
    return [layer.piece("identity", dict(reason="Dropout: identity at inference"))]


def _reshape(layer: LayerOps) -> List[Piece]:
    layer.expect("Reshape")
    shape = [int(d) for d in layer.tensor.shape[1:]]
    if len(shape) == 1 and rank(layer.input_tensors[0]) > 2:
        return [layer.piece("flatten", {})]
    return [layer.piece("reshape", dict(target_shape=shape))]


# The first op type a layer contains decides its mapper (batch_normalization also holds an If,
# fully_connected a Reshape).
MAPPERS = (("Conv2D", _conv2d), ("MaxPool", _pool), ("AvgPool", _pool), ("MatMul", _dense),
           ("LRN", _lrn), ("Rsqrt", _batch_norm), ("If", _dropout), ("StatelessIf", _dropout),
           ("Reshape", _reshape))


def map_layer(layer: LayerOps) -> List[Piece]:
    """The vocabulary layers one tflearn layer becomes, its activation split off."""
    if len(layer.inputs) != 1:
        raise Refused("reads %d layers (%s); expected one" % (
            len(layer.inputs), ", ".join(layer.inputs) or "none"))
    if not layer.core and layer.tensor.op.type in ACTIVATION_OPS:
        pieces, activation = [], layer.tensor.op  # a standalone activation layer
    else:
        mapper = next((m for kind, m in MAPPERS if layer.has(kind)), None)
        if mapper is None:
            raise Refused("TensorFlow ops %s are not a layer tf2caffe knows" % (
                ", ".join(layer.types) or "(none)"))
        pieces, activation = mapper(layer), layer.activation
    if activation is None:
        return pieces
    function, extra = ACTIVATION_OPS[activation.type]
    config = dict(extra, function=function)
    if function == "softmax":
        config["axis"] = rank(layer.tensor) - 1
    if not pieces:
        return [layer.piece("activation", config, tensor=layer.tensor, variables={})]
    return pieces + [Piece("%s/%s" % (layer.name, function), "activation", [pieces[-1].name], config,
                           layer.tensor)]


def map_graph(graph, output) -> tuple:
    """(pieces, name of the output piece); UnsupportedError lists every layer that cannot be
    mapped."""
    layers = recorded_layers(graph)
    boundary = {tensor.name: name for name, tensor in layers}
    tensors = {name: tensor for name, tensor in layers}
    variables = v1.global_variables()
    placeholders = {t.name for t in graph.get_collection("inputs")}
    problems, pieces, last_piece = [], [], {}
    for name, tensor in layers:
        if tensor.name in placeholders:
            # The shape is set from the reference input once it is known.
            pieces.append(Piece(name, "input", [], {}, tensor))
            last_piece[name] = name
            continue
        ops, inputs = trace(tensor, boundary)
        strays = [op.name for op in ops if op.type == "Placeholder"]
        try:
            if strays:
                raise Refused("reads placeholder(s) %s that are not tflearn input_data layers"
                              % ", ".join(strays))
            mapped = map_layer(LayerOps(name, tensor, ops, [last_piece[i] for i in inputs],
                                        [tensors[i] for i in inputs], variables))
        except Refused as reason:
            problems.append("'%s': %s" % (name, reason))
            last_piece[name] = name
            continue
        pieces.extend(mapped)
        last_piece[name] = mapped[-1].name
    if output.name not in boundary:
        problems.append("the network's output %s is not a tflearn layer" % output.name)
    if any(p is not None for p in graph.get_collection("data_preprocessing")):
        problems.append("input_data: tflearn applies data_preprocessing outside the graph; "
                        "it would not be converted")
    if problems:
        raise UnsupportedError(problems)
    return pieces, last_piece[boundary[output.name]]


# ---------------------------------------------------------------------------------------------
# Weights and reference activations

def checkpoint_prefix(checkpoint) -> str:
    checkpoint = str(checkpoint)
    if os.path.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise ConversionError("%s: folder holds no TensorFlow checkpoint" % checkpoint)
        return latest
    for suffix in (".index", ".meta"):
        if checkpoint.endswith(suffix):
            checkpoint = checkpoint[:-len(suffix)]
    if not os.path.exists(checkpoint + ".index"):
        raise ConversionError("%s: no such checkpoint (expected %s.index)" % (checkpoint, checkpoint))
    return checkpoint


def model_variables(graph):
    return [v for v in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name.rpartition("/")[2] != "is_training"]


def load_weights(module, session, graph, prefix, seed) -> str:
    """Set the graph's variables (from the checkpoint `prefix` if given); returns where the
    weights came from."""
    variables = model_variables(graph)
    session.run(v1.global_variables_initializer())
    if prefix is not None:
        reader = tf.train.load_checkpoint(prefix)
        missing = [v.op.name for v in variables if not reader.has_tensor(v.op.name)]
        if missing:
            raise ConversionError("%s: checkpoint lacks %s (built from a different architecture?)" % (
                prefix, ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")))
        v1.train.Saver(var_list=variables).restore(session, prefix)
        return "checkpoint %s" % prefix
    if hasattr(module, "train"):
        print("no checkpoint: training with the module's train(seed=%d)" % seed, flush=True)
        started = time.time()
        with tf.Graph().as_default():
            values = module.train(seed)
        print("trained in %.1f s" % (time.time() - started), flush=True)
        for variable in variables:
            if variable.op.name not in values:
                raise ConversionError("train() returned no value for variable '%s'" % variable.op.name)
            # Feeding the initial value assigns without adding ops to the graph.
            session.run(variable.initializer, {variable.initial_value: values[variable.op.name]})
        return "trained at export (seed %d)" % seed
    print("no checkpoint: weights are seeded random (seed %d)" % seed, flush=True)
    return "seeded random (seed %d)" % seed


def reference_run(module, graph, pieces, prefix, shape, seed, user_input=None) -> tuple:
    """Set the weights, run the reference batch once and fetch every layer's output and every
    weight: (x, labels, {layer: output}, {(layer, role): array}, where the weights came from)."""
    tflearn = import_tflearn()
    inputs = [piece for piece in pieces if piece.type == "input"]
    if len(inputs) != 1:
        raise ConversionError("%d input_data layers; only single-input networks are supported"
                              % len(inputs))
    with v1.Session(graph=graph) as session:
        weights_source = load_weights(module, session, graph, prefix, seed)
        if graph.get_collection("is_training"):
            tflearn.is_training(False, session=session)
        if hasattr(module, "reference_data"):
            x, labels = module.reference_data(shape, seed)
            if user_input is not None and labels is not None:
                raise ConversionError("this architecture verifies on its own labelled data; "
                                      "--reference-input does not apply")
        else:
            x, labels = reference_batch([shape], seed)[0], None
        x = append_user_input(np.asarray(x, dtype=np.float32), user_input)
        if not inputs[0].tensor.shape.is_compatible_with(x.shape):
            raise ConversionError("the reference input has shape %s; input_data expects %s" % (
                list(x.shape), inputs[0].tensor.shape.as_list()))
        values, arrays = session.run(
            ({piece.name: piece.tensor for piece in pieces if piece.type != "input"},
             {(piece.name, role): variable for piece in pieces
              for role, variable in piece.variables.items()}),
            feed_dict={inputs[0].tensor: x})
    values[inputs[0].name] = x
    return x, labels, values, arrays, weights_source


def architecture_to_intermediate(path, checkpoint=None, input_shape=None, per_layer=False,
                                 seed=0, user_input=None) -> intermediate.Model:
    prefix = checkpoint_prefix(checkpoint) if checkpoint is not None else None
    module = load_architecture(path)
    shape = list(input_shape) if input_shape is not None else list(module.DEFAULT_INPUT_SHAPE)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        output = module.build(shape)
        if not isinstance(output, tf.Tensor):
            raise ConversionError("%s: build() returned %r, not the network's output tensor" % (
                path, output))
        pieces, output_name = map_graph(graph, output)
        apply_caffe_names(path, pieces, getattr(module, "CAFFE_NAMES", {}))
        x, labels, values, arrays, weights_source = reference_run(module, graph, pieces, prefix,
                                                                  shape, seed, user_input)
    if labels is not None:
        accuracy = float(np.mean(np.argmax(values[output_name], axis=1) == np.asarray(labels)))
        print("TensorFlow accuracy on the %d reference samples: %.4f" % (len(x), accuracy), flush=True)

    layers = []
    for piece in pieces:
        if piece.type == "input":
            piece.config = dict(shape=list(x.shape))
        layers.append(intermediate.Layer(
            piece.name, piece.type, piece.inputs, piece.config, list(values[piece.name].shape),
            {role: arrays[(piece.name, role)] for role in piece.variables},
            {role: variable.name for role, variable in piece.variables.items()},
            caffe_name=piece.caffe_name))
    model = intermediate.Model(
        os.path.splitext(os.path.basename(str(path)))[0], layers, [output_name],
        attrs=dict(source_framework="tflearn", source_version=importlib.metadata.version("tflearn"),
                   tensorflow_version=tf.__version__, source_path=str(path),
                   weights_source=weights_source),
        reference_inputs={next(l.name for l in layers if l.type == "input"): x},
        labels=None if labels is None else np.asarray(labels, dtype=np.int64))
    stored = [layer.name for layer in layers] if per_layer else model.compared_layers()
    model.reference_activations = {layer: values[layer] for layer in stored}
    return model


def apply_caffe_names(path, pieces, caffe_names) -> None:
    """Give each layer its name in a hand-written prototxt (CAFFE_NAMES)."""
    names = {piece.name for piece in pieces}
    unknown = sorted(set(caffe_names) - names)
    if unknown:
        raise ConversionError("%s: CAFFE_NAMES names layer(s) the graph lacks: %s" % (
            path, ", ".join(unknown)))
    unnamed = [piece.name for piece in pieces if piece.variables and piece.name not in caffe_names]
    if caffe_names and unnamed:
        raise ConversionError("%s: CAFFE_NAMES lacks weighted layer(s) %s" % (path, ", ".join(unnamed)))
    for piece in pieces:
        piece.caffe_name = caffe_names.get(piece.name, piece.name)
