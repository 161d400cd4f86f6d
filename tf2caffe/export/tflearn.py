"""tflearn architectures -> the HDF5 intermediate.

An architecture module (architectures/README.md) builds a tflearn network in a fresh TF1-style
graph. Its weights come from a tflearn checkpoint, the module's `train(seed)`, or a seeded
random initialisation, in that order. The graph then takes the same road as a tflearn
checkpoint read from disk (export/graph/): training structure resolved to inference, frozen,
mapped op by op onto the vocabulary, so a construct converts the same from both sources, and
layers keep the names tflearn gave them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import time

import numpy as np
import tensorflow as tf

from .. import intermediate
from ..errors import ConversionError
from .graph import graph_to_intermediate
from .graph.freeze import freeze
from .graph.load import GraphSource, tflearn_layers
from .graph.session import SESSION_CONFIG
from .reference import append_user_input, reference_batch
from .tflearn_compat import import_tflearn

v1 = tf.compat.v1


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
        data = graph.get_collection("inputs")
        if len(data) != 1:
            raise ConversionError("%s: %d input_data layers; only single-input networks are "
                                  "supported" % (path, len(data)))
        if any(p is not None for p in graph.get_collection("data_preprocessing")):
            raise ConversionError("%s: input_data: tflearn applies data_preprocessing outside the "
                                  "graph; it would not be converted" % path)
        x, labels = reference_data(module, shape, seed, user_input)
        if not data[0].shape.is_compatible_with(x.shape):
            raise ConversionError("%s: the reference input has shape %s; input_data expects %s" % (
                path, list(x.shape), data[0].shape.as_list()))
        session = v1.Session(graph=graph, config=SESSION_CONFIG)
        try:
            weights_source = load_weights(module, session, graph, prefix, seed)
        except BaseException:
            session.close()
            raise
        recorded = [(key, [t.name for t in graph.get_collection(key) if isinstance(t, tf.Tensor)])
                    for key in graph.get_all_collection_keys()]
        source = GraphSource(graph.as_graph_def(), "tflearn", session=session,
                         layer_tensors=tflearn_layers(recorded))
    graph_def, inputs, outputs = freeze(source, path, [data[0].name], [output.name], list(x.shape))
    model = graph_to_intermediate(
        graph_def, inputs, outputs, os.path.splitext(os.path.basename(str(path)))[0], "tflearn", path,
        input_shape=list(x.shape), per_layer=per_layer, seed=seed, reference={inputs[0]: x},
        layer_names=source.layer_tensors)
    apply_caffe_names(path, model.layers, getattr(module, "CAFFE_NAMES", {}))
    model.attrs["weights_source"] = weights_source
    if labels is not None:
        model.labels = np.asarray(labels, dtype=np.int64)
        logits = model.activation(model.compared_layers()[0])
        accuracy = float(np.mean(np.argmax(logits, axis=1) == model.labels))
        print("TensorFlow accuracy on the %d reference samples: %.4f" % (len(x), accuracy), flush=True)
    return model


def reference_data(module, shape, seed, user_input) -> tuple:
    """(x, labels or None): the module's own labelled data, or a seeded batch (plus the user's)."""
    if isinstance(user_input, dict):
        raise ConversionError("an architecture module has one input: give --reference-input as an .npy "
                              "array, not an .npz")
    if hasattr(module, "reference_data"):
        x, labels = module.reference_data(shape, seed)
        if user_input is not None and labels is not None:
            raise ConversionError("this architecture verifies on its own labelled data; "
                                  "--reference-input does not apply")
    else:
        x, labels = reference_batch([shape], seed)[0], None
    return append_user_input(np.asarray(x, dtype=np.float32), user_input), labels


def apply_caffe_names(path, layers, caffe_names) -> None:
    """Give each layer its name in a hand-written prototxt (CAFFE_NAMES)."""
    names = {layer.name for layer in layers}
    unknown = sorted(set(caffe_names) - names)
    if unknown:
        raise ConversionError("%s: CAFFE_NAMES names layer(s) the graph lacks: %s" % (
            path, ", ".join(unknown)))
    unnamed = [layer.name for layer in layers if layer.arrays and layer.name not in caffe_names]
    if caffe_names and unnamed:
        raise ConversionError("%s: CAFFE_NAMES lacks weighted layer(s) %s" % (path, ", ".join(unnamed)))
    for layer in layers:
        layer.caffe_name = caffe_names.get(layer.name, layer.name)
