"""The `tf2caffe` command: export (TensorFlow side), import (in the Caffe chroot), convert (both).

Runs in the TensorFlow-side venv but imports TensorFlow only for `export` and `convert`, so
`tf2caffe import --help` is instant. `import` re-executes `python3 -m tf2caffe.import_stage`
inside the Caffe chroot and turns Caffe's process-killing CHECK failures into one line; with the
native backend (no Caffe needed) it runs the import stage in this process instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Tuple

from . import __version__, interrupts
from .errors import ConversionError, UnsupportedError, reported_errors

PROG = "tf2caffe"
DEFAULT_TOLERANCE = 1e-4

# glog: "F1126 12:34:56.789012 12345 net.cpp:123] Check failed: ..." plus its stack dump.
GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ?(.*)$")
GLOG_NOISE = re.compile(r"^(\*\*\* |\s+@\s+0x|WARNING: Logging before InitGoogleLogging)")


# ---------------------------------------------------------------- arguments

def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `tf2caffe import`, shared with `python3 -m tf2caffe.import_stage`."""
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="intermediate file(s) from `tf2caffe export`")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder: DIR/<stem>.prototxt and DIR/<stem>.caffemodel")
    p.add_argument("--prototxt", metavar="P",
                   help="use this hand-written prototxt (its input shape is set from the HDF5 file) "
                        "instead of the generated one")
    add_target_arguments(p)
    p.add_argument("--report", metavar="R.json", help="also write the verification report as JSON")
    p.add_argument("--per-layer", action="store_true",
                   help="report the error of every mapped layer (needs `export --per-layer`)")
    add_backend_arguments(p)


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("native", "pycaffe"),
                   help="pycaffe: write and verify with Caffe itself (in its environment); native: write "
                        "the files without Caffe and verify with OpenCV (default: pycaffe if the Caffe "
                        "environment exists, else native)")
    p.add_argument("--no-verify", action="store_true",
                   help="write the files without running the reference input through them")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="bvlc",
                   help="target profile: the Caffe layer types the net may use (default: bvlc)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T",
                   help="maximum relative error of the compared layers (default: %g)" % DEFAULT_TOLERANCE)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC",
                   help="architectures/<name>.py (tflearn), a .keras or Keras .h5 file, a SavedModel "
                        "folder, a frozen .pb, or a TF1/tflearn checkpoint prefix")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--checkpoint", metavar="CKPT", help="weights to load (tflearn/TF1 checkpoint prefix)")
    p.add_argument("--input-shape", type=input_shape, metavar="N,H,W,C",
                   help="input shape of the reference batch (NHWC)")
    p.add_argument("--per-layer", action="store_true",
                   help="store every layer's reference activation (per-layer verification)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference input (default: 0)")
    p.add_argument("--reference-input", metavar="X.npy",
                   help="your own inputs (NHWC), verified too: appended to the seeded sample")
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

    convert = sub.add_parser("convert", help="export + import + OpenCV check, with a short report",
                             description="Export, import, check in OpenCV, and report.")
    add_export_arguments(convert)
    convert.add_argument("--prototxt", metavar="P", help="hand-written prototxt to fill (see `import`)")
    add_target_arguments(convert)
    add_backend_arguments(convert)
    convert.add_argument("--check-only", action="store_true",
                         help="list every layer that cannot be converted, write nothing (exit 0 if none, 2 otherwise)")
    convert.set_defaults(run=run_convert)

    for command in (export, imp, convert):
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback (and Caffe's log) instead of a one-line error")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    with reported_errors(args.debug, PROG):
        return args.run(args)


# ---------------------------------------------------------------- export

def export_model(args, out_dir: str, per_layer: bool):
    if not args.debug:
        # TensorFlow's C++ start-up chatter and tflearn's TF1 deprecation warnings: noise to a user.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import logging
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        with tensorflow_banner_hidden():
            import tensorflow  # noqa: F401  (here, so that its start-up banner can be hidden)
    from .export import export
    return export(args.src, out_dir, checkpoint=args.checkpoint, input_shape=args.input_shape,
                  per_layer=per_layer, seed=args.seed, inputs=args.inputs, outputs=args.outputs,
                  signature=args.signature, reference_input=args.reference_input)


# TensorFlow 2.21 logs its oneDNN notice through absl before absl is initialised, which ignores
# TF_CPP_MIN_LOG_LEVEL; these lines are hidden while TensorFlow is imported, nothing else is.
TENSORFLOW_BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                               r"|I\d{4} .*\] oneDNN custom operations)")


