"""Running GraphDefs in TF1 sessions on seeded inputs, and comparing what they compute."""
from __future__ import annotations

from typing import Dict, List

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

from ...errors import ConversionError
from .nodes import node_of_tensor, nodes_by_name, placeholder_rank

v1 = tf.compat.v1


# Grappler spends seconds constant-folding big frozen graphs for every new set of fetches, and
# its fusions would make the reference differ from the op-by-op computation Caffe reproduces.
SESSION_CONFIG = config_pb2.ConfigProto(graph_options=config_pb2.GraphOptions(
    rewrite_options=rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True),
    optimizer_options=config_pb2.OptimizerOptions(opt_level=config_pb2.OptimizerOptions.L0)))


def run_fetches(session, feeds, fetches):
    graph = session.graph
    feed_dict = {graph.get_tensor_by_name(full_tensor_name(name)): value for name, value in feeds.items()}
    return session.run([graph.get_tensor_by_name(full_tensor_name(name)) for name in fetches], feed_dict)


def full_tensor_name(tensor: str) -> str:
    return tensor if ":" in tensor else tensor + ":0"


def import_graph(graph_def) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        try:
            v1.import_graph_def(graph_def, name="")
        except ValueError as error:  # an op this TensorFlow lacks, inputs of the wrong type
            raise ConversionError("TensorFlow cannot load the graph: %s" % str(error).split("\n")[0])
    return graph


def run_graph_def(graph_def, feeds, fetches):
    with v1.Session(graph=import_graph(graph_def), config=SESSION_CONFIG) as session:
        return run_fetches(session, feeds, fetches)


def input_shapes(graph_def, inputs, input_shape, where) -> Dict[str, List[int]]:
    """Concrete shape per input: batch from `input_shape` or 1, other unknown dims from
    `input_shape`."""
    nodes = nodes_by_name(graph_def)
    if input_shape is not None and len(inputs) != 1:
        raise ConversionError("%s: --input-shape applies to a single input, the graph has %d (%s)" % (
            where, len(inputs), ", ".join(inputs)))
    shapes = {}
    for name in inputs:
        node = nodes[node_of_tensor(name)]
        rank = placeholder_rank(node)
        dims = [d.size for d in node.attr["shape"].shape.dim] if rank is not None else None
        if input_shape is not None:
            wanted = [int(d) for d in input_shape]
            if dims is not None and (len(wanted) != len(dims) or any(
                    d >= 0 and d != w for d, w in zip(dims[1:], wanted[1:]))):
                raise ConversionError("%s: --input-shape %s does not fit input '%s' of shape %s" % (
                    where, wanted, name, dims))
            shapes[name] = wanted
            continue
        if dims is None or any(d < 0 for d in dims[1:]):
            raise ConversionError("%s: input '%s' has shape %s with unknown dimensions; pass "
                                  "--input-shape N,H,W,C" % (where, name, dims or "unknown"))
        shapes[name] = [dims[0] if dims[0] > 0 else 1] + dims[1:]
    return shapes



