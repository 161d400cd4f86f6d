"""The `tf2caffe` command: export (TensorFlow side), import (in a Caffe, or natively), convert (both).

A thin shell over the Python API (`tf2caffe.api`): parses the options, calls the API and prints
its reports. Imports TensorFlow only for `export` and `convert`, so `tf2caffe import --help` is
instant.
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

from . import __version__
from .caffe.profiles import get_profile
from .errors import reported_errors
from .import_options import (add_backend_arguments, add_deploy_arguments, add_import_arguments,
                             add_target_arguments, deploy_options)
from .measure import LAYER_TOLERANCE

PROG = "tf2caffe"


# ---------------------------------------------------------------- arguments

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC",
                   help="architectures/<name>.py (tflearn), a .keras or Keras .h5 file, a SavedModel "
                        "folder, a frozen .pb, or a TF1/tflearn checkpoint prefix")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (required unless --check-only)")
    p.add_argument("--checkpoint", metavar="CKPT", help="weights to load (tflearn/TF1 checkpoint prefix)")
    p.add_argument("--input-shape", type=input_shape, metavar="N,H,W,C",
                   help="input shape of the reference batch (NHWC)")
    p.add_argument("--per-layer", action="store_true",
                   help="store every layer's reference activation (per-layer verification)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference input (default: 0)")
    p.add_argument("--reference-input", metavar="X.npy|X.npz",
                   help="your own inputs (NHWC), verified too: appended to the seeded sample; .npy for a "
                        "single input, .npz with one array per input name")
    p.add_argument("--ssd-config", metavar="PIPELINE.config",
                   help="a TF Object Detection API SSD: the pipeline config whose ssd { ... } block "
                        "(anchors, box coder, post-processing) follows the model's two outputs (box "
                        "encodings, class predictions); becomes PriorBox + DetectionOutput (--profile ssd). "
                        "A graph holding its NMS (CombinedNonMaxSuppression, or one per class) needs none: "
                        "its post-processing is read from the graph (the config wins when given)")
    graph = p.add_argument_group("graph sources (.pb, TF1/tflearn checkpoints, SavedModels)")
    graph.add_argument("--inputs", metavar="NAMES", help="input tensors, comma-separated (default: detected)")
    graph.add_argument("--outputs", metavar="NAMES", help="output tensors, comma-separated (default: detected)")
    graph.add_argument("--signature", metavar="KEY", help="SavedModel signature (default: serving_default)")


def input_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError("expected positive integers like 1,224,224,3, got '%s'" % text)
    return shape


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Convert a trained TensorFlow model into Caffe "
                                "(.prototxt + .caffemodel) that computes the same function.")
    p.add_argument("--version", action="version", version="%s %s" % (PROG, __version__))
    sub = p.add_subparsers(dest="command", metavar="{export,import,convert}")
    sub.required = True

    export = sub.add_parser("export", help="TensorFlow model -> DIR/<stem>.h5 (intermediate file)",
                            description="Write the HDF5 intermediate file with TensorFlow's reference outputs.")
    add_export_arguments(export)
    export.set_defaults(run=run_export)

    imp = sub.add_parser("import", help="intermediate file(s) -> Caffe .prototxt + .caffemodel, verified",
                         description="Convert intermediate files into Caffe models (inside the Caffe "
                                     "environment) and verify them against TensorFlow's reference outputs.")
    add_import_arguments(imp)
    imp.set_defaults(run=run_import)

    convert = sub.add_parser("convert", help="export + import (verified in every runtime here), with a short report",
                             description="Export, import, verify in every runtime here that can run the net "
                                         "(both Caffes, OpenCV), and report.")
    add_export_arguments(convert)
    convert.add_argument("--prototxt", metavar="P", help="hand-written prototxt to fill (see `import`)")
    add_target_arguments(convert)
    add_deploy_arguments(convert)
    add_backend_arguments(convert)
    convert.add_argument("--report", metavar="PATH",
                         help="where to write the JSON report (default: DIR/<stem>.report.json); the HTML "
                              "page goes beside it (.html)")
    convert.add_argument("--no-per-layer", action="store_true",
                         help="record no per-layer activations (very large models): the report then has "
                              "the outputs' errors only")
    convert.add_argument("--check-only", action="store_true",
                         help="list every layer that cannot be converted, write nothing (exit 0 if none, 2 otherwise)")
    convert.set_defaults(run=run_convert)

    for command in (export, imp, convert):
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback (and Caffe's log) instead of a one-line error")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    arguments = parser()
    args = arguments.parse_args(argv)
    if args.output is None and not getattr(args, "check_only", False):
        arguments.error("the following arguments are required: -o/--output")
    with reported_errors(args.debug, PROG):
        if args.command != "export":
            get_profile(args.profile)  # an unknown name is refused before any work
        return args.run(args)


# ---------------------------------------------------------------- commands

def export_options(args) -> dict:
    return dict(checkpoint=args.checkpoint, input_shape=args.input_shape, seed=args.seed, inputs=args.inputs,
                outputs=args.outputs, signature=args.signature, reference_input=args.reference_input,
                ssd_config=args.ssd_config, debug=args.debug)


def run_export(args) -> int:
    from .api import export
    print(export(args.src, args.output, per_layer=args.per_layer, **export_options(args)).h5)
    return 0


def run_import(args) -> int:
    from .api import import_
    return import_(args.files, args.output, prototxt=args.prototxt, profile=args.profile,
                   tolerance=args.tolerance, per_layer=args.per_layer, backend=args.backend,
                   verify=not args.no_verify, report=args.report, debug=args.debug,
                   deploy=deploy_options(args)).status


def run_convert(args) -> int:
    from .api import check, convert
    if args.check_only:
        checked = check(args.src, profile=args.profile, **export_options(args))
        print_check(checked)
        return 2 if checked.problems else 0
    converted = convert(args.src, args.output, prototxt=args.prototxt, profile=args.profile,
                        tolerance=args.tolerance, backend=args.backend, verify=not args.no_verify,
                        per_layer=not args.no_per_layer, report=args.report, deploy=deploy_options(args),
                        **export_options(args))
    if converted.result is not None and not converted.result.error:  # else the import stage said why
        print_convert(converted)
    return converted.status


def print_convert(converted) -> None:
    result, tolerance = converted.result, converted.tolerance
    print("%s: %d TensorFlow layers -> %d Caffe layers (written by %s)" % (
        result.model, result.tensorflow_layers, result.caffe_layers, converted.writer))
    runtimes = converted.runtimes()
    if runtimes:
        print("max relative error: %s (compared: %s; tolerance %g)" % (
            ", ".join("%s %.3g" % (runtime, max(errors.values())) for runtime, errors in runtimes.items()),
            ", ".join(result.compared), tolerance))
        for runtime, errors in result.runtimes.items():
            if errors.get("deployed"):
                print("%s as deployed (default settings, only the outputs asked for; %d groups of layers fused): %s" % (
                    runtime, len(errors["fused"]), ", ".join(
                        "%s %.3g" % (name, value["max_rel"]) for name, value in errors["deployed"].items())))
        if converted.opencv_only:
            print("verified in OpenCV only: %s" % converted.opencv_only)
    else:
        print("not verified (--no-verify)")
    float64 = result.runtimes.get(result.verified_with, {}).get("float64", {})
    truths = [float64[name] for name in result.compared if name in float64]
    if truths:  # the export computed the float64 truth: TensorFlow's float32 noise beside Caffe's
        print("against the float64 truth: %s %.3g, TensorFlow float32 %.3g" % (
            result.verified_with, max(t["caffe"] for t in truths), max(t["tensorflow"] for t in truths)))
    if result.per_layer:
        worst = max(result.per_layer, key=result.per_layer.get)
        print("per layer (%s): worst %s %.3g; first over %g: %s" % (
            result.verified_with, worst, result.per_layer[worst], LAYER_TOLERANCE,
            result.first_over_layer_tolerance or "none"))
    if result.accuracy:
        print("top-1 accuracy: Caffe %.4f, TensorFlow %.4f (%d labelled inputs)" % (
            result.accuracy["caffe"], result.accuracy["tensorflow"], result.accuracy["count"]))
    print("wrote: %s, %s, %s" % (converted.h5, result.prototxt, result.caffemodel))
    print("report: %s, %s" % (converted.report, converted.html))


def print_check(checked) -> None:
    if not checked.problems:
        print("%s: all %d layers can be converted (profile %s)" % (checked.model, checked.layers, checked.profile))
        return
    print("%s: %d of %d layers cannot be converted (profile %s):" % (
        checked.model, len(checked.problems), checked.layers, checked.profile))
    for problem in checked.problems:
        print("  %s" % problem)