@contextlib.contextmanager
def tensorflow_banner_hidden():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured:
                if not TENSORFLOW_BANNER.match(line):
                    sys.stderr.write(line)


def run_export(args) -> int:
    path = export_model(args, args.output, args.per_layer)
    print(path)
    return 0


# ---------------------------------------------------------------- import

def run_import(args) -> int:
    return import_files(args.files, args.output, args, report=args.report)


def import_files(files: List[str], output: str, args, report: Optional[str] = None, stdout=None) -> int:
    """Run the import stage with the chosen backend; returns its exit status."""
    if choose_backend(args) == "native":
        return import_here(files, output, args, report, stdout)
    return import_in_chroot(files, output, args, report, stdout)


def choose_backend(args) -> str:
    """args.backend, or the default (said on stdout): pycaffe if the Caffe environment has been
    built, else native. Refuses what the native backend cannot do before any work starts."""
    if args.backend is None:
        from . import environments
        if environments.built_caffe_root() is not None:
            args.backend = "pycaffe"
            print("backend: pycaffe (the Caffe environment exists)", flush=True)
        else:
            args.backend = "native"
            print("backend: native (no Caffe environment found)", flush=True)
    if args.backend == "native" and args.prototxt:
        from .caffe.backends import PROTOTXT_NEEDS_PYCAFFE
        raise ConversionError(PROTOTXT_NEEDS_PYCAFFE % args.prototxt)
    return args.backend


def import_here(files: List[str], output: str, args, report: Optional[str], stdout) -> int:
    """The native backend needs no Caffe: the import stage runs in this process, exactly as it
    would in the chroot."""
    from . import import_stage

    argv = _child_arguments(files, output, args, report)
    if stdout is None:
        return import_stage.main(argv)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return import_stage.main(argv)


def _seen_inside(path: Optional[str]) -> Optional[str]:
    """The path as given, unless it goes through a symbolic link: the chroot sees real
    directories only (bind-mounted at their real paths)."""
    if path is None:
        return None
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    return path if real == absolute else real


def _child_arguments(files: List[str], output: str, args, report: Optional[str]) -> List[str]:
    argv = list(files) + ["-o", output, "--profile", args.profile, "--tolerance", repr(args.tolerance),
                          "--backend", args.backend]
    if args.prototxt:
        argv += ["--prototxt", args.prototxt]
    if report:
        argv += ["--report", report]
    if getattr(args, "per_layer", False):
        argv.append("--per-layer")
    if args.no_verify:
        argv.append("--no-verify")
    if args.debug:
        argv.append("--debug")
    if sys.stderr.isatty():
        argv.append("--progress")
    return argv


def import_in_chroot(files: List[str], output: str, args, report: Optional[str] = None,
                     stdout=None) -> int:
    """Run the import stage in the Caffe chroot; returns its exit status. A Caffe abort becomes
    a ConversionError naming the file Caffe was working on. Output folders it had to create are
    removed again if nothing was written in them."""
    new_folders = _missing_folders(os.path.abspath(output))
    try:
        return _import_in_chroot(files, output, args, report, stdout)
    finally:
        for folder in new_folders:
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: a result (or a folder already there)


