"""Graph-source test machinery: tflearn nets saved with tflearn's `model.save`, converted from
the checkpoint alone, measured in pycaffe and OpenCV.

A construct test module (tests/test_tflearn_*.py) keeps a table `CONSTRUCTS`, name -> Construct:
a builder putting the construct on an 8x8x3 tflearn input (a fully connected head follows it)
and the intermediate layer types the whole net must map to. Then

    results = convert_constructs(__name__, CONSTRUCTS, tmp_dir)   # name -> harness.Result

builds every net in a subprocess (this file run as a script imports the test module and its
table), so the conversion, in the calling process, sees nothing but the checkpoints.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INPUT_SHAPE = [None, 8, 8, 3]
HEAD_UNITS = 5

# Variables tflearn (and tf-slim) initialise to constants -> values a trained net could have,
# so a mapping that drops or misplaces them shows: offsets spread around 0, scales around 1.
RANDOM_VALUES = {
    "b": lambda rng, shape: rng.normal(0, 0.5, shape),
    "beta": lambda rng, shape: rng.normal(0, 0.5, shape),
    "moving_mean": lambda rng, shape: rng.normal(0, 0.5, shape),
    "gamma": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "alphas": lambda rng, shape: rng.uniform(-0.5, 0.5, shape),  # PReLU slopes, both signs
}


class Construct(NamedTuple):
    build: Callable  # (tflearn, input tensor) -> output tensor
    types: List[str]  # intermediate layer types of input -> construct -> head


def randomise_variables(session, rng) -> None:
    """Give every constant-initialised variable of the default graph random values (see
    RANDOM_VALUES)."""
    import tensorflow as tf
    for variable in tf.compat.v1.global_variables():
        role = variable.op.name.rsplit("/", 1)[-1]
        if role in RANDOM_VALUES:
            variable.load(RANDOM_VALUES[role](rng, variable.shape).astype(np.float32), session)


def save_tflearn(tflearn, folder: Path, name, network, seed=1):
    """Build `network(tflearn, seed, logs)` -> (DNN, sample input) in a fresh graph and save it
    as FOLDER/NAME.tfl; tflearn's own predictions go beside it for an independent check."""
    import tensorflow as tf
    with tf.Graph().as_default():
        model, x = network(tflearn, seed, folder / "logs")
        model.save(str(folder / (name + ".tfl")))
        np.save(folder / (name + ".x.npy"), x)
        np.save(folder / (name + ".predictions.npy"), np.asarray(model.predict(x)))


def construct_network(construct: Construct):
    """`network` for save_tflearn: input -> the construct -> fully connected head, untrained,
    with random values in its constant-initialised variables."""
    def network(tflearn, seed, logs: Path):
        import tensorflow as tf
        tf.compat.v1.set_random_seed(seed)
        net = tflearn.input_data(shape=INPUT_SHAPE, name="input")
        net = tflearn.fully_connected(construct.build(tflearn, net), HEAD_UNITS)
        model = tflearn.DNN(net, tensorboard_dir=str(logs))
        rng = np.random.default_rng(seed)
        randomise_variables(model.session, rng)
        return model, rng.standard_normal([2] + INPUT_SHAPE[1:]).astype(np.float32)
    return network


def start_script(script, *args) -> subprocess.Popen:
    """Run a test module as a script in a fresh Python that can import the project."""
    environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=str(PROJECT_ROOT),
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)


def finish(process, what):
    _, stderr = process.communicate()
    assert process.returncode == 0, "%s failed:\n%s" % (what, stderr[-3000:])


def export_sources(folder: Path, sources):
    """Export each source to FOLDER/out/<stem>.h5, with per-layer activations."""
    from tf2caffe.export import export
    for source in sources:
        export(folder / source, folder / "out", per_layer=True)


# The construct's net as an architecture module (architectures/README.md), weights from its
# checkpoint: the user's other route to the same network.
ARCHITECTURE = """
import importlib, sys
sys.path.insert(0, {tests!r})
import tflearn
from tflearn_cases import HEAD_UNITS

DEFAULT_INPUT_SHAPE = (1, 8, 8, 3)  # the batch the checkpoint route uses
CONSTRUCT = importlib.import_module({module!r}).CONSTRUCTS[{name!r}]


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]), name="input")
    return tflearn.fully_connected(CONSTRUCT.build(tflearn, net), HEAD_UNITS)
"""
# Result keys: "<construct>" from the checkpoint alone, "<construct>.architecture" from the
# architecture module with --checkpoint.
SOURCES = ("", ".architecture")


def convert_constructs(module: str, constructs: Dict[str, Construct], tmp_dir) -> Dict[str, object]:
    """Save each construct's net as <name>.tfl (in a subprocess running `module`'s table), export
    it here from the checkpoint alone and from an architecture module restoring the checkpoint,
    import all in one Caffe subprocess and check each in OpenCV. A construct that does not export
    has its error in its Result."""
    import harness
    from tf2caffe.errors import ConversionError
    from tf2caffe.export import export

    folder = Path(tmp_dir).resolve()
    finish(start_script(__file__, "build", module, folder, *constructs), "building the tflearn nets")
    exported, refused = {}, {}
    for name in constructs:
        architecture = folder / (name + "_architecture.py")
        architecture.write_text(ARCHITECTURE.format(tests=str(Path(__file__).parent), module=module,
                                                    name=name))
        checkpoint = folder / (name + ".tfl")
        for key, source, options in ((name, checkpoint, {}),
                                     (name + ".architecture", architecture, {"checkpoint": checkpoint})):
            try:
                exported[key] = export(source, folder / "out", per_layer=True, **options)
            except ConversionError as error:
                refused[key] = harness.Result(key, checkpoint)
                refused[key].error = str(error)
    results = harness.convert_h5_batch(exported, folder / "caffe") if exported else {}
    return dict(results, **refused)


def build_constructs(module: str, folder: Path, names) -> None:
    """The script's `build`: save the named constructs of `module`'s table."""
    import importlib
    from tf2caffe.export.tflearn_compat import import_tflearn
    constructs = importlib.import_module(module).CONSTRUCTS
    tflearn = import_tflearn()
    for name in names:
        save_tflearn(tflearn, folder, name, construct_network(constructs[name]))


if __name__ == "__main__":
    command, module, folder = sys.argv[1:4]
    if command == "build":
        build_constructs(module, Path(folder), sys.argv[4:])
