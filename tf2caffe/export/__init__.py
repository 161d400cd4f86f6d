"""The export stage (TensorFlow side): a model file -> the HDF5 intermediate.

Sources: a tflearn architecture module (`architectures/<name>.py`) and a Keras `.keras` or
`.h5` file are handled here and in keras.py / tflearn.py; SavedModel directories, frozen `.pb`
graphs and TF1/tflearn checkpoints go to graph/. TensorFlow, Keras and tflearn are imported
only when a source needs them.
"""
from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path
from typing import Optional, Sequence, Union

from .. import intermediate
from ..errors import ConversionError
from .reference import load_user_input

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def parse_input_shape(value) -> Optional[list]:
    """`"1,224,224,3"` or a sequence of ints -> a list of positive ints (None stays None)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        shape = [int(part) for part in parts]
    except (TypeError, ValueError):
        shape = []
    if not shape or any(d <= 0 for d in shape):
        raise ConversionError("invalid input shape %r: expected positive integers N,H,W,C" % (value,))
    return shape


def source_kind(src: Path) -> str:
    """'tflearn', 'keras' or 'graph', or a ConversionError saying why SRC cannot be exported."""
    suffix = src.suffix.lower()
    if src.is_file() and suffix in (".py",) + KERAS_SUFFIXES:
        if not os.access(str(src), os.R_OK):
            raise ConversionError("%s: not readable (permission denied)" % src)
        return "tflearn" if suffix == ".py" else "keras"
    if not src.exists() and suffix in (".py",) + KERAS_SUFFIXES:
        raise ConversionError("%s: no such file" % src)
    if src.is_dir() and (src / "saved_model.pb").is_file():
        return "graph"  # Keras 3 cannot load a SavedModel as a Keras model, so no Keras attempt
    from .graph import is_graph_source  # imports TensorFlow: only when the cheap checks fail
    if is_graph_source(src):
        return "graph"
    if not src.exists():
        raise ConversionError("%s: no such file or directory" % src)
    if src.is_dir():
        raise ConversionError("%s: is a directory, not a model file (and not a SavedModel or a "
                              "checkpoint folder)" % src)
    raise ConversionError("%s: unknown model type '%s'; expected architectures/<name>.py, .keras, "
                          ".h5, .pb, a checkpoint or a SavedModel directory" % (src, suffix or src.name))


def export(src: Union[str, Path], out_dir: Union[str, Path], checkpoint=None,
           input_shape: Optional[Sequence[int]] = None, per_layer: bool = False,
           seed: int = 0, inputs=None, outputs=None, signature=None, reference_input=None,
           ssd_config=None) -> Path:
    """Export SRC to `out_dir/<stem>.h5` (written atomically) and return that path. `ssd_config`:
    a TF Object Detection API pipeline config whose `ssd { ... }` block adds the detector's
    post-processing after the model's two outputs (export/ssd.py); without it, a graph whose two
    `outputs` feed an NMS gets the post-processing the graph computes (graph/post_processing.py)."""
    src, out_dir = Path(src), Path(out_dir)
    shape = parse_input_shape(input_shape)
    user_input = load_user_input(reference_input) if reference_input is not None else None
    if ssd_config is not None:  # a config that cannot be used is refused before any work
        from .ssd import read_ssd_settings
        ssd_settings = read_ssd_settings(ssd_config)
    kind = source_kind(src)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError("%s: output folder exists and is not a directory" % out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionError("%s: cannot create the output folder: %s" % (out_dir, error.strerror))
    if kind != "graph" and (inputs or outputs or signature):
        raise ConversionError("%s: --inputs, --outputs and --signature apply to graph sources "
                              "(.pb, checkpoints, SavedModels), not to %s sources" % (src, kind))
    if kind == "graph" and checkpoint is not None:
        raise ConversionError("%s: --checkpoint applies to architecture modules and Keras files; "
                              "a graph source carries its own weights" % src)
    if kind != "graph" and (out_dir / (src.stem + ".h5")).resolve() == src.resolve():
        raise ConversionError("%s: the intermediate would overwrite the source model; choose "
                              "another output folder" % src)
    started = time.time()
    print("exporting %s (%s)" % (src, kind), flush=True)
    try:
        if kind == "graph":
            from .graph import source_to_intermediate
            model = source_to_intermediate(src, inputs, outputs, signature, shape, per_layer, seed,
                                           user_input, post_processing=ssd_config is None)
        elif kind == "tflearn":
            from .architecture_errors import architecture_errors
            from .tflearn import architecture_to_intermediate
            with architecture_errors(src):  # the module's own code failing: one line naming it
                model = architecture_to_intermediate(src, checkpoint, shape, per_layer, seed,
                                                     user_input)
        else:
            from .keras import load_model, model_to_intermediate
            model = model_to_intermediate(load_model(src, checkpoint), src.stem, shape,
                                          per_layer, seed, user_input)
            model.attrs["source_path"] = str(src)
        if ssd_config is not None:
            from .ssd import add_detection_output
            add_detection_output(model, ssd_settings, "%s with %s" % (model.name, ssd_config))
    except ConversionError as error:
        if not str(error).startswith(str(src)):
            error.args = ("%s: %s" % (src, error),)
        raise
    path = out_dir / ((model.name if kind == "graph" else src.stem) + ".h5")
    intermediate.write(str(path), model)
    weights = sum(int(array.size) for layer in model.layers for array in layer.arrays.values())
    print("exported %s: %d layers, %s weights, %d reference activations, %.1f s -> %s" % (
        model.name, len(model.layers), format(weights, ","), len(model.reference_activations),
        time.time() - started, path), flush=True)
    return path


class _CallableExportPackage(types.ModuleType):
    """`tf2caffe.export(src, out_dir, **options)` is the Python API's export (`api.export`, which
    returns an ExportReport); the package keeps the name for both, since importing it makes
    `tf2caffe.export` this module."""

    def __call__(self, src, out_dir, **options):
        from ..api import export as api_export
        return api_export(src, out_dir, **options)


sys.modules[__name__].__class__ = _CallableExportPackage