def _missing_folders(path: str) -> List[str]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _import_in_chroot(files: List[str], output: str, args, report: Optional[str], stdout) -> int:
    from . import environments

    files = [_seen_inside(path) for path in files]
    output, report = _seen_inside(output), _seen_inside(report)
    args.prototxt = _seen_inside(args.prototxt)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise ConversionError("%s: cannot create the output folder: %s" % (output, error.strerror))
    binds = [output] + [path for path in list(files) + [args.prototxt, report] if path and os.path.exists(path)]
    if report:
        binds.append(_report_folder(report))
    try:
        scratch = tempfile.mkdtemp(prefix=".tf2caffe-import-", dir=output)
    except OSError as error:
        raise ConversionError("%s: cannot write in the output folder: %s" % (output, error.strerror))
    status_read, status_write = os.pipe()
    reader = child = None
    started: List[str] = []
    written: List[str] = []
    try:
        argv = ["python3", "-m", "tf2caffe.import_stage"] + _child_arguments(files, output, args, report)
        argv += ["--scratch", scratch, "--status-fd", str(status_write)]
        command = environments.caffe_command(argv, environments.PROJECT_ROOT, binds, os.getcwd())
        # A Ctrl-C while Popen starts the child would leave it running unseen (`child` unset): it
        # is raised once `child` names the process to stop.
        with interrupts.held():
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=subprocess.PIPE, pass_fds=(status_write,))
        os.close(status_write)
        status_write = -1
        reader = threading.Thread(target=_read_status, args=(status_read, started, written), daemon=True)
        reader.start()
        fatal = _relay_stderr(child.stderr, keep_glog=args.debug)
        returncode = child.wait()
        reader.join()
    except KeyboardInterrupt:
        if child is not None:
            _stop(child)
        if reader is not None:
            reader.join()
        raise KeyboardInterrupt(_interrupted(started, written))
    finally:
        if status_write >= 0:
            os.close(status_write)
        if reader is None:
            os.close(status_read)
        shutil.rmtree(scratch, ignore_errors=True)
    if returncode < 0 or (returncode != 0 and fatal):
        where = started[-1] if started else files[0]
        if fatal:
            raise ConversionError("%s: Caffe refused the net: %s" % (where, fatal))
        raise ConversionError("%s: Caffe crashed (%s)" % (where, _signal_name(-returncode)))
    return returncode


def _report_folder(report: str) -> str:
    """The report's folder, created if needed; refused now if the report could not be written
    there, rather than after the conversion."""
    folder = os.path.dirname(os.path.abspath(report))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ConversionError("%s: cannot create the report's folder: %s" % (report, error.strerror))
    if os.path.isdir(report) or not os.access(folder, os.W_OK):
        raise ConversionError("%s: cannot write the report: %s" % (
            report, "is a directory" if os.path.isdir(report) else "permission denied"))
    return folder


def _read_status(fd: int, started: List[str], written: List[str]) -> None:
    """The import stage's "start<TAB>FILE" and "wrote<TAB>FILE" lines."""
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            event, _, path = line.decode("utf-8", "replace").rstrip("\n").partition("\t")
            (written if event == "wrote" else started).append(path)


def _stop(child: subprocess.Popen) -> None:
    """Interrupt the import stage (Ctrl-C reached it too; `kill -INT` only this process) and wait
    until it has ended, so that nothing is written after this process has said what was. A
    second Ctrl-C kills it."""
    try:
        child.send_signal(signal.SIGINT)
        child.communicate()  # its stderr (its own "interrupted" line) is not the user's news
    except KeyboardInterrupt:
        child.kill()
        child.wait()


def _interrupted(started: List[str], written: List[str]) -> str:
    unfinished = [path for path in started if path not in written]
    if not written:
        return "interrupted; no output was written"
    return "interrupted; wrote the output of %s only%s" % (
        ", ".join(written), "; none for %s" % unfinished[-1] if unfinished else "")


def _relay_stderr(stream, keep_glog: bool) -> Optional[str]:
    """Copy the child's stderr to ours as it comes (progress bars included), without glog's lines;
    returns the first fatal glog message (e.g. 'Check failed: ...')."""
    fatal = None
    pending = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        segments = re.split(rb"(?<=[\r\n])", pending)
        pending = segments.pop()  # incomplete (or empty) tail
        for segment in segments:
            fatal = _relay_segment(segment, keep_glog, fatal)
    if pending:
        fatal = _relay_segment(pending, keep_glog, fatal)
    stream.close()
    return fatal


def _relay_segment(segment: bytes, keep_glog: bool, fatal: Optional[str]) -> Optional[str]:
    text = segment.decode("utf-8", "replace")
    match = GLOG_LINE.match(text.rstrip("\r\n"))
    if match and match.group(1) == "F" and fatal is None:
        fatal = match.group(2).strip()
    if keep_glog or not (match or GLOG_NOISE.match(text)):
        sys.stderr.write(text)
        sys.stderr.flush()
    return fatal


