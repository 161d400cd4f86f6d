"""The benchmark's baseline processes (each run fresh by bench/run.py, in the TensorFlow venv).

    children.py tf-save ARCH SHAPE OUT_DIR   (a) import TensorFlow, build the model, np.save its weights
    children.py tf-forward ARCH SHAPE        TensorFlow's forward pass alone, as export runs it
    children.py keras-build BUILDER SHAPE OUT.keras   a keras.applications model, seeded and conditioned
    children.py keras-save SRC.keras OUT_DIR (a) import TensorFlow, load the .keras, save it, np.save its weights
    children.py h5-copy H5 OUT               (b) every dataset of the intermediate, bytes unchanged
    children.py permute H5                   the flatten permutation of the first Dense kernel
    children.py interpreter                  start-up with what the native import stage imports

Each prints one JSON object: the seconds spent after start-up (and what else it measured).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def seeded_model(arch: str, shape):
    """The graph and a session with the variables initialised as `tf2caffe export` does without a
    checkpoint (seed 0)."""
    import tensorflow as tf

    from tf2caffe.export.tflearn import load_architecture, model_variables

    module = load_architecture(arch)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        output = module.build(shape)
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        session.run(tf.compat.v1.global_variables_initializer())
    return graph, session, output, model_variables(graph)


def tf_save(arch: str, shape: str, out_dir: str) -> dict:
    import numpy as np

    started = time.monotonic()
    graph, session, _, variables = seeded_model(arch, [int(d) for d in shape.split(",")])
    values = session.run(variables)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for variable, value in zip(variables, values):
        np.save(str(out / (variable.op.name.replace("/", "_") + ".npy")), value)
    return {"seconds": time.monotonic() - started,
            "weights": int(sum(value.size for value in values))}


def tf_forward(arch: str, shape: str) -> dict:
    import numpy as np

    dims = [int(d) for d in shape.split(",")]
    graph, session, output, _ = seeded_model(arch, dims)
    inputs = graph.get_collection("inputs") or [graph.get_operations()[0].outputs[0]]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    times = []
    for _ in range(2):  # the first run also optimises the graph: export pays that one
        started = time.monotonic()
        session.run(output, {inputs[0]: x})
        times.append(time.monotonic() - started)
    return {"seconds": times[0], "second_run": times[1]}


def keras_build(builder: str, shape: str, out: str) -> dict:
    """keras.applications.<builder>(weights=None) at input `shape` (N,H,W,C), seed 0, its weights
    conditioned like trained ones as tests/test_zoo.py does, saved to `out`."""
    import keras

    from tf2caffe.export.conditioned import condition_keras_model

    started = time.monotonic()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, builder)(
        weights=None, input_shape=tuple(int(d) for d in shape.split(",")[1:]), classifier_activation=None)
    condition_keras_model(model, 0)
    model.save(out)
    return {"seconds": time.monotonic() - started, "weights": int(model.count_params())}


def keras_save(src: str, out_dir: str) -> dict:
    import keras
    import numpy as np

    started = time.monotonic()
    model = keras.models.load_model(src, compile=False)
    loaded = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "copy.keras"))
    saved = time.monotonic()
    for index, weight in enumerate(model.weights):
        np.save(str(out / ("%04d.npy" % index)), np.asarray(weight))
    return {"seconds": time.monotonic() - started, "load": loaded - started, "save": saved - loaded,
            "np_save": time.monotonic() - saved}


def h5_copy(h5: str, out: str) -> dict:
    import h5py

    started = time.monotonic()
    total = 0
    with h5py.File(h5, "r") as f, open(out, "wb") as sink:
        datasets = []
        f.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
        for dataset in datasets:
            value = dataset[()]
            sink.write(value.tobytes() if not value.flags.c_contiguous else value)
            total += value.nbytes
    return {"seconds": time.monotonic() - started, "bytes": total}


def permute(h5: str) -> dict:
    """The first Dense layer after a Flatten (VGG-19's fc6): its kernel read, then permuted."""
    import numpy as np

    from tf2caffe import intermediate
    from tf2caffe.caffe.handlers.dense import inner_product_blocks
    from tf2caffe.caffe.layout import FlatOrder

    model = intermediate.read(h5)
    try:
        layer = next(layer for layer in model.layers if layer.type == "dense"
                     and model.layer(layer.inputs[0]).type == "flatten")
        h, w, c = model.layer(model.layer(layer.inputs[0]).inputs[0]).output_shape[1:]
        kernel = layer.array("kernel")
    finally:
        model.file.close()
    started = time.monotonic()
    for _ in inner_product_blocks(kernel, FlatOrder.chw((h, w, c))):
        pass
    tiled = time.monotonic() - started
    started = time.monotonic()
    np.ascontiguousarray(kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1))
    return {"seconds": tiled, "numpy_transpose": time.monotonic() - started, "layer": layer.name,
            "kernel": list(kernel.shape), "flattened_from": [h, w, c]}


def interpreter() -> dict:
    started = time.monotonic()
    from tf2caffe import cli, import_stage  # noqa: F401
    from tf2caffe.caffe import backends, emit  # noqa: F401
    emit.load_builtin()
    return {"seconds": time.monotonic() - started}


CHILDREN = {"tf-save": tf_save, "tf-forward": tf_forward, "keras-build": keras_build, "keras-save": keras_save,
            "h5-copy": h5_copy, "permute": permute, "interpreter": interpreter}

if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])))
