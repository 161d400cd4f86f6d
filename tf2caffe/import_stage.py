"""The import stage, run inside the Caffe environment:

    python3 -m tf2caffe.import_stage FILE.h5... -o DIR [--prototxt P] [--profile NAME]
        [--report R.json] [--tolerance T] [--per-layer] [--debug]

For each intermediate file, top to bottom:
read the HDF5 file -> emit the Caffe net -> write the prototxt (generated, or the hand-written
one with its input shapes set) -> check it in Python -> load it in pycaffe and assign the weights
-> save .prototxt and .caffemodel atomically -> verify against TensorFlow's reference -> report.

Exit status: 0 all verified, 1 some verification failed (files written), 2 some file did not
convert (nothing written for it). Caffe side only: Python 3.9, numpy 1.19, never TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional

from . import intermediate
from .caffe import emit, handwritten, verify
from .caffe import pycaffe_backend as backend
from .caffe.emit import Blob, nchw
from .cli import add_import_arguments
from .errors import ConversionError, reported_errors

PROG = "tf2caffe"


def import_file(path: str, args, scratch: str, progress: "Progress") -> Dict:
    """Convert and verify one intermediate file; returns its report entry."""
    stem = os.path.splitext(os.path.basename(path))[0]
    prototxt_out = os.path.join(args.output, stem + ".prototxt")
    caffemodel_out = os.path.join(args.output, stem + ".caffemodel")

    progress.stage("reading")
    model = intermediate.read(path)
    try:
        for name in model.compared_layers():
            verify.check_not_degenerate(name, model.activation(name), path)

        progress.stage("emitting Caffe layers")
        net_spec, blobs = emit.build_net(model, args.profile)

        progress.stage("writing the prototxt")
        if args.prototxt:
            net_param, inputs = handwritten_prototxt(model, net_spec, path, args.prototxt)
            targets_in = verify.handwritten_targets
        else:
            net_param = handwritten.parse(net_spec.to_prototxt(), prototxt_out)
            inputs = {name: blobs[name].name for name in model.inputs}
            targets_in = verify.generated_targets
        handwritten.check(net_param, args.prototxt or prototxt_out, backend.known_layer_types())
        caffe_layers = handwritten.layer_tops(net_param)
        targets = targets_in(model, blobs, caffe_layers)
        compared = verify.compared_targets(model, targets)
        prototxt_tmp = os.path.join(scratch, stem + ".prototxt")
        with open(prototxt_tmp, "w") as f:
            f.write(handwritten.to_text(net_param) if args.prototxt else net_spec.to_prototxt())

        progress.stage("loading the net in Caffe")
        _announce(args, path)
        net = backend.load(prototxt_tmp)
        progress.stage("assigning weights")
        backend.assign_weights(net, net_spec.weighted_layers(), path, args.prototxt or prototxt_out,
                               progress.each)
        progress.stage("saving")
        caffemodel_tmp = os.path.join(scratch, stem + ".caffemodel")
        backend.save(net, caffemodel_tmp, path)
        os.replace(prototxt_tmp, prototxt_out)
        os.replace(caffemodel_tmp, caffemodel_out)

        progress.stage("verifying")
        entry = {"file": path, "model": model.name, "error": None,
                 "layers": {"tensorflow": len(model.layers), "caffe": len(caffe_layers),
                            "caffe_types": [layer.type for layer in handwritten.test_layers(net_param)]},
                 "inputs": inputs,
                 "files": {"prototxt": prototxt_out, "caffemodel": caffemodel_out}}
        entry.update(verify_in_pycaffe(net, model, inputs, targets, compared, args))
        return entry
    finally:
        model.file.close()


def handwritten_prototxt(model, net_spec, path: str, prototxt: str):
    """The hand-written net with its inputs shaped like the HDF5 file's, held up against the
    generated net; returns it and the TF input layer -> Caffe input blob mapping."""
    net_param = handwritten.read(prototxt)
    inputs = handwritten.match_inputs(
        net_param, {name: model.layer(name).caffe_name for name in model.inputs}, prototxt)
    handwritten.set_input_shapes(
        net_param, {inputs[name]: nchw(model.layer(name).output_shape) for name in model.inputs})
    handwritten.check_against_generated(net_param, net_spec, path, prototxt)
    return net_param, inputs


def verify_in_pycaffe(net, model, inputs: Dict[str, str], targets: Dict[str, verify.Target],
                      compared: Dict[str, verify.Target], args) -> Dict:
    """Run the reference input and measure the compared layers (and, with --per-layer or when
    the file has every layer's activation, every mapped layer)."""
    path = model.source
    feeds = {}
    for name in model.inputs:
        value = model.reference_inputs[name][()]
        feeds[inputs[name]] = Blob(inputs[name], nchw(value.shape)).to_caffe(value)
    backend.forward(net, feeds)
    expected = {name: verify.in_caffe_layout(target, model.activation(name), path)
                for name, target in compared.items()}
    fetched = backend.fetch(net, compared)
    for name, target in compared.items():
        verify.check_shapes_match(target, fetched[name], expected[name], path)
    result = {"compared": verify.compare(fetched, expected), "per_layer": {},
              "first_over_layer_tolerance": None, "accuracy": None,
              "targets": verify.targets_to_json(compared)}
    every_layer = all(layer.name in model.reference_activations
                      for layer in model.layers if layer.type != "input")
    if args.per_layer or every_layer:
        mapped = {name: target for name, target in targets.items() if name in model.reference_activations}
        layer_fetched = backend.fetch(net, mapped)
        result["per_layer"] = {
            name: verify.mapped_error(target, layer_fetched[name], model.activation(name))
            for name, target in mapped.items()}
        result["first_over_layer_tolerance"] = verify.first_over(
            result["per_layer"], verify.names_in_order(model))
        result["targets"] = verify.targets_to_json(dict(mapped, **compared))
    if model.labels is not None:
        output = model.compared_layers()[0]
        result["accuracy"] = verify.accuracy(fetched[output], expected[output], model.labels)
    worst_layer, worst_error = verify.worst(result["compared"])
    result["verified"] = bool(worst_error <= args.tolerance)
    result["worst"] = {"layer": worst_layer, "max_rel": worst_error}
    return result


def _announce(args, path: str) -> None:
    # Tells the CLI which file Caffe is working on, in case Caffe aborts the process.
    if args.status_fd is not None:
        os.write(args.status_fd, ("%s\n" % path).encode("utf-8"))


class Progress:
    """A bar per file over its stages and weighted layers when stderr is a terminal (tqdm if
    installed, else plain lines); silent otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        try:
            import tqdm
            self.tqdm = tqdm.tqdm
        except ImportError:
            self.tqdm = None
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label

    def stage(self, name: str) -> None:
        if self.enabled:
            sys.stderr.write("%s: %s\n" % (self.label, name))
            sys.stderr.flush()

    def each(self, items):
        items = list(items)
        if not self.enabled:
            return items
        if self.tqdm is not None:
            return self.tqdm(items, desc="%s: weights" % self.label, unit="layer", leave=False)
        return self._plain(items)

    def _plain(self, items):
        for index, item in enumerate(items):
            sys.stderr.write("%s: weights %d/%d %s\n" % (self.label, index + 1, len(items), item.name))
            yield item


def print_entry(entry: Dict, tolerance: float, out=None) -> None:
    out = out or sys.stdout
    layers = entry["layers"]
    types = Counter(layers["caffe_types"])
    out.write("%s -> %s, %s\n" % (entry["file"], entry["files"]["prototxt"], entry["files"]["caffemodel"]))
    out.write("  layers: %d TensorFlow -> %d Caffe (%s)\n" % (
        layers["tensorflow"], layers["caffe"], ", ".join("%s %d" % item for item in sorted(types.items()))))
    out.write("  %-32s %12s %12s\n" % ("compared layer", "max abs", "max rel"))
    for name, errors in entry["compared"].items():
        out.write("  %-32s %12.3g %12.3g\n" % (name, errors["max_abs"], errors["max_rel"]))
    if entry["per_layer"]:
        out.write("  %-32s %12s\n" % ("mapped layer (pycaffe)", "max rel"))
        for name, error in entry["per_layer"].items():
            out.write("  %-32s %12.3g\n" % (name, error))
        first = entry["first_over_layer_tolerance"]
        out.write("  first layer over %g: %s\n" % (verify.LAYER_TOLERANCE, first or "none"))
    if entry["accuracy"]:
        accuracy = entry["accuracy"]
        out.write("  top-1 accuracy on %d labelled inputs: Caffe %.4f, TensorFlow %.4f, agreement %.4f\n" % (
            accuracy["count"], accuracy["caffe"], accuracy["tensorflow"], accuracy["agreement"]))
    out.write("  %s: max relative error %.3g (%s), tolerance %g\n" % (
        "verified" if entry["verified"] else "VERIFICATION FAILED", entry["worst"]["max_rel"],
        entry["worst"]["layer"], tolerance))
    out.flush()


def write_report(path: str, tolerance: float, entries: Dict[str, Dict]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=folder)
    with os.fdopen(handle, "w") as f:
        json.dump({"format": "tf2caffe-import-report", "tolerance": tolerance, "results": entries},
                  f, indent=1, sort_keys=True)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; a report is not one
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m tf2caffe.import_stage", description=(
        "The import stage (inside the Caffe environment): convert tf2caffe intermediate files into "
        "Caffe .prototxt + .caffemodel and verify them against TensorFlow's reference outputs."))
    add_import_arguments(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    # Set by `tf2caffe import`, which runs this module in the Caffe chroot.
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    p.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    with reported_errors(args.debug):
        if not os.path.isdir(args.output):
            try:
                os.makedirs(args.output)
            except OSError as error:
                raise ConversionError("%s: cannot create the output folder: %s" % (args.output, error.strerror))
        return run(args)


def run(args) -> int:
    progress = Progress(args.progress or sys.stderr.isatty())
    own_scratch = args.scratch is None
    scratch = args.scratch or tempfile.mkdtemp(prefix=".tf2caffe-import-", dir=args.output)
    entries: Dict[str, Dict] = {}
    status = 0
    try:
        for path in args.files:
            progress.start(os.path.basename(path))
            started = time.monotonic()
            try:
                entry = import_file(path, args, scratch, progress)
            except ConversionError as error:
                if args.debug:
                    raise
                message = " ".join(str(error).split())
                sys.stderr.write("%s: error: %s\n" % (PROG, message))
                sys.stderr.flush()
                entries[path] = {"file": path, "error": message}
                status = 2
            else:
                entry["seconds"] = round(time.monotonic() - started, 3)
                entries[path] = entry
                print_entry(entry, args.tolerance)
                if not entry["verified"]:
                    sys.stderr.write("%s: verification failed: %s: layer '%s' has relative error %.3g > "
                                     "tolerance %g (the files were written)\n" % (
                                         PROG, path, entry["worst"]["layer"], entry["worst"]["max_rel"],
                                         args.tolerance))
                    status = max(status, 1)
            if args.report:
                write_report(args.report, args.tolerance, entries)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