def _signal_name(number: int) -> str:
    try:
        return "killed by %s" % signal.Signals(number).name
    except ValueError:
        return "killed by signal %d" % number


# ---------------------------------------------------------------- convert

def run_convert(args) -> int:
    if args.check_only:
        return check_only(args)
    choose_backend(args)
    h5 = str(export_model(args, args.output, per_layer=args.per_layer))
    work = tempfile.mkdtemp(prefix=".tf2caffe-convert-", dir=args.output)
    try:
        report = os.path.join(work, "report.json")
        status = import_files([h5], args.output, args, report=report, stdout=subprocess.DEVNULL)
        if not os.path.exists(report):
            return status or 2
        with open(report) as f:
            entry = next(iter(json.load(f)["results"].values()))  # the only file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if entry.get("error"):
        return status or 2
    opencv = None
    if entry["verified_with"] == "pycaffe":  # the native backend measured OpenCV already
        from . import opencv_check
        opencv = opencv_check.check_report_entry(entry)
    return print_convert_report(entry, opencv, h5, args.tolerance)


def print_convert_report(entry: Dict, opencv: Optional[Dict[str, Dict[str, float]]], h5: str,
                         tolerance: float) -> int:
    """`opencv`: OpenCV's errors when the import stage measured another runtime (pycaffe)."""
    layers = entry["layers"]
    measured = {}
    if entry["verified_with"]:
        measured[entry["verified_with"]] = entry["compared"]
    if opencv is not None:
        measured["OpenCV"] = opencv
    print("%s: %d TensorFlow layers -> %d Caffe layers (backend %s)" % (
        entry["model"], layers["tensorflow"], layers["caffe"], entry["backend"]))
    if measured:
        print("max relative error: %s (compared: %s; tolerance %g)" % (
            ", ".join("%s %.3g" % (runtime, max(errors["max_rel"] for errors in values.values()))
                      for runtime, values in measured.items()), ", ".join(entry["compared"]), tolerance))
    else:
        print("not verified (--no-verify)")
    if entry["per_layer"]:
        worst = max(entry["per_layer"], key=entry["per_layer"].get)
        print("per layer (%s): worst %s %.3g; first over 1e-05: %s" % (
            entry["verified_with"], worst, entry["per_layer"][worst], entry["first_over_layer_tolerance"] or "none"))
    if entry.get("accuracy"):
        accuracy = entry["accuracy"]
        print("top-1 accuracy: Caffe %.4f, TensorFlow %.4f (%d labelled inputs)" % (
            accuracy["caffe"], accuracy["tensorflow"], accuracy["count"]))
    print("wrote: %s, %s, %s" % (h5, entry["files"]["prototxt"], entry["files"]["caffemodel"]))
    # The import stage's own failures were reported by it already.
    failed = [(name, errors["max_rel"]) for name, errors in (opencv or {}).items()
              if not errors["max_rel"] <= tolerance]
    for name, error in failed:
        sys.stderr.write("%s: verification failed: %s: layer '%s' has relative error %.3g in OpenCV > "
                         "tolerance %g (the files were written)\n" % (PROG, h5, name, error, tolerance))
    return 1 if failed or entry["verified"] is False else 0


def check_only(args) -> int:
    from . import intermediate
    from .caffe import emit
    from .caffe.profiles import get_profile

    profile = get_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="tf2caffe-check-") as folder:
        try:
            model = intermediate.read(str(export_model(args, folder, per_layer=False)))
        except UnsupportedError as refused:
            if refused.partial_model is None:
                raise
            model = refused.partial_model
            problems = refused.problems + emit.unsupported_layers(model, profile)
        else:
            try:
                problems = emit.unsupported_layers(model, profile)
            finally:
                model.file.close()
    if not problems:
        print("%s: all %d layers can be converted (profile %s)" % (model.name, len(model.layers), profile.name))
        return 0
    print("%s: %d of %d layers cannot be converted (profile %s):" % (
        model.name, len(problems), len(model.layers), profile.name))
    for problem in problems:
        print("  %s" % problem)
    return 2
