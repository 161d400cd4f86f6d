"""The walk over a frozen graph that turns its data nodes into intermediate layers; each op's
mapping is in ops.py."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from ... import intermediate
from ...errors import Refusal, Unmappable, UnsupportedError
from .nodes import data_inputs, node_of_tensor, nodes_by_name, split_input, topological_order, users_by_node
from .ops import MAPPERS, PASS_THROUGH
from .session import full_tensor_name


# Ops whose value depends only on (fixed) shapes, never on the input's values.
SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank"}


class Mapper:
    """Walks the frozen graph's data nodes in order and turns each into intermediate layers.

    A node whose value depends on no input is a constant (weights, shapes, axes). Every other
    node is either mapped to a layer, absorbed into the layer of a node before it (a BiasAdd
    into its Conv2D), passed through (Identity), or reported as unsupported.
    """

    def __init__(self, graph_def, inputs, outputs, values, session, feed_dict, layer_names=None):
        self.graph_def = graph_def
        self.nodes = nodes_by_name(graph_def)
        self.users = users_by_node(graph_def)
        self.inputs = [node_of_tensor(i) for i in inputs]
        self.outputs = {self.source(o)[0] for o in outputs}
        self.values = values       # data node name -> its reference output (:0)
        self.session = session    # evaluates constants computed in the graph (shape-dependent too)
        self.feed_dict = feed_dict
        self.layer_of: Dict[str, str] = {}  # data node -> the layer holding its value
        self.tensor_of: Dict[str, str] = {}  # layer -> the tensor (node) that is its output
        self.layers: List[intermediate.Layer] = []
        self.absorbed = set()
        self.problems: List[str] = []
        self.reserved = set(self.nodes)
        self._constant: Dict[str, bool] = {}
        # tflearn: {output node: layer name}; layers take the names tflearn gave them.
        self.recorded = {split_input(tensor)[0]: name for tensor, name in (layer_names or {}).items()
                         if split_input(tensor)[1] == 0}
        self.recorded_scopes = set(self.recorded.values())

    # ---- graph queries
    def constant(self, name) -> bool:
        node_name = split_input(name)[0]
        if node_name not in self._constant:
            node = self.nodes[node_name]
            if node.op in ("Placeholder", "PlaceholderWithDefault") or node_name in self.inputs:
                result = False
            elif node.op == "Const" or node.op in SHAPE_OPS:
                result = True
            else:
                inputs = data_inputs(node)
                stateful = node.op.startswith("Random") or node.op.startswith("Stateless")
                result = bool(inputs) and not stateful and all(self.constant(i) for i in inputs)
            self._constant[node_name] = result
        return self._constant[node_name]

    def source(self, name) -> Tuple[str, node_def_pb2.NodeDef]:
        """Follow pass-through ops back to the node that produced a tensor (an `IdentityN`,
        which custom gradients such as swish's add, passes its input of the same index)."""
        node_name, port, _ = split_input(name)
        node = self.nodes[node_name]
        while (node.op in PASS_THROUGH and port == 0 or node.op == "IdentityN") and data_inputs(node):
            node_name, port, _ = split_input(data_inputs(node)[port])
            node = self.nodes[node_name]
        return node.name, node

    def value(self, name) -> np.ndarray:
        node_name, node = self.source(name)
        if node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor)
        return self.session.run(self.session.graph.get_tensor_by_name(full_tensor_name(name)), self.feed_dict)

    def tf_name(self, name) -> str:
        """The variable (frozen Const) a weight comes from, through reshapes of it (Keras 3
        reshapes its bias to (1, 1, 1, C))."""
        node_name, node = self.source(name)
        while node.op in ("Reshape", "Squeeze", "ExpandDims"):
            node_name, node = self.source(node.input[0])
        return node_name + ":0"

    def shape(self, name) -> List[int]:
        if self.constant(name):
            return list(np.shape(self.value(name)))
        value = self.values.get(self.port_key(name))
        return list((value if value is not None else self.values[self.source(name)[0]]).shape)

    def data_operands(self, node) -> Tuple[List[str], List[str]]:
        inputs = data_inputs(node)
        return [i for i in inputs if not self.constant(i)], [i for i in inputs if self.constant(i)]

    def only_user(self, node, ops) -> Optional[node_def_pb2.NodeDef]:
        """The single consumer of `node` if it is one of `ops` (through no pass-throughs) and
        `node` is not a model output, so the two can become one layer."""
        users = self.users[node.name]
        if len(users) == 1 and self.nodes[users[0]].op in ops and node.name not in self.outputs:
            return self.nodes[users[0]]
        return None

    def layer_input(self, name) -> str:
        return self.layer_of.get(self.port_key(name)) or self.layer_of[self.source(name)[0]]

    @staticmethod
    def port_key(name) -> str:
        """The key of a multi-output op's output other than the first ('split:1'), under which
        its layer and value are recorded; a first output is keyed by its node's name."""
        node_name, port, _ = split_input(name)
        return "%s:%d" % (node_name, port) if port else node_name

    # ---- building layers
    def name_for(self, node, weights=(), output=None, label="") -> str:
        """Weighted layers take their variables' scope ('vgg_19/conv1/conv1_1'); a tflearn
        layer's output takes the layer's name ('MaxPool2D_1'), and its other parts
        '<layer>/<label>' ('Conv2D/relu'); other layers take the op's name."""
        candidates = []
        scopes = [w.rsplit(":", 1)[0].rsplit("/", 1)[0] for w in weights if "/" in w]
        if weights and len(scopes) == len(weights):
            common = os.path.commonprefix([s.split("/") for s in scopes])
            candidates.append("/".join(common))
        if weights and "/" in node.name:
            candidates.append(node.name.rsplit("/", 1)[0])
        output = output or node
        if output.name in self.recorded:
            candidates.append(self.recorded[output.name])
        scope = self.recorded_scope(output.name)
        if scope and label:
            candidates.append("%s/%s" % (scope, label))
        for candidate in candidates:
            if candidate and candidate not in self.reserved:
                self.reserved.add(candidate)
                return candidate
        return node.name

    def recorded_scope(self, node_name) -> Optional[str]:
        """The innermost tflearn layer whose scope holds the node."""
        parts = node_name.split("/")
        for end in range(len(parts) - 1, 0, -1):
            if "/".join(parts[:end]) in self.recorded_scopes:
                return "/".join(parts[:end])
        return None

    def add(self, node, kind, inputs, config=None, arrays=None, output_node=None, claims=(), name=None):
        arrays = {role: (np.asarray(value, np.float32), tf_name)
                  for role, (value, tf_name) in (arrays or {}).items()}
        output = output_node or node
        name = name or self.name_for(node, [t for _, t in arrays.values()], output,
                                     (config or {}).get("function") or kind)
        layer = intermediate.Layer(
            name, kind, [self.layer_input(i) for i in inputs], config or {},
            list(self.values[output.name].shape),
            {role: value for role, (value, _) in arrays.items()},
            {role: tf_name for role, (_, tf_name) in arrays.items()})
        self.layers.append(layer)
        self.tensor_of[name] = output.name
        for claimed in (node,) + tuple(claims):
            self.layer_of[claimed.name] = name
            self.absorbed.add(claimed.name)
        return layer

    def run(self) -> List[intermediate.Layer]:
        for node in topological_order(self.graph_def):
            if node.name in self.absorbed or self.constant(node.name) or node.op in ("NoOp", "IdentityN"):
                continue
            try:
                self.map(node)
            except Unmappable as reason:
                self.problems.append(Refusal(node.name, node.op, reason))
                self.layer_of[node.name] = node.name  # keep walking: report every problem
        if self.problems:
            raise UnsupportedError(self.problems)
        return self.layers

    def map(self, node) -> None:
        if node.name in self.inputs:
            shape = list(self.values[node.name].shape)
            self.add(node, "input", [], {"shape": shape})
            return
        handler = MAPPERS.get(node.op)
        if handler is None:
            raise Unmappable("no mapping for this op")
        handler(self, node)
