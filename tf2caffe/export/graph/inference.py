"""Training structure -> inference: training flags forced False, conditionals on them (v1
`Switch`/`Merge`, v2 `If` and function calls) resolved, training ops' control edges dropped,
`PlaceholderWithDefault` -> its default."""
from __future__ import annotations

import copy
import re
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

from ...errors import ConversionError
from .nodes import (ancestors, const_node, data_inputs, nodes_by_name, split_input, tensor_name,
                    topological_order, users_by_node, value_dtype)

v1 = tf.compat.v1


# Ops that only train, save, summarise or initialise: never part of the inference graph.
TRAINING_OP_TYPES = {
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
    "AssignSubVariableOp", "VarIsInitializedOp", "IsVariableInitialized", "NoOp",
    "SaveV2", "RestoreV2", "Save", "Restore", "RestoreSlice", "MergeV2Checkpoints",
    "ShardedFilename", "StringJoin", "BroadcastGradientArgs", "L2Loss", "Print", "PrintV2",
    "Assert", "ScalarSummary", "HistogramSummary", "ImageSummary", "MergeSummary",
    "TensorSummary", "TensorSummaryV2", "WriteSummary", "WriteScalarSummary",
}
TRAINING_OP_PATTERN = re.compile(r"^(Apply|ResourceApply|SparseApply|ResourceSparseApply)|Grad(Grad)?$")
BOOL = tf.bool.as_datatype_enum
# A flag deciding train/inference behaviour is recognised by its name.
TRAINING_FLAG = re.compile(r"train", re.IGNORECASE)
FLAG_OPS = ("Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Const")
CONTROL_FLOW_CALLS = ("If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall")
CONTROL_FLOW_OPS = CONTROL_FLOW_CALLS + ("Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "Exit",
                                         "NextIteration", "LoopCond", "While", "StatelessWhile")


def is_training_op(node) -> bool:
    if node.op in TRAINING_OP_TYPES or TRAINING_OP_PATTERN.search(node.op):
        return True
    parts = node.name.split("/")
    return any(part == "gradients" or part.startswith("gradients_") for part in parts)


def _force_training_flags(graph_def, keep: Sequence[str]) -> Dict[str, bool]:
    """Turn boolean training flags (placeholders and variables named like `is_training`) into
    the constant False, in place. Returns the tensors to feed False to run the original graph
    the same way (a resource variable's reads, since its handle cannot be fed)."""
    flags = {}
    for node in graph_def.node:
        if (node.name in keep or value_dtype(node) != BOOL or not TRAINING_FLAG.search(node.name)
                or node.op not in FLAG_OPS
                or "/Initializer/" in node.name):
            continue
        if node.op == "VarHandleOp":
            for user in graph_def.node:
                if user.op == "ReadVariableOp" and split_input(user.input[0])[0] == node.name:
                    flags[user.name] = False
                    user.op = "Identity"
                    user.attr["T"].type = BOOL
                    del user.attr["dtype"]
        else:
            flags[node.name] = False
        node.CopyFrom(const_node(node.name, False, tf.bool))
    return flags


def _static_bool(graph_def, tensor: str, nodes=None) -> Optional[bool]:
    """The value of a scalar boolean tensor when the graph fixes it, else None."""
    nodes = nodes or nodes_by_name(graph_def)
    name, port, _ = split_input(tensor)
    node = nodes.get(name)
    while node is not None and node.op in ("Identity", "PlaceholderWithDefault", "Snapshot") and port == 0:
        name, port, _ = split_input(node.input[0])
        node = nodes.get(name)
    if node is None:
        return None
    if node.op == "Const" and node.attr["dtype"].type == BOOL:
        value = tf.make_ndarray(node.attr["value"].tensor)
        return bool(value) if value.size == 1 else None
    if node.op == "LogicalNot":
        value = _static_bool(graph_def, node.input[0], nodes)
        return None if value is None else not value
    return None


def _library_graph(graph_def) -> tf.Graph:
    # function_def_to_graph_def looks nested functions up in the default graph.
    graph = tf.Graph()
    with graph.as_default():
        v1.import_graph_def(graph_pb2.GraphDef(library=graph_def.library), name="")
    return graph


