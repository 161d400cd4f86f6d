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
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from . import intermediate, interrupts, report
from .caffe import deploy, deployed_net, emit, verify
from .caffe.profiles import get_profile
from .caffe.backends import Backend, get_backend
from .caffe.caffemodel import MAX_CAFFEMODEL_BYTES
from .errors import ConversionError, reported_errors
from .import_options import add_import_arguments, deploy_options

PROG = "tf2caffe"


def import_file(path: str, args, scratch: str, progress: "Progress", backend: Backend) -> report.FileResult:
    """Convert and verify one intermediate file."""
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
        options = deploy_options(args)
        deployed = deploy.Deployed([], set()) if args.prototxt else deploy.apply(
            net_spec, blobs, model.inputs, model.compared_layers(), options, path)

        progress.stage("writing the prototxt")
        comparable = {name: blob for name, blob in blobs.items() if name not in deployed.unlike_source}
        described = backend.describe(model=model, net_spec=net_spec, blobs=comparable, h5_path=path,
                                     prototxt=args.prototxt, prototxt_out=prototxt_out)
        targets = described.targets_in(model, comparable, described.layer_tops)
        compared = verify.compared_targets(model, targets)
        prototxt_tmp = os.path.join(scratch, stem + ".prototxt")
        try:
            with open(prototxt_tmp, "w") as f:
                f.write(described.text)
        except OSError as error:
            raise ConversionError("%s: cannot write: %s" % (prototxt_out, error.strerror))

        caffemodel_tmp = os.path.join(scratch, stem + ".caffemodel")
        written = backend.write(net_spec=net_spec, prototxt_file=prototxt_tmp, caffemodel_file=caffemodel_tmp,
                                h5_path=path, prototxt_shown=args.prototxt or prototxt_out,
                                caffemodel_shown=caffemodel_out, progress=progress)
        # Ctrl-C waits until both files are in place and the CLI knows it: a new prototxt next to
        # an old .caffemodel would be a half-written result, and untold output a wrong message.
        with interrupts.held():
            commit([(prototxt_tmp, prototxt_out), (caffemodel_tmp, caffemodel_out)])
            _tell_the_cli(args, "wrote", path)

        result = report.FileResult(
            path, model=model.name, backend=backend.name,
            verified_with=None if args.no_verify else args.runtime or backend.verifier,
            tensorflow_layers=len(model.layers), caffe_layers=len(described.layer_tops),
            caffe_types=described.types, inputs=described.inputs, prototxt=prototxt_out,
            caffemodel=caffemodel_out, targets=verify.targets_to_json(compared),
            source=report.source_entry(str(model.attrs.get("source_path", path)),
                                       str(model.attrs.get("source_framework", "")),
                                       str(model.attrs.get("source_version", ""))),
            profile=args.profile,
            deployment={"inputs": deployed_net.inputs(model, blobs, described.inputs, options),
                        "outputs": deployed_net.outputs(model, verify.targets_to_json(targets))},
            layer_table=deployed_net.layer_table(model, net_spec, blobs, args.prototxt is not None),
            deploy_options=dict(options.to_json(), applied=deployed.applied))
        if not args.no_verify:
            progress.stage("verifying")
            try:
                verify_in(result, backend, written, model, targets, compared, args)
            except ConversionError as error:
                error.args = ("%s (the files were written, unverified)" % error,)
                raise
        return result
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


def verify_in(result: report.FileResult, backend: Backend, written, model, targets: Dict[str, verify.Target],
              compared: Dict[str, verify.Target], args) -> None:
    """Run the reference input once in the backend's runtime and measure the compared layers (and,
    with --per-layer or when the file has every layer's activation, every mapped layer) into
    `result`."""
    every_layer = all(layer.name in model.reference_activations
                      for layer in model.layers if layer.type != "input")
    mapped = {}
    if args.per_layer or every_layer:
        mapped = {name: target for name, target in targets.items() if name in model.reference_activations}

    def run(feeds, wanted):
        return backend.run(written=written, prototxt=result.prototxt, caffemodel=result.caffemodel, feeds=feeds,
                           targets=wanted)

    fetched, result.compared, per_layer, float64 = verify.measure(
        model, {name: result.inputs[name] for name in model.inputs}, mapped, compared, run, model.source,
        deploy.DeployOptions.from_json(result.deploy_options))
    if mapped:
        result.per_layer = per_layer
        result.first_over_layer_tolerance = verify.first_over(result.per_layer, verify.names_in_order(model),
                                                              float64=float64)
        result.targets = verify.targets_to_json(dict(mapped, **compared))
    deployed, fused = backend.deployed(model=model, inputs=result.inputs,
                                       outputs={name: compared[name] for name in model.outputs},
                                       prototxt=result.prototxt, caffemodel=result.caffemodel,
                                       deployment=deploy.DeployOptions.from_json(result.deploy_options))
    errors = report.runtime_errors(result.compared, result.per_layer, float64, deployed, fused)
    result.runtimes = {result.verified_with: errors}
    if model.labels is not None:
        output = model.compared_layers()[0]
        result.accuracy = verify.accuracy(fetched[output], verify.in_caffe_layout(
            compared[output], model.activation(output), model.source), model.labels)
    result.worst_layer, result.worst_max_rel = report.worst(result.compared)
    result.verified = report.runtime_passes(errors, args.tolerance)


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
    # Which runtime this is, as reports name it (tf2caffe/runtimes.py): which Caffe, for pycaffe.
    p.add_argument("--runtime", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    with reported_errors(args.debug):
        get_profile(args.profile)  # an unknown name is refused before any work
        deploy_options(args).check_prototxt(args.prototxt)
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
    results = report.Report(args.tolerance, {})
    status = 0
    try:
        for path in args.files:
            progress.start(os.path.basename(path))
            started = time.monotonic()
            try:
                result = import_file(path, args, scratch, progress, backend)
            except ConversionError as error:
                if args.debug:
                    raise
                message = " ".join(str(error).split())
                if path not in message:  # e.g. an unsupported layer: say which file has it
                    message = "%s: %s" % (path, message)
                sys.stderr.write("%s: error: %s\n" % (PROG, message))
                sys.stderr.flush()
                results.results[path] = report.FileResult(path, error=message)
                status = 2
            else:
                result.seconds = round(time.monotonic() - started, 3)
                result.stage_seconds = progress.seconds()
                results.results[path] = result
                report.print_file_result(result, args.tolerance)
                for _, layer, error, run_in_words in result.failures(args.tolerance):
                    sys.stderr.write("%s: verification failed: %s: layer '%s' has relative error %.3g in %s > "
                                     "tolerance %g (the files were written)\n" % (
                                         PROG, path, layer, error, run_in_words, args.tolerance))
                if result.verified is False:
                    status = max(status, 1)
            if args.report:
                report.write(args.report, results)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
