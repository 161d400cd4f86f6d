"""The float64 truth of a frozen graph: the same graph, weights and input, computed in float64.

TensorFlow's float32 run and Caffe's round differently, and in a deep or ill-conditioned net both
drift from the function the weights define by more than a converter's own errors (a resnext at
unit gain: 1e-4 per layer). Measured against this truth, the import stage can tell a wrong
conversion from float32 noise that TensorFlow has as well.

The copy changes every float32 type attribute and constant to float64. An op that TensorFlow
only defines for float32 and smaller (LRN, FusedBatchNorm) stays float32 between two Casts: its
own rounding (~1e-7) enters the truth, nothing before or after it does. Where even that fails,
there is no truth, and verification compares with TensorFlow's float32 output alone.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry

from .session import SESSION_CONFIG, full_tensor_name, import_graph
from ...errors import ConversionError

v1 = tf.compat.v1


def _float32_only(node) -> bool:
    """Whether the node's op restricts a float32 type attribute to types without float64."""
    op_def = op_def_registry.get(node.op)
    for attr_def in op_def.attr if op_def is not None else ():
        allowed = attr_def.allowed_values.list.type
        if (attr_def.type == "type" and allowed and types_pb2.DT_DOUBLE not in allowed
                and node.attr[attr_def.name].type == types_pb2.DT_FLOAT):
            return True
    return False


def _cast(name, source, from_type, to_type):
    node = v1.NodeDef(name=name, op="Cast", input=[source])
    node.attr["SrcT"].type, node.attr["DstT"].type = from_type, to_type
    node.attr["Truncate"].b = False
    return node


def _in_float32(node) -> list:
    """`node` kept in float32 between Casts, under its own name: the nodes replacing it."""
    kept = v1.NodeDef()
    kept.CopyFrom(node)
    kept.name = node.name + "/float32"
    data = [(i, name) for i, name in enumerate(node.input) if not name.startswith("^")]
    casts = [_cast("%s/float32_input_%d" % (node.name, i), name, types_pb2.DT_DOUBLE, types_pb2.DT_FLOAT)
             for i, name in data]
    for (i, _), cast in zip(data, casts):
        kept.input[i] = cast.name
    return casts + [kept, _cast(node.name, kept.name, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)]


def float64_copy(graph_def):
    """`graph_def` with float64 wherever it has float32: types, constants and placeholders. Built
    node by node: a frozen graph holds every weight, and a whole float32 copy before converting
    would hold them once more."""
    islands = [node for node in graph_def.node if _float32_only(node)]
    read_beyond_output_0 = {name.split(":")[0] for node in graph_def.node for name in node.input
                            if ":" in name and not name.endswith(":0")}
    for node in islands:
        if node.name in read_beyond_output_0:
            raise ConversionError("%s (%s) has no float64 kernel, and more than one output is used" % (
                node.name, node.op))
    island_names = {node.name for node in islands}
    copy = v1.GraphDef()
    copy.versions.CopyFrom(graph_def.versions)
    copy.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in island_names:
            copy.node.extend(_in_float32(node))
        else:
            copy.node.append(_in_float64(node))
    return copy


def _in_float64(node):
    """A copy of `node` computing in float64 (one node at a time: a constant's float32 values are
    held twice only while it is converted)."""
    converted = v1.NodeDef()
    converted.CopyFrom(node)
    for attr in converted.attr.values():
        if attr.HasField("type") and attr.type == types_pb2.DT_FLOAT:
            attr.type = types_pb2.DT_DOUBLE
        elif attr.HasField("list") and types_pb2.DT_FLOAT in attr.list.type:
            attr.list.type[:] = [types_pb2.DT_DOUBLE if t == types_pb2.DT_FLOAT else t for t in attr.list.type]
        elif attr.HasField("tensor") and attr.tensor.dtype == types_pb2.DT_FLOAT:
            attr.tensor.CopyFrom(tf.make_tensor_proto(tf.make_ndarray(attr.tensor).astype(np.float64)))
    return converted


def float64_run(graph_def, feeds: Dict[str, np.ndarray],
                fetches: Sequence[str]) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[str]]:
    """({fetched tensor: float64 value}, None), or (None, why there is no float64 truth)."""
    try:
        graph = import_graph(float64_copy(graph_def))
    except ConversionError as error:
        return None, str(error)
    try:
        with v1.Session(graph=graph, config=SESSION_CONFIG) as session:
            values = session.run([graph.get_tensor_by_name(full_tensor_name(name)) for name in fetches],
                                 {graph.get_tensor_by_name(full_tensor_name(name)): value.astype(np.float64)
                                  for name, value in feeds.items()})
    except (tf.errors.OpError, TypeError, ValueError) as error:  # an op without a float64 kernel
        return None, str(error).split("\n")[0]
    return dict(zip(fetches, values)), None
