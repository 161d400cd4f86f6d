"""Reading graph sources from disk: TF1/tflearn checkpoints (from the meta graph alone), frozen
GraphDef `.pb` files and SavedModels, each as a `GraphSource` not yet resolved to inference."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from ...errors import ConversionError
from .session import SESSION_CONFIG, import_graph, run_fetches, run_graph_def

v1 = tf.compat.v1


class GraphSource:
    """A loaded graph before resolution: its GraphDef, how to freeze its variables, what the
    file says about inputs and outputs, and how to run it unchanged (for the final check)."""

    def __init__(self, graph_def, framework, session=None, inputs=None, outputs=None,
                 variable_names=None, layer_tensors=None):
        self.graph_def = graph_def
        self.framework = framework
        self.session = session  # TF1 checkpoints: a session holding the restored variables
        self.inputs = inputs    # known from a SavedModel signature
        self.outputs = outputs
        self.variable_names = variable_names or {}  # Const node -> variable name (SavedModel)
        # tflearn: {output tensor: layer name} of every layer it recorded
        self.layer_tensors = layer_tensors

    def run(self, feeds: Dict[str, np.ndarray], fetches: Sequence[str]) -> List[np.ndarray]:
        if self.session is not None:
            return run_fetches(self.session, feeds, fetches)
        return run_graph_def(self.graph_def, feeds, fetches)


def _checkpoint_prefix(src: Path) -> Optional[Path]:
    """The checkpoint prefix `src` names (prefix, .meta, .index, .data-*, or a folder with a
    `checkpoint` file), or None when it is not a checkpoint."""
    text = str(src)
    for suffix in (".meta", ".index"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    text = re.sub(r"\.data-\d+-of-\d+$", "", text)
    if src.is_dir() and (src / "checkpoint").exists():
        latest = tf.train.latest_checkpoint(str(src))
        return Path(latest) if latest else None
    return Path(text) if Path(text + ".meta").exists() else None


def _load_checkpoint(prefix: Path) -> GraphSource:
    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(Path(str(prefix) + ".meta").read_bytes())
    # import_meta_graph would also rebuild every collection, and tflearn's hold names that
    # resolve to nothing ('Adam'): import the bare GraphDef and restore through the saver's ops.
    if not meta.saver_def.restore_op_name:
        raise ConversionError("%s.meta: the meta graph has no saver, so its variables cannot be "
                              "restored" % prefix)
    session = v1.Session(graph=import_graph(meta.graph_def), config=SESSION_CONFIG)
    try:
        session.run(meta.saver_def.restore_op_name, {meta.saver_def.filename_tensor_name: str(prefix)})
    except tf.errors.OpError as error:
        session.close()
        raise ConversionError("%s: restoring the checkpoint failed: %s" % (
            prefix, error.message.split("\n")[0]))
    if "is_training_ops" not in meta.collection_def:
        return GraphSource(meta.graph_def, "tf1-graph", session=session)
    # tflearn records each layer's output; its loss ops (a clipped log of the softmax) would
    # otherwise pass for the model's output.
    recorded = [(key, list(collection.node_list.value)) for key, collection in meta.collection_def.items()]
    return GraphSource(meta.graph_def, "tflearn", session=session, layer_tensors=tflearn_layers(recorded))


def tflearn_layers(collections) -> Dict[str, str]:
    """{output tensor: layer name} of the layers tflearn recorded, from (collection key, tensor
    names) pairs; its collections `layer_tensor/<name>` hold each layer's output.

    Layers with a variable scope are recorded under their unique scope name ('Conv2D_1'); layers
    with a name scope under the name they were given ('MaxPool2D' for every max pooling), so
    the uniquified scope ('MaxPool2D_1') is read from the op name."""
    found = {}
    for key, tensors in collections:
        if not key.startswith("layer_tensor/"):
            continue
        key = key[len("layer_tensor/"):]
        base = key.split("/")[-1]
        for tensor in tensors:
            op_name = tensor.rsplit(":", 1)[0]
            parts = op_name.split("/")
            name = key
            if not op_name.startswith(key + "/"):
                ends = [end for end in range(1, len(parts) + 1)
                        if re.fullmatch(re.escape(base) + r"(_\d+)?", parts[end - 1])]
                name = "/".join(parts[:ends[0]]) if ends else key
            found.setdefault(tensor, name)
    names = list(found.values())
    # A name recorded for two tensors (a layer that records several outputs) names neither.
    return {tensor: name if names.count(name) == 1 else tensor.rsplit(":", 1)[0]
            for tensor, name in found.items()}


def _load_frozen(path: Path) -> GraphSource:
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf's DecodeError has no stable import path
        raise ConversionError("%s: not a binary GraphDef (%s)" % (path, error))
    variables = [n.name for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
    if variables:
        raise ConversionError("%s: the graph still has variables (%s); freeze it first or convert "
                              "the checkpoint it came from" % (path, ", ".join(variables[:5])))
    _repair_frozen_updates(graph_def)
    return GraphSource(graph_def, "tf1-graph")


RESOURCE_WRITES = ("AssignVariableOp", "AssignSubVariableOp", "AssignAddVariableOp")


def _repair_frozen_updates(graph_def) -> None:
    """Freezing a training graph leaves variable updates reading constants, which TensorFlow
    refuses to import ("expected float_ref"). Turn them into the plain ops they compute (the
    usual repair); they only ever run in training, and resolution removes them."""
    plain = {"RefSwitch": "Switch", "AssignSub": "Sub", "AssignAdd": "AddV2", "RefMerge": "Merge"}
    for node in graph_def.node:
        if node.op in plain:
            node.op = plain[node.op]
        elif node.op == "Assign":
            node.op = "Identity"
            inputs = list(node.input)
            del node.input[:]
            node.input.extend(inputs[1:])
        else:
            continue
        for attr in ("use_locking", "validate_shape"):
            if attr in node.attr:
                del node.attr[attr]
    # v2 conditionals (tflearn's batch norm on TF 2) keep their variable reads and updates in
    # function bodies. Freezing turns a read into an Identity but leaves the function returning
    # its old output name (ReadVariableOp's 'value', an Identity's is 'output'), and leaves the
    # updates writing to plain floats: rename the returns, keep the writes as NoOps (order only).
    for function in graph_def.library.function:
        identities = set()
        for node in function.node_def:
            if node.op == "Identity":
                identities.add(node.name)
            elif node.op in RESOURCE_WRITES:
                controls = [i for i in node.input if i.startswith("^")]
                node.op = "NoOp"
                del node.input[:]
                node.input.extend(controls)
                node.attr.clear()
        for key, value in list(function.ret.items()):  # not while writing to it
            node, _, index = value.rpartition(":")
            node, _, _ = node.partition(":")
            if node in identities:
                function.ret[key] = "%s:output:%s" % (node, index)


def _without_optimizer_slots(path: Path, folder: str) -> str:
    """The SavedModel to load: `path` itself, or, when its object graph holds optimizer slot
    variables, a copy in `folder` without them (its other files linked).

    A Keras 2 (tf.keras 2 / tf_keras) model saved with a legacy optimizer stores the slots (Adam's
    m and v) as created by `optimizer.add_slot`; TensorFlow's loader, which does not know the
    Keras 2 optimizer class, revives the optimizer as a plain object without `add_slot` and
    fails. Slots only matter for training: unlinked from the optimizer they load as plain
    variables that no signature reads."""
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except (OSError, DecodeError) as error:
        raise ConversionError("%s: unreadable saved_model.pb: %s" % (path, error))
    nodes = [node for graph in proto.meta_graphs for node in graph.object_graph_def.nodes]
    if not any(node.slot_variables for node in nodes):
        return str(path)
    for node in nodes:
        del node.slot_variables[:]
    for entry in path.iterdir():
        if entry.name != "saved_model.pb":
            os.symlink(str(entry.resolve()), os.path.join(folder, entry.name))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    return folder


def _load_saved_model(path: Path, signature: Optional[str]) -> GraphSource:
    with tempfile.TemporaryDirectory(prefix="tf2caffe-savedmodel-") as folder:
        loaded = tf.saved_model.load(_without_optimizer_slots(path, folder))
    key = signature or "serving_default"
    if not loaded.signatures:
        raise ConversionError("%s: the SavedModel has no signatures (save it with "
                              "tf.saved_model.save(module, path, signatures=...))" % path)
    if key not in loaded.signatures:
        raise ConversionError("%s: no signature '%s' (signatures: %s); pass --signature" % (
            path, key, ", ".join(sorted(loaded.signatures.keys())) or "none"))
    function = loaded.signatures[key]
    frozen = convert_variables_to_constants_v2(function)
    graph_def = frozen.graph.as_graph_def()
    # Captured variables become Consts named after the function's placeholders ('unknown_3'):
    # name them after the variables so weights keep their TensorFlow names.
    handles = {id(v.handle): v.name.split(":")[0] for v in function.variables}
    variable_names = {}
    for external, internal in function.graph.captures:
        if id(external) in handles:
            variable_names[internal.op.name] = handles[id(external)]
    source = GraphSource(graph_def, "tf1-graph", inputs=[t.name for t in frozen.inputs],
                     outputs=[t.name for t in frozen.outputs], variable_names=variable_names)
    return source


def load_source(src: Path, signature: Optional[str]) -> GraphSource:
    if not src.exists() and not Path(str(src) + ".meta").exists():
        raise ConversionError("%s: no such file or checkpoint prefix" % src)
    if src.is_dir() and (src / "saved_model.pb").exists():
        return _load_saved_model(src, signature)
    prefix = _checkpoint_prefix(src)
    if prefix is not None:
        return _load_checkpoint(prefix)
    if src.suffix in (".pb", ".graphdef"):
        return _load_frozen(src)
    raise ConversionError("%s: not a checkpoint (no .meta), a frozen .pb or a SavedModel folder" % src)


def model_stem(src) -> str:
    """Output file stem for a graph source: `model.tfl`, `model.ckpt-1000(.meta)`, `model.pb`
    -> `model`; a SavedModel folder -> its name."""
    path = Path(src)
    for suffix in (".meta", ".index"):
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)])
    if path.is_dir() and not (path / "checkpoint").exists():
        return path.resolve().name
    if path.is_dir():
        path = _checkpoint_prefix(path) or path
    return re.sub(r"(\.(tfl|ckpt|pb|graphdef))?(-\d+)?$", "", path.name) or path.name


def is_graph_source(src) -> bool:
    """Whether `src` is a graph source: a `.pb` file, a SavedModel folder
    (Keras 3 cannot load those; `model.export()` writes them as plain TF graphs), a checkpoint
    prefix (`model.ckpt`, tflearn's `model.tfl`) or its `.meta`/`.index`, or a folder with a
    `checkpoint` file."""
    path = Path(src)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return True
    return (path.suffix == ".pb" and path.is_file()) or _checkpoint_prefix(path) is not None