def _inline_calls(graph_def, inlined: set) -> bool:
    """Replace each function call we can resolve statically by the function's body: v2
    `If`/`StatelessIf` on a constant predicate by the branch it takes, `PartitionedCall`s by
    their function. Body nodes are named `<call>/<node>`; the calls' names are added to
    `inlined`. Returns whether anything changed."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    nodes = nodes_by_name(graph_def)
    users = {name: set(found) for name, found in users_by_node(graph_def, data_only=False).items()}
    changed = False
    with _library_graph(graph_def).as_default():
        for node in list(graph_def.node):
            if node.op not in CONTROL_FLOW_CALLS:
                continue
            args = data_inputs(node)
            if node.op in ("If", "StatelessIf"):
                taken = _static_bool(graph_def, args[0], nodes)
                if taken is None:
                    continue
                function, args = node.attr["then_branch" if taken else "else_branch"].func.name, args[1:]
            else:
                function = node.attr["f"].func.name
            if function not in functions:
                continue
            _inline(graph_def, node, functions[function], args, nodes, users)
            inlined.add(node.name)
            changed = True
    return changed


def _inline(graph_def, call, fdef, args, nodes, users):
    """Inline one call; `nodes` (name -> node) and `users` (name -> consumer names) are kept
    up to date, so inlining many calls stays linear in the graph's size."""
    body, flat = function_def_to_graph_def(fdef)
    prefix = call.name + "/"
    params = {arg.name: outer for arg, outer in zip(fdef.signature.input_arg, args)}
    controls = [i for i in call.input if i.startswith("^")]

    def outer(name):
        node, port, control = split_input(name)
        if node in params:
            target = split_input(params[node])[0]
            return "^" + target if control else params[node]
        return ("^" if control else "") + prefix + tensor_name(node, max(port, 0))

    added = []
    for node in body.node:
        if node.name in params:
            continue
        node = copy.deepcopy(node)
        node.name = prefix + node.name
        inputs = [outer(i) for i in node.input]
        del node.input[:]
        node.input.extend(inputs + ([] if any(not i.startswith("^") for i in inputs) else controls))
        added.append(node)
    results = [outer(flat[fdef.ret[arg.name]]) for arg in fdef.signature.output_arg]
    # Keep only what computes the results someone uses: a fused batch norm's unused batch
    # statistics would otherwise look like outputs of the model.
    consumers = [nodes[name] for name in users.get(call.name, ())]
    used = {split_input(i)[1] for n in consumers for i in n.input if split_input(i)[0] == call.name}
    wanted = [r for port, r in enumerate(results) if port in used or -1 in used]
    kept = ancestors(graph_pb2.GraphDef(node=added), [split_input(r)[0] for r in wanted])
    for node in consumers:
        rewired = []
        for name in node.input:
            source, port, control = split_input(name)
            if source == call.name and not control:
                name = results[port]
                users.setdefault(split_input(name)[0], set()).add(node.name)
            rewired.append(name)
        del node.input[:]
        node.input.extend(rewired)
    # The call becomes a NoOp after the body's results, for anything with a control edge on it.
    replacement = node_def_pb2.NodeDef(name=call.name, op="NoOp")
    replacement.input.extend(sorted({"^" + split_input(r)[0] for r in wanted if split_input(r)[0] in kept}))
    call.CopyFrom(replacement)
    users[call.name] = {n.name for n in consumers if any(i == "^" + call.name for i in n.input)}
    for node in added:
        if node.name in kept:
            element = graph_def.node.add()
            element.CopyFrom(node)
            nodes[element.name] = element
            for name in element.input:
                users.setdefault(split_input(name)[0], set()).add(element.name)


