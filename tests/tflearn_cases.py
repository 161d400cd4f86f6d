"""Graph-source test machinery: tflearn nets saved with tflearn's `model.save`, converted from
the checkpoint alone, from an architecture module restoring it and (where asked) from the graph
frozen into a .pb, measured in pycaffe and OpenCV.

A construct test module (tests/test_tflearn_*.py) keeps a table `CONSTRUCTS`, name -> Construct:
a builder putting the construct on an 8x8x3 tflearn input (a fully connected head follows it
unless the builder ends the net itself), and optionally the intermediate layer types the whole
net must map to, whether to convert its frozen graph too, and the refusal it must end in. Then

    results = convert_constructs(__name__, CONSTRUCTS, tmp_dir)   # key -> harness.Result

builds every net in one subprocess (this file run as a script imports the test module and its
table), so the conversion, in the calling process, sees nothing but the saved files; `keys`
names the results of a construct, one per source.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INPUT_SHAPE = [None, 8, 8, 3]
HEAD_UNITS = 5

# Variables tflearn (and tf-slim) initialise to constants -> values a trained net could have,
# so a mapping that drops or misplaces them shows: offsets spread around 0, scales around 1.
RANDOM_VALUES = {
    "b": lambda rng, shape: rng.normal(0, 0.5, shape),
    "b_T": lambda rng, shape: rng.normal(0, 0.5, shape),  # highway's transform gate
    "beta": lambda rng, shape: rng.normal(0, 0.5, shape),
    "moving_mean": lambda rng, shape: rng.normal(0, 0.5, shape),
    "gamma": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "alphas": lambda rng, shape: rng.uniform(-0.5, 0.5, shape),  # PReLU slopes, both signs
}


class Construct(NamedTuple):
    build: Callable  # (tflearn, input tensor) -> output tensor
    types: Optional[List[str]] = None  # intermediate layer types of input -> construct -> head
    head: bool = True  # False: `build` ends the net itself (its own head, or none)
    frozen: bool = False  # also converted from the graph frozen into a .pb
    refused: Optional[Tuple[str, str]] = None  # (layer, reason) every source must be refused with


# Result keys, one per source: "<construct>" from the checkpoint alone, "<construct>.architecture"
# from the architecture module with --checkpoint, "<construct>.frozen" from the frozen .pb.
SOURCES = ("", ".architecture")
FROZEN_SOURCE = ".frozen"


def keys(name: str, construct: Construct) -> List[str]:
    """The result keys of a construct: one per source it is converted from."""
    return [name + source for source in SOURCES + ((FROZEN_SOURCE,) if construct.frozen else ())]


def exact_keys(constructs: Dict[str, Construct]) -> List[str]:
    """The result keys that must be exact: every source of every construct not to be refused."""
    return sorted(key for name, construct in constructs.items() if not construct.refused
                  for key in keys(name, construct))


def refused_keys(constructs: Dict[str, Construct]) -> Dict[str, Tuple[str, str]]:
    """Result key -> (layer, reason) the conversion must be refused with."""
    return {key: construct.refused for name, construct in constructs.items() if construct.refused
            for key in keys(name, construct)}


def randomise_variables(session, rng) -> None:
    """Give every constant-initialised variable of the default graph random values (see
    RANDOM_VALUES)."""
    import tensorflow as tf
    for variable in tf.compat.v1.global_variables():
        role = variable.op.name.rsplit("/", 1)[-1]
        if role in RANDOM_VALUES:
            variable.load(RANDOM_VALUES[role](rng, variable.shape).astype(np.float32), session)


def save_tflearn(tflearn, folder: Path, name, network, seed=1, frozen=False):
    """Build `network(tflearn, seed, logs)` -> (DNN, sample input) in a fresh graph and save it
    as FOLDER/NAME.tfl; tflearn's own predictions go beside it for an independent check. With
    `frozen`, the graph is also frozen into FOLDER/NAME_frozen.pb."""
    import tensorflow as tf
    with tf.Graph().as_default() as graph:
        model, x = network(tflearn, seed, folder / "logs")
        model.save(str(folder / (name + ".tfl")))
        np.save(folder / (name + ".x.npy"), x)
        np.save(folder / (name + ".predictions.npy"), np.asarray(model.predict(x)))
        if frozen:
            (folder / (name + "_frozen.pb")).write_bytes(
                tf.compat.v1.graph_util.convert_variables_to_constants(
                    model.session, graph.as_graph_def(), [model.net.op.name]).SerializeToString())


def construct_output(tflearn, construct: Construct, input_shape=INPUT_SHAPE):
    """input -> the construct -> (unless it ends the net itself) the fully connected head."""
    net = construct.build(tflearn, tflearn.input_data(shape=input_shape, name="input"))
    return tflearn.fully_connected(net, HEAD_UNITS) if construct.head else net


def construct_network(construct: Construct):
    """`network` for save_tflearn: the construct's net (construct_output), untrained, with
    random values in its constant-initialised variables."""
    def network(tflearn, seed, logs: Path):
        import tensorflow as tf
        tf.compat.v1.set_random_seed(seed)
        model = tflearn.DNN(construct_output(tflearn, construct), tensorboard_dir=str(logs))
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
from tflearn_cases import construct_output

DEFAULT_INPUT_SHAPE = (1, 8, 8, 3)  # the interface wants one; the export passes the batch's
CONSTRUCT = importlib.import_module({module!r}).CONSTRUCTS[{name!r}]


def build(input_shape):
    return construct_output(tflearn, CONSTRUCT, [None] + list(input_shape[1:]))
"""


