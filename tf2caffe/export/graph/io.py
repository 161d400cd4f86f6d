"""Finding the inference graph's inputs (data placeholders) and outputs, or checking given ones."""
from __future__ import annotations

from typing import List, Tuple

import tensorflow as tf

from ...errors import ConversionError
from .inference import TRAINING_OP_PATTERN, is_training_op
from .nodes import (ancestors, data_inputs, node_of_tensor, nodes_by_name, output_dtype, placeholder_rank,
                    split_input, users_by_node)


FLOAT_TYPES = {tf.float16.as_datatype_enum, tf.float32.as_datatype_enum, tf.float64.as_datatype_enum}
PARAMETRIC = {"Conv2D": 0, "DepthwiseConv2dNative": 0, "Conv2DBackpropInput": 2, "MatMul": 0,
              "FusedBatchNorm": 0, "FusedBatchNormV2": 0, "FusedBatchNormV3": 0}


def detect_inputs_outputs(graph_def, inputs, outputs, where,
                          layer_tensors=None) -> Tuple[List[str], List[str]]:
    """Inputs and outputs of the inference graph, given or found (see `load_graph`)."""
    nodes = nodes_by_name(graph_def)
    for name in list(inputs or []) + list(outputs or []):
        if node_of_tensor(name) not in nodes:
            raise ConversionError("%s: no node '%s' in the graph" % (where, name))
    forward = {n.name for n in graph_def.node if not is_training_op(n)}
    users = {name: [u for u in us if u in forward] for name, us in users_by_node(graph_def).items()}
    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder" and n.name in forward]
    if outputs is None:
        outputs = _find_outputs(graph_def, inputs, placeholders, users, where, layer_tensors)
    outputs = [node_of_tensor(o) for o in outputs]
    needed = ancestors(graph_def, outputs)
    if inputs is None:
        inputs = [p for p in placeholders if p in needed]
        if not inputs:
            raise ConversionError("%s: the outputs %s depend on no placeholder" % (where, ", ".join(outputs)))
    inputs = [node_of_tensor(i) for i in inputs]
    for name in inputs:
        if nodes[name].op not in ("Placeholder", "PlaceholderWithDefault"):
            raise ConversionError("%s: input '%s' is a %s, not a placeholder" % (where, name, nodes[name].op))
        if name not in needed:
            raise ConversionError("%s: the outputs do not depend on input '%s'" % (where, name))
    bad = [p for p in inputs if not _is_data_placeholder(nodes[p])]
    stray = [p for p in placeholders if p in needed and p not in inputs]
    if bad or stray:
        raise ConversionError("%s: the outputs %s depend on placeholders that are not image/feature "
                              "inputs: %s; pass --inputs and --outputs to choose the inference "
                              "subgraph" % (where, ", ".join(outputs), _describe(nodes, bad + stray)))
    return inputs, outputs


def _find_outputs(graph_def, inputs, placeholders, users, where, layer_tensors=None) -> List[str]:
    """The one float tensor the data inputs reach that nothing else in the forward graph uses,
    once everything depending on labels is set aside; with recorded layer outputs, the one of
    them no other depends on."""
    nodes = nodes_by_name(graph_def)
    if inputs is not None:
        data = [node_of_tensor(i) for i in inputs]
    else:
        # Data placeholders flow into a weighted op; labels only into losses and metrics.
        candidates = [p for p in placeholders if _is_data_placeholder(nodes[p])]
        data = [p for p in candidates if _feeds_weighted_op(p, nodes, users)] or candidates
    # Scalars (keep_prob, learning rate) are not labels: a forward pass that needs one stays
    # connected, and the check on stray placeholders names it.
    labels = [p for p in placeholders if p not in data and placeholder_rank(nodes[p]) != 0]

    def reach(starts):
        seen, stack = set(), list(starts)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(users[name])
        return seen

    region = reach(data) - reach(labels)
    order = {n.name: i for i, n in enumerate(graph_def.node)}
    if layer_tensors:
        layers = {split_input(t)[0] for t in layer_tensors} & region
        region = {n for n in region if n in layers}
        users = {n: [u for u in reach([n]) - {n} if u in layers] for n in region}
    updates = _update_inputs(graph_def)
    sinks = [n for n in region if nodes[n].op != "Placeholder" and output_dtype(nodes[n]) in FLOAT_TYPES
             and not any(u in region for u in users[n]) and n not in updates]
    # Logits feeding the loss are a sink too, but the predictions computed from them win.
    upstream = set().union(*[ancestors(graph_def, [m]) - {m} for m in sinks])
    sinks = [n for n in sinks if n not in upstream]
    # A tensor only the loss reads (logits squeezed for the loss) loses to one nothing reads.
    unread = [n for n in sinks if not users[n]]
    sinks = sorted(unread or sinks, key=order.get)
    if len(sinks) != 1:
        raise ConversionError("%s: cannot tell the model's output (%s); pass --outputs (and "
                              "--inputs; input candidates: %s)" % (
                                  where, "candidates: " + ", ".join(sinks) if sinks else "no candidate",
                                  ", ".join(data) or "none"))
    return sinks


def _update_inputs(graph_def) -> set:
    """Nodes that feed a variable update (a moving average's step) rather than an output."""
    updates = {n.name for n in graph_def.node if n.op.startswith("Assign") or TRAINING_OP_PATTERN.match(n.op)}
    return {split_input(i)[0] for n in graph_def.node if n.name in updates for i in data_inputs(n)}


def _is_data_placeholder(node) -> bool:
    return output_dtype(node) in FLOAT_TYPES and placeholder_rank(node) != 0


def _describe(nodes, names) -> str:
    return ", ".join("%s (%s, rank %s)" % (name, tf.as_dtype(output_dtype(nodes[name])).name,
                                            placeholder_rank(nodes[name])) for name in names)


def _feeds_weighted_op(placeholder, nodes, users) -> bool:
    seen, stack = set(), [placeholder]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for user in users[name]:
            node = nodes[user]
            if node.op in PARAMETRIC and split_input(data_inputs(node)[PARAMETRIC[node.op]])[0] == name:
                return True
            stack.append(user)
    return False