def _remove_dead_branches(graph_def) -> bool:
    """Resolve v1 control flow on constant predicates: a `Switch` forwards its input to the
    taken side only, everything fed by the other side (through data or control edges) is dead
    and removed, and a `Merge` with one live input becomes that input. Returns whether
    anything changed. (Grappler could do this, but it also rewrites and fuses other ops and
    renames nodes; this pass touches control flow only.)"""
    nodes = nodes_by_name(graph_def)
    alias: Dict[str, str] = {}
    dead: set = set()  # tensors ("node:port") and nodes ("node") known dead
    resolved = set()

    def live(name):
        node, port, _ = split_input(name)
        return "%s:%d" % (node, port) not in dead and node not in dead

    for node in topological_order(graph_def):
        inputs = data_inputs(node)
        controls = [split_input(i)[0] for i in node.input if i.startswith("^")]
        if any(c in dead for c in controls):
            dead.add(node.name)
        elif node.op in ("Switch", "RefSwitch"):
            taken = _static_bool(graph_def, inputs[1], nodes)
            if not live(inputs[0]) or not live(inputs[1]):
                dead.add(node.name)
            elif taken is not None:
                alias["%s:%d" % (node.name, int(taken))] = inputs[0]
                dead.add("%s:%d" % (node.name, int(not taken)))
                resolved.add(node.name)
        elif node.op in ("Merge", "RefMerge"):
            alive = [i for i in inputs if live(i)]
            if not alive:
                dead.add(node.name)
            elif len(alive) == 1 and len(inputs) > 1:
                alias["%s:0" % node.name] = alive[0]
                resolved.add(node.name)
        elif not all(live(i) for i in inputs):
            dead.add(node.name)
    if not dead and not resolved:
        return False

    def follow(name):
        node, port, control = split_input(name)
        key = "%s:%d" % (node, port)
        while key in alias:
            node, port, _ = split_input(alias[key])
            key = "%s:%d" % (node, port)
        return ("^" + node) if control else tensor_name(node, port)

    kept = []
    for node in graph_def.node:
        if node.name in dead or node.name in resolved:
            continue
        node = copy.deepcopy(node)
        inputs = []
        for name in node.input:
            source, port, control = split_input(name)
            if control and (source in resolved or source in dead):
                continue  # a control edge on resolved control flow orders nothing any more
            if not control and source in resolved and port == 1 and nodes[source].op in ("Merge", "RefMerge"):
                raise ConversionError("node '%s' uses which branch '%s' took; not supported" % (
                    node.name, source))
            inputs.append(follow(name))
        del node.input[:]
        node.input.extend(inputs)
        kept.append(node)
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return True


def _remove_unused(graph_def, calls: set) -> None:
    """Drop nodes in the scope of an inlined call that nothing consumes any more (the identity
    a v2 conditional puts on a batch norm's batch statistics, once the training branch of the
    later conditional that used them is gone), repeatedly."""
    scopes = tuple(call + "/" for call in calls)
    while scopes:
        users = users_by_node(graph_def, data_only=False)
        unused = {n.name for n in graph_def.node if n.name.startswith(scopes) and not users[n.name]}
        if not unused:
            return
        kept = [n for n in graph_def.node if n.name not in unused]
        del graph_def.node[:]
        graph_def.node.extend(kept)


def _drop_training_control_edges(graph_def) -> None:
    """Forget control edges on training ops: tf-slim's batch norm makes its output wait for the
    moving-average updates even at inference, which would keep `AssignSub`s on variables that
    freezing turns into constants."""
    training = {n.name for n in graph_def.node if is_training_op(n)}
    for node in graph_def.node:
        kept = [i for i in node.input if not (i.startswith("^") and i[1:] in training)]
        if len(kept) != len(node.input):
            del node.input[:]
            node.input.extend(kept)


def resolve_training(graph_def, keep: Sequence[str]) -> Tuple[graph_pb2.GraphDef, Dict[str, bool]]:
    """Training structure -> inference: training flags False, conditionals on them resolved,
    `PlaceholderWithDefault` -> its default (unless named as an input)."""
    graph_def = copy.deepcopy(graph_def)
    flags = _force_training_flags(graph_def, keep)
    inlined: set = set()
    while _inline_calls(graph_def, inlined) | _remove_dead_branches(graph_def):
        pass
    _remove_unused(graph_def, inlined)
    _drop_training_control_edges(graph_def)
    for node in graph_def.node:
        if node.op == "PlaceholderWithDefault" and node.name not in keep:
            node.op = "Identity"
            node.attr["T"].type = node.attr["dtype"].type
            del node.attr["dtype"]
            del node.attr["shape"]
    return graph_def, flags