def convert_constructs(module: str, constructs: Dict[str, Construct], tmp_dir,
                       batch: int = 1) -> Dict[str, object]:
    """Save each construct's net as <name>.tfl (and <name>_frozen.pb where asked; all in one
    subprocess running `module`'s table), export it here from each source (see `keys`) on a
    reference batch of `batch` samples, import all in one Caffe subprocess and check each in
    OpenCV. A source that does not export has its error in its Result."""
    import harness
    from tf2caffe.errors import ConversionError
    from tf2caffe.export import export

    folder = Path(tmp_dir).resolve()
    finish(start_script(__file__, "build", module, folder, *constructs), "building the tflearn nets")
    exported, refused = {}, {}
    for name, construct in constructs.items():
        architecture = folder / (name + "_architecture.py")
        architecture.write_text(ARCHITECTURE.format(tests=str(Path(__file__).parent), module=module,
                                                    name=name))
        checkpoint = folder / (name + ".tfl")
        sources = {name: (checkpoint, {}),
                   name + ".architecture": (architecture, {"checkpoint": checkpoint}),
                   name + FROZEN_SOURCE: (folder / (name + "_frozen.pb"), {})}
        for key in keys(name, construct):
            source, options = sources[key]
            try:
                exported[key] = export(source, folder / "out", per_layer=True,
                                       input_shape=[batch] + INPUT_SHAPE[1:], **options)
            except ConversionError as error:
                refused[key] = harness.Result(key, source)
                refused[key].error = str(error)
    results = harness.convert_h5_batch(exported, folder / "caffe") if exported else {}
    return dict(results, **refused)


def mapped_layers(result):
    """The intermediate layers a result was converted from."""
    from tf2caffe import intermediate
    return intermediate.read(str(result.h5)).layers


def described_layers(result):
    """What two sources of one construct must agree on: each layer's name, type, inputs, config."""
    return [(layer.name, layer.type, layer.inputs, layer.config) for layer in mapped_layers(result)]


def build_constructs(module: str, folder: Path, names) -> None:
    """The script's `build`: save the named constructs of `module`'s table."""
    import importlib
    from tf2caffe.export.tflearn_compat import import_tflearn
    constructs = importlib.import_module(module).CONSTRUCTS
    tflearn = import_tflearn()
    for name in names:
        save_tflearn(tflearn, folder, name, construct_network(constructs[name]),
                     frozen=constructs[name].frozen)


if __name__ == "__main__":
    command, module, folder = sys.argv[1:4]
    if command == "build":
        build_constructs(module, Path(folder), sys.argv[4:])
