"""The import stage, run inside the Caffe environment:

    python3 -m tf2caffe.import_stage FILE.h5... -o DIR [--prototxt P] [--profile NAME]
        [--report R.json] [--tolerance T] [--per-layer] [--debug]

For each intermediate file, top to bottom:
read the HDF5 file -> emit the Caffe net -> write the prototxt (generated, or the hand-written
one with its input shapes set) -> check it in Python -> write the weights (pycaffe: load the net,
assign, net.save; native: stream the .caffemodel) -> save .prototxt and .caffemodel atomically
-> verify against TensorFlow's reference (in pycaffe, or OpenCV for native) -> report.
`--backend` (caffe/backends.py) is the only switch; default: pycaffe where Caffe imports.

Exit status: 0 all verified, 1 some verification failed (files written), 2 some file did not
convert (nothing written for it). Runs on Python 3.9 / numpy 1.19 (the Caffe side) and on the
TensorFlow side (native backend), and never imports TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional

import numpy as np

from . import intermediate, interrupts
from .caffe import emit, verify
from .caffe.backends import get_backend
from .caffe.caffemodel import MAX_CAFFEMODEL_BYTES
from .cli import add_import_arguments
from .errors import ConversionError, reported_errors

PROG = "tf2caffe"


def import_file(path: str, args, scratch: str, progress: "Progress", backend) -> Dict:
    """Convert and verify one intermediate file; returns its report entry."""
    stem = os.path.splitext(os.path.basename(path))[0]
    prototxt_out = os.path.join(args.output, stem + ".prototxt")
    caffemodel_out = os.path.join(args.output, stem + ".caffemodel")

    _tell_the_cli(args, "start", path)
    progress.stage("reading")
    # In a child process (a corrupt file may crash HDF5), and before anything is written.
    intermediate.check_readable(path, lambda model: check_caffemodel_size(model, path))
    model = intermediate.read(path)
    try:
        for name in [] if args.no_verify else model.compared_layers():
            verify.check_not_degenerate(name, model.activation(name), path)

        progress.stage("emitting Caffe layers")
        net_spec, blobs = emit.build_net(model, args.profile)

        progress.stage("writing the prototxt")
        described = backend.describe(model, net_spec, blobs, path, args.prototxt, prototxt_out)
        targets = described.targets_in(model, blobs, described.layer_tops)
        compared = verify.compared_targets(model, targets)
        prototxt_tmp = os.path.join(scratch, stem + ".prototxt")
        try:
            with open(prototxt_tmp, "w") as f:
                f.write(described.text)
        except OSError as error:
            raise ConversionError("%s: cannot write: %s" % (prototxt_out, error.strerror))

        caffemodel_tmp = os.path.join(scratch, stem + ".caffemodel")
        written = backend.write(net_spec, prototxt_tmp, caffemodel_tmp, path,
                                args.prototxt or prototxt_out, caffemodel_out, progress)
        # Ctrl-C waits until both files are in place and the CLI knows it: a new prototxt next to
        # an old .caffemodel would be a half-written result, and untold output a wrong message.
        with interrupts.held():
            commit([(prototxt_tmp, prototxt_out), (caffemodel_tmp, caffemodel_out)])
            _tell_the_cli(args, "wrote", path)

        entry = {"file": path, "model": model.name, "error": None,
                 "backend": backend.name, "verified_with": None if args.no_verify else backend.verifier,
                 "layers": {"tensorflow": len(model.layers), "caffe": len(described.layer_tops),
                            "caffe_types": described.types},
                 "inputs": described.inputs,
                 "files": {"prototxt": prototxt_out, "caffemodel": caffemodel_out}}
        if args.no_verify:
            entry.update(compared={}, per_layer={}, first_over_layer_tolerance=None, accuracy=None,
                         targets=verify.targets_to_json(compared), verified=None, worst=None)
        else:
            progress.stage("verifying")
            try:
                entry.update(verify_in(backend, written, entry["files"], model, described.inputs,
                                       targets, compared, args))
            except ConversionError as error:
                error.args = ("%s (the files were written, unverified)" % error,)
                raise
        return entry
    finally:
        model.file.close()


def check_caffemodel_size(model, path: str) -> None:
    """Refuse, before a weight is read, a model whose .caffemodel Caffe could not read: its
    float32 weights alone (known from the HDF5 dataset shapes) exceed the limit. (Saving checks
    the exact size again.)"""
    sizes = {layer.name: sum(4 * int(np.prod(data.shape, dtype=np.int64)) for data in layer.arrays.values())
             for layer in model.layers}
    total = sum(sizes.values())
    if total > MAX_CAFFEMODEL_BYTES:
        largest = max(sizes, key=sizes.get)
        raise ConversionError("%s: the .caffemodel would be over %d bytes (%.2f GiB; layer '%s' alone "
                              "%.2f GiB); Caffe reads at most %d bytes (2 GiB - 2)" % (
                                  path, total, total / 2.0 ** 30, largest, sizes[largest] / 2.0 ** 30,
                                  MAX_CAFFEMODEL_BYTES))


def verify_in(backend, written, files: Dict[str, str], model, inputs: Dict[str, str],
              targets: Dict[str, verify.Target], compared: Dict[str, verify.Target], args) -> Dict:
    """Run the reference input once in the backend's runtime and measure the compared layers (and,
    with --per-layer or when the file has every layer's activation, every mapped layer)."""
    path = model.source
    feeds = verify.reference_feeds(model, {name: inputs[name] for name in model.inputs})
    every_layer = all(layer.name in model.reference_activations
                      for layer in model.layers if layer.type != "input")
    mapped = {}
    if args.per_layer or every_layer:
        mapped = {name: target for name, target in targets.items() if name in model.reference_activations}
    fetched = backend.run(written, files, feeds, dict(mapped, **compared))
    expected = {name: verify.in_caffe_layout(target, model.activation(name), path)
                for name, target in compared.items()}
    for name, target in compared.items():
        verify.check_shapes_match(target, fetched[name], expected[name], path)
    result = {"compared": verify.compare(fetched, expected), "per_layer": {},
              "first_over_layer_tolerance": None, "accuracy": None,
              "targets": verify.targets_to_json(compared)}
    if mapped:
        result["per_layer"] = {
            name: verify.mapped_error(target, fetched[name], model.activation(name))
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


def commit(renames) -> None:
    """Rename every (scratch file, output) pair (the caller holds Ctrl-C back)."""
    for scratch_file, output in renames:
        os.replace(scratch_file, output)


def _tell_the_cli(args, event: str, path: str) -> None:
    # Which file this process works on ("start") and whose output is complete ("wrote"): for the
    # CLI's message if Caffe aborts the process or the user interrupts it.
    if args.status_fd is not None:
        os.write(args.status_fd, ("%s\t%s\n" % (event, path)).encode("utf-8"))


class Progress:
    """A bar per file over its stages and weighted layers when stderr is a terminal (tqdm if
    installed, else plain lines); silent otherwise. Times every stage either way."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        try:
            import tqdm
            self.tqdm = tqdm.tqdm
        except ImportError:
            self.tqdm = None
        self.label = ""
        self.starts: List = []

    def start(self, label: str) -> None:
        self.label = label
        self.starts = []

    def seconds(self) -> Dict[str, float]:
        """Each stage of the current file so far -> its wall time."""
        ends = [started for _, started in self.starts[1:]] + [time.monotonic()]
        return {name: round(end - started, 3) for (name, started), end in zip(self.starts, ends)}

    def stage(self, name: str) -> None:
        self.starts.append((name, time.monotonic()))
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
    if entry["verified"] is None:
        out.write("  not verified (--no-verify)\n")
        out.flush()
        return
    out.write("  %-32s %12s %12s (%s)\n" % ("compared layer", "max abs", "max rel", entry["verified_with"]))
    for name, errors in entry["compared"].items():
        out.write("  %-32s %12.3g %12.3g\n" % (name, errors["max_abs"], errors["max_rel"]))
    if entry["per_layer"]:
        out.write("  %-32s %12s\n" % ("mapped layer (%s)" % entry["verified_with"], "max rel"))
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
    try:
        handle, tmp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise ConversionError("%s: cannot write the report: %s" % (path, error.strerror))
    try:
        with os.fdopen(handle, "w") as f:
            json.dump({"format": "tf2caffe-import-report", "tolerance": tolerance, "results": entries},
                      f, indent=1, sort_keys=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; a report is not one
        os.replace(tmp, path)
    except OSError as error:
        os.unlink(tmp)
        raise ConversionError("%s: cannot write the report: %s" % (path, error.strerror))


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


def default_backend() -> str:
    return "pycaffe" if importlib.util.find_spec("caffe") else "native"


def run(args) -> int:
    backend = get_backend(args.backend or default_backend())
    progress = Progress(args.progress or sys.stderr.isatty())
    own_scratch = args.scratch is None
    try:
        scratch = args.scratch or tempfile.mkdtemp(prefix=".tf2caffe-import-", dir=args.output)
    except OSError as error:
        raise ConversionError("%s: cannot write in the output folder: %s" % (args.output, error.strerror))
    entries: Dict[str, Dict] = {}
    status = 0
    try:
        for path in args.files:
            progress.start(os.path.basename(path))
            started = time.monotonic()
            try:
                entry = import_file(path, args, scratch, progress, backend)
            except ConversionError as error:
                if args.debug:
                    raise
                message = " ".join(str(error).split())
                if path not in message:  # e.g. an unsupported layer: say which file has it
                    message = "%s: %s" % (path, message)
                sys.stderr.write("%s: error: %s\n" % (PROG, message))
                sys.stderr.flush()
                entries[path] = {"file": path, "error": message}
                status = 2
            else:
                entry["seconds"] = round(time.monotonic() - started, 3)
                entry["stage_seconds"] = progress.seconds()
                entries[path] = entry
                print_entry(entry, args.tolerance)
                if entry["verified"] is False:
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
