"""`load_graph`: a graph source -> its frozen, pruned inference GraphDef, checked against the
original graph."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Dict, List, Optional

import tensorflow as tf

from ...errors import ConversionError
from ...measure import relative_error
from .inference import resolve_training
from .io import detect_inputs_outputs
from .load import GraphSource, load_source
from .nodes import node_of_tensor, nodes_by_name, split_input, tensor_name
from ..reference import reference_batch
from .session import full_tensor_name, input_shapes, run_graph_def

v1 = tf.compat.v1


CALL_PREFIX = re.compile(r"^((Stateful)?PartitionedCall(_\d+)?/)+")


def _rename(graph_def, renames: Dict[str, str]) -> Dict[str, str]:
    """Rename nodes in place (a frozen graph holds every weight: a copy of it is a copy of
    them): `renames` first, then drop the `StatefulPartitionedCall/` scopes that a SavedModel's
    function call adds, where the new name is free. Returns the old -> new mapping."""
    taken = {n.name for n in graph_def.node}
    mapping = {}
    for node in graph_def.node:
        new = renames.get(node.name) or CALL_PREFIX.sub("", node.name)
        if new != node.name and new not in taken:
            mapping[node.name] = new
            taken.add(new)
    for node in graph_def.node:
        node.name = mapping.get(node.name, node.name)
        inputs = []
        for name in node.input:
            source, port, control = split_input(name)
            source = mapping.get(source, source)
            inputs.append("^" + source if control else tensor_name(source, port))
        del node.input[:]
        node.input.extend(inputs)
    return mapping


def parse_names(names) -> Optional[List[str]]:
    if names is None:
        return None
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    return names or None


def named_in(graph_def, names: Optional[List[str]], renames: Dict[str, str]) -> Optional[List[str]]:
    """--inputs/--outputs as the user gives them -> the graph's own names: messages name nodes as
    `_rename` does (without the call scopes), and those names are accepted back."""
    if names is None:
        return None
    own = {n.name for n in graph_def.node}
    shown: Dict[str, List[str]] = {}
    for n in graph_def.node:
        shown.setdefault(renames.get(n.name) or CALL_PREFIX.sub("", n.name), []).append(n.name)
    found = []
    for name in names:
        node = split_input(name)[0]
        if node not in own and len(shown.get(node, [])) == 1:
            name = shown[node][0] + name[len(node):]
        found.append(name)
    return found


def load_graph(src, inputs=None, outputs=None, signature=None, input_shape=None):
    """Load a checkpoint prefix (TF1 or tflearn: `X.meta` + `X.index` + `X.data-*`), a frozen
    GraphDef `.pb` or a SavedModel folder, and return (frozen, pruned inference GraphDef,
    input tensor names, output tensor names).

    Training structure is resolved to inference first (`resolve_training`). Unless given (or
    named by the SavedModel signature), the output is the one float tensor that the data
    placeholders (those flowing into a weighted op) reach and nothing else consumes, ignoring
    training ops and everything that depends on labels; inputs are the placeholders the
    outputs depend on. Anything ambiguous is a ConversionError naming the candidates. The
    result is checked against the original graph, run with training flags off, on a seeded
    input.
    """
    return freeze(load_source(Path(src), signature), Path(src), inputs, outputs, input_shape)


def freeze(source: GraphSource, path, inputs, outputs, input_shape):
    """A loaded source -> (frozen, pruned inference GraphDef, input and output tensor names),
    checked against the source run with training flags off. Closes the source's session."""
    try:
        inputs = named_in(source.graph_def, parse_names(inputs), source.variable_names)
        outputs = named_in(source.graph_def, parse_names(outputs), source.variable_names)
        resolved, flags = resolve_training(source.graph_def, [node_of_tensor(i) for i in inputs or []])
        if inputs is None and source.inputs is not None:
            inputs = [i for i in source.inputs if node_of_tensor(i) not in flags]
        inputs, outputs = detect_inputs_outputs(resolved, inputs, outputs or source.outputs, path,
                                                source.layer_tensors)
        # Both make a new GraphDef, which _rename may change in place.
        if source.session is not None:
            frozen = v1.graph_util.convert_variables_to_constants(source.session, resolved, outputs)
        else:
            frozen = v1.graph_util.extract_sub_graph(resolved, outputs)
        shapes = input_shapes(frozen, inputs, input_shape, path)
        feeds = reference_batch(list(shapes.values()), seed=0)
        expected = source.run(dict(flags, **dict(zip(inputs, feeds))), outputs)
    finally:
        # Closed before the frozen graph runs: the session's variables (and optimizer slots) are
        # as large as the frozen graph's constants.
        if source.session is not None:
            source.session.close()
    renamed = _rename(frozen, source.variable_names)
    new_inputs = [renamed.get(i, i) for i in inputs]
    new_outputs = [renamed.get(o, o) for o in outputs]
    got = run_graph_def(frozen, dict(zip(new_inputs, feeds)), new_outputs)
    for name, value, reference in zip(new_outputs, got, expected):
        error = relative_error(value, reference)
        if error > 1e-5:
            raise ConversionError("%s: output '%s' of the inference graph differs from the original "
                                  "graph run with training flags off (relative error %.2g)" % (
                                      path, name, error))
    return frozen, [full_tensor_name(i) for i in new_inputs], [full_tensor_name(o) for o in new_outputs]


