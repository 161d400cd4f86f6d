"""A frozen inference graph -> the intermediate model, with TensorFlow's reference activations."""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import tensorflow as tf

from ... import __version__, intermediate
from ...errors import ConversionError, UnsupportedError
from ...measure import relative_error
from .float64 import float64_run
from .freeze import freeze_with_cuts
from .inference import CONTROL_FLOW_OPS
from .load import load_source, model_stem
from .mapper import Mapper
from .nodes import node_of_tensor
from .post_processing import add_graph_detection_output, find_post_processing
from .session import SESSION_CONFIG, full_tensor_name, import_graph, input_shapes
from ..reference import reference_batch

v1 = tf.compat.v1


def graph_to_intermediate(graph_def, inputs, outputs, name, source_framework, source_path,
                          input_shape=None, per_layer=False, seed=0, user_input=None,
                          reference=None, layer_names=None) -> intermediate.Model:
    """Map a frozen, pruned inference GraphDef (from `load_graph`) onto the intermediate
    vocabulary and record TensorFlow's reference activations on a seeded input (and
    `user_input`, see export/reference.py), or on `reference` {input: batch} when given.
    `layer_names` {output tensor: name} names the layers (tflearn's own names)."""
    _refuse_control_flow(graph_def)
    shapes = input_shapes(graph_def, inputs, input_shape, source_path)
    feeds = reference or dict(zip(shapes, reference_batch(list(shapes.values()), seed, user_input,
                                                          "%s: " % source_path, list(shapes))))
    graph = import_graph(graph_def)
    with v1.Session(graph=graph, config=SESSION_CONFIG) as session:
        data_nodes = [op for op in graph.get_operations()
                      if op.outputs and op.outputs[0].dtype.is_floating and op.type != "Const"]
        feed_dict = {graph.get_tensor_by_name(full_tensor_name(i)): v for i, v in feeds.items()}
        fetched = session.run([op.outputs[0] for op in data_nodes], feed_dict)
        values = {op.name: value for op, value in zip(data_nodes, fetched)}
        mapper = Mapper(graph_def, inputs, outputs, values, session, feed_dict, layer_names)
        layers = mapper.run()
        direct = session.run([graph.get_tensor_by_name(full_tensor_name(o)) for o in outputs], feed_dict)
    output_layers, output_names = [], []
    for tensor in outputs:
        layer = mapper.layer_input(node_of_tensor(tensor))
        if layer not in output_layers:
            output_layers.append(layer)
            output_names.append(node_of_tensor(tensor))
    for tensor, value in zip(outputs, direct):
        recorded = values[mapper.tensor_of[mapper.layer_input(node_of_tensor(tensor))]]
        if relative_error(recorded, value) > 1e-6:
            raise ConversionError("%s: output '%s' recorded during the per-layer run differs from a "
                                  "direct run of the graph" % (source_path, tensor))
    model = intermediate.Model(
        name, layers, output_layers,
        attrs={"source_framework": source_framework, "source_version": _source_version(source_framework),
               "tensorflow_version": tf.__version__, "source_path": str(source_path),
               "created_by": "tf2caffe %s" % __version__, "output_names": json.dumps(output_names)},
        reference_inputs={mapper.layer_input(node_of_tensor(i)): feeds[i] for i in inputs})
    recorded = [layer.name for layer in layers] if per_layer else model.compared_layers()
    model.reference_activations = {layer: values[mapper.tensor_of[layer]] for layer in recorded}
    fetches = [mapper.tensor_of[layer] for layer in recorded]
    # The float32 graph (every weight) goes before its float64 copy comes.
    del graph, data_nodes, feed_dict, fetched, values, mapper
    truths, why_not = float64_run(graph_def, feeds, fetches)
    if truths is None:
        model.attrs["float64_reference"] = "none: %s" % why_not
    else:
        model.reference_float64 = {layer: truths[fetch] for layer, fetch in zip(recorded, fetches)}
    return model


def _refuse_control_flow(graph_def) -> None:
    """Conditionals and loops left after resolution depend on the input: no layer can stand for
    them (and tensors inside a loop cannot even be fetched for the reference)."""
    problems = ["'%s' (%s): control flow that does not depend on a training flag" % (n.name, n.op)
                for n in graph_def.node if n.op in CONTROL_FLOW_OPS]
    if problems:
        raise UnsupportedError(problems)


def _source_version(framework) -> str:
    if framework == "tflearn":
        try:
            return importlib.metadata.version("tflearn")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
    return tf.__version__


def source_to_intermediate(src, inputs=None, outputs=None, signature=None, input_shape=None,
                           per_layer=False, seed=0, user_input=None, post_processing=True) -> intermediate.Model:
    """Load and map a graph source (see `load_graph`); the model is named `model_stem(src)`.
    With `post_processing`, an SSD's NMS after the two --outputs becomes an `ssd_detection_output`
    layer (post_processing.py)."""
    given = outputs is not None
    source = load_source(Path(src), signature)
    post = find_post_processing(source, outputs, str(src)) if post_processing else None
    if post is not None and outputs is None:  # found from the NMS
        outputs = [post.box_encodings, post.class_logits]
    graph_def, inputs, outputs, reference = freeze_with_cuts(source, Path(src), inputs, outputs, input_shape,
                                                             seed, user_input)
    try:
        model = graph_to_intermediate(graph_def, inputs, outputs, model_stem(src), source.framework, src,
                                      input_shape=None if reference else input_shape, per_layer=per_layer,
                                      seed=seed, user_input=user_input, reference=reference,
                                      layer_names=source.layer_tensors)
    except UnsupportedError as error:
        if not given:  # a wrongly guessed output (a loss) shows up as unsupported ops
            error.args = ("%s (output found: %s; pass --outputs to convert another tensor)" % (
                error, ", ".join(outputs)),)
        raise
    if post is not None:
        add_graph_detection_output(model, post, str(src))
    return model
