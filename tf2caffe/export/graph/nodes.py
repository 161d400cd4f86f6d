"""GraphDef queries shared by every stage: tensor names, node indexes, topological order,
output types."""
from __future__ import annotations

import heapq
from typing import Dict, Iterable, List, Optional, Tuple

import tensorflow as tf
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import op_def_registry

from ...errors import ConversionError


def split_input(name: str) -> Tuple[str, int, bool]:
    """GraphDef input string -> (node, output index, is_control)."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, _, port = name.partition(":")
    return node, int(port) if port else 0, False


def tensor_name(node: str, port: int) -> str:
    return node if port == 0 else "%s:%d" % (node, port)


def node_of_tensor(tensor: str) -> str:
    node, port, _ = split_input(tensor)
    if port not in (0, -1):
        raise ConversionError("'%s': only the first output of an op can be an input or output "
                              "of the model" % tensor)
    return node


def data_inputs(node) -> List[str]:
    return [i for i in node.input if not i.startswith("^")]


def nodes_by_name(graph_def) -> Dict[str, node_def_pb2.NodeDef]:
    return {node.name: node for node in graph_def.node}


def users_by_node(graph_def, data_only=True) -> Dict[str, List[str]]:
    users: Dict[str, List[str]] = {node.name: [] for node in graph_def.node}
    for node in graph_def.node:
        for name in node.input:
            source, _, control = split_input(name)
            if source in users and not (control and data_only):
                users[source].append(node.name)
    return users


def topological_order(graph_def) -> List[node_def_pb2.NodeDef]:
    """Nodes with every input before its consumers; nodes on cycles (while loops) go last."""
    nodes = nodes_by_name(graph_def)
    pending = {name: len({split_input(i)[0] for i in node.input if split_input(i)[0] in nodes})
               for name, node in nodes.items()}
    users = users_by_node(graph_def, data_only=False)
    index = {node.name: i for i, node in enumerate(graph_def.node)}
    ready = [(index[name], name) for name, count in pending.items() if count == 0]
    heapq.heapify(ready)  # among ready nodes, the graph's own order: layers come out as written
    order, seen = [], set()
    while ready:
        _, name = heapq.heappop(ready)
        if name in seen:
            continue
        seen.add(name)
        order.append(nodes[name])
        for user in set(users[name]):
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, (index[user], user))
    order.extend(node for node in graph_def.node if node.name not in seen)
    return order


def ancestors(graph_def, names: Iterable[str]) -> set:
    nodes = nodes_by_name(graph_def)
    seen, stack = set(), [n for n in names if n in nodes]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(split_input(i)[0] for i in nodes[name].input if split_input(i)[0] in nodes)
    return seen


def output_dtype(node) -> Optional[int]:
    """Type of the node's first output, from its op definition."""
    op_def = op_def_registry.get(node.op)
    if op_def is None or not op_def.output_arg:
        return None
    arg = op_def.output_arg[0]
    if arg.type:
        return arg.type
    if arg.type_attr:
        return node.attr[arg.type_attr].type
    if arg.type_list_attr and node.attr[arg.type_list_attr].list.type:
        return node.attr[arg.type_list_attr].list.type[0]
    return None


def value_dtype(node) -> Optional[int]:
    """Type of the value a node holds: a variable's (not its handle's), refs dereferenced."""
    if node.op in ("VarHandleOp", "VariableV2", "Variable"):
        return node.attr["dtype"].type
    dtype = output_dtype(node)
    return tf.as_dtype(dtype).base_dtype.as_datatype_enum if dtype else None


def placeholder_rank(node) -> Optional[int]:
    shape = node.attr["shape"].shape if "shape" in node.attr else None
    if shape is None or shape.unknown_rank:
        return None
    return len(shape.dim)


def const_node(name, value, dtype=None) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op="Const")
    tensor = tf.make_tensor_proto(value, dtype=dtype)
    node.attr["dtype"].type = tensor.dtype
    node.attr["value"].tensor.CopyFrom(tensor)
    return node