PLACEHOLDERS = ("Placeholder", "PlaceholderWithDefault")


def freeze_with_cuts(source: GraphSource, path, inputs, outputs, input_shape, seed=0, user_input=None):
    """`freeze`, where --inputs may also name internal tensors: the graph is cut there, each becoming
    a placeholder of its shape and dtype, and what came before it is dropped. Returns (GraphDef,
    inputs, outputs, reference): reference {cut input: batch} is what the full graph computes there
    from the seeded input (and `user_input`) for its own placeholders; None without a cut."""
    given = named_in(source.graph_def, parse_names(inputs), source.variable_names) or []
    nodes = nodes_by_name(source.graph_def)
    cuts = [name for name in given if node_of_tensor(name) in nodes and nodes[node_of_tensor(name)].op not in PLACEHOLDERS]
    if not cuts:
        return freeze(source, path, inputs, outputs, input_shape) + (None,)
    kept = [name for name in given if name not in cuts]
    frozen, full_inputs, outputs = freeze(source, path, kept or None, outputs, input_shape)
    present = {n.name for n in frozen.node}
    # In the frozen graph a node may have lost its call scopes (`_rename`).
    cut_nodes = [node if node in present else (source.variable_names.get(node) or CALL_PREFIX.sub("", node))
                 for node in map(node_of_tensor, cuts)]
    shapes = input_shapes(frozen, full_inputs, input_shape, path)
    feeds = dict(zip(shapes, reference_batch(list(shapes.values()), seed, user_input, "%s: " % path, list(shapes))))
    values = run_graph_def(frozen, feeds, [full_tensor_name(node) for node in cut_nodes])
    cut = copy.deepcopy(frozen)
    for node in cut.node:
        if node.name in cut_nodes:
            value = values[cut_nodes.index(node.name)]
            placeholder = v1.NodeDef(name=node.name, op="Placeholder")
            placeholder.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
            placeholder.attr["shape"].shape.CopyFrom(tf.TensorShape([None] + list(value.shape[1:])).as_proto())
            node.CopyFrom(placeholder)
    cut = v1.graph_util.extract_sub_graph(cut, [node_of_tensor(o) for o in outputs])
    kept_inputs = [full_tensor_name(node_of_tensor(i)) for i in full_inputs if node_of_tensor(i) in kept]
    cut_inputs = [full_tensor_name(node) for node in cut_nodes] + kept_inputs
    # The outputs must depend on the cut inputs (and given placeholders) only.
    detect_inputs_outputs(cut, cut_inputs, outputs, path)
    reference = dict(zip(cut_inputs, list(values) + [feeds[i] for i in kept_inputs]))
    return cut, cut_inputs, outputs, reference
