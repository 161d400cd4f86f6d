"""The Python API: what the `tf2caffe` command does, as functions that return report objects.

    import tf2caffe
    tf2caffe.export("model.keras", "out")          # -> ExportReport(h5="out/model.h5")
    tf2caffe.import_(["out/model.h5"], "out")      # -> ImportReport(status, backend, report)
    tf2caffe.convert("model.keras", "out")         # -> ConvertReport: export + import + OpenCV
    tf2caffe.check("model.keras")                  # -> CheckReport: every layer that cannot convert

Problems the user can act on raise ConversionError (one line naming the file/layer). TensorFlow
is imported only by the functions that read a TensorFlow model; the import stage runs in the
Caffe environment (pycaffe backend, `caffe_runner`) or in this process (native backend).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from . import report as import_report
from .caffe.profiles import DEFAULT_PROFILE, get_profile
from .errors import ConversionError, UnsupportedError
from .import_options import DEFAULT_TOLERANCE, ImportOptions
from .measure import within


@dataclass
class ExportReport:
    h5: str  # the intermediate file written


@dataclass
class ImportReport:
    status: int  # 0 all verified, 1 some verification failed (files written), 2 some file did not convert
    backend: str
    report: Optional[import_report.Report] = None  # read back when a report path was given


@dataclass
class ConvertReport:
    h5: str
    status: int  # as ImportReport's, OpenCV's verdict included
    tolerance: float
    result: Optional[import_report.FileResult] = None  # None: the import stage wrote no report
    # OpenCV's errors when the import stage verified in another runtime (pycaffe)
    opencv: Optional[Dict[str, Dict[str, float]]] = None
    opencv_failures: List[Tuple[str, float]] = field(default_factory=list)  # (layer, relative error)

    def measured(self) -> Dict[str, Dict[str, float]]:
        """runtime -> {compared layer: relative error}, for every runtime that ran the model."""
        runtimes = {}
        if self.result is not None and self.result.verified_with:
            runtimes[self.result.verified_with] = import_report.max_rel(self.result.compared)
        if self.opencv is not None:
            runtimes["OpenCV"] = import_report.max_rel(self.opencv)
        return runtimes


@dataclass
class CheckReport:
    model: str
    layers: int
    profile: str
    problems: List[str]  # one line per layer that cannot be converted; empty: all can


# ---------------------------------------------------------------- export

def export(src, out_dir, *, checkpoint=None, input_shape: Optional[Sequence[int]] = None,
           per_layer: bool = False, seed: int = 0, inputs=None, outputs=None, signature=None,
           reference_input=None, debug: bool = False) -> ExportReport:
    """TensorFlow model SRC -> `out_dir/<stem>.h5`, the intermediate with TensorFlow's reference
    outputs. `debug=False` keeps TensorFlow's start-up chatter off stderr."""
    if not debug:
        quiet_tensorflow()
    from .export import export as export_intermediate
    path = export_intermediate(src, out_dir, checkpoint=checkpoint, input_shape=input_shape,
                               per_layer=per_layer, seed=seed, inputs=inputs, outputs=outputs,
                               signature=signature, reference_input=reference_input)
    return ExportReport(str(path))


# TensorFlow 2.21 logs its oneDNN notice through absl before absl is initialised, which ignores
# TF_CPP_MIN_LOG_LEVEL; these lines are hidden while TensorFlow is imported, nothing else is.
TENSORFLOW_BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                               r"|I\d{4} .*\] oneDNN custom operations)")


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up chatter and tflearn's TF1 deprecation warnings: noise to a user."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with tensorflow_banner_hidden():
        import tensorflow  # noqa: F401  (here, so that its start-up banner can be hidden)


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


# ---------------------------------------------------------------- import

def choose_backend(backend: Optional[str], prototxt: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """(backend, why it was chosen): `backend`, or the default (pycaffe if the Caffe environment
    has been built, else native), with the reason when it was the default. Refuses what the
    native backend cannot do before any work starts."""
    reason = None
    if backend is None:
        from . import environments
        if environments.built_caffe_root() is not None:
            backend, reason = "pycaffe", "the Caffe environment exists"
        else:
            backend, reason = "native", "no Caffe environment found"
    if backend == "native" and prototxt:
        from .caffe.backends import PROTOTXT_NEEDS_PYCAFFE
        raise ConversionError(PROTOTXT_NEEDS_PYCAFFE % prototxt)
    return backend, reason


def import_(files: Sequence[str], out_dir: str, *, prototxt: Optional[str] = None, profile: str = DEFAULT_PROFILE,
            tolerance: float = DEFAULT_TOLERANCE, per_layer: bool = False, backend: Optional[str] = None,
            verify: bool = True, report: Optional[str] = None, debug: bool = False,
            quiet: bool = False) -> ImportReport:
    """Intermediate files -> `out_dir/<stem>.prototxt` and `.caffemodel`, verified against
    TensorFlow's reference outputs. The import stage prints a report per file (unless `quiet`)
    and writes the JSON report to `report` (read back into the result)."""
    get_profile(profile)  # an unknown name is refused before any work
    backend, _ = choose_backend(backend, prototxt)
    options = ImportOptions(backend, prototxt=prototxt, profile=profile, tolerance=tolerance, report=report,
                            per_layer=per_layer, verify=verify, debug=debug, progress=sys.stderr.isatty())
    files = [str(path) for path in files]
    if backend == "native":
        status = import_here(files, str(out_dir), options, quiet)
    else:
        from .caffe_runner import run_import_stage
        status = run_import_stage(files, str(out_dir), options,
                                  stdout=subprocess.DEVNULL if quiet else None)
    written = import_report.read(report) if report and os.path.exists(report) else None
    return ImportReport(status, backend, written)


def import_here(files: List[str], out_dir: str, options: ImportOptions, quiet: bool) -> int:
    """The native backend needs no Caffe: the import stage runs in this process, exactly as it
    would in the chroot."""
    from . import import_stage

    argv = options.argv(files, out_dir)
    if not quiet:
        return import_stage.main(argv)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return import_stage.main(argv)


# ---------------------------------------------------------------- convert

def convert(src, out_dir, *, prototxt: Optional[str] = None, profile: str = DEFAULT_PROFILE,
            tolerance: float = DEFAULT_TOLERANCE, backend: Optional[str] = None, verify: bool = True,
            debug: bool = False, per_layer: bool = False, **export_options) -> ConvertReport:
    """export + import + (after pycaffe) the OpenCV check of one model. `export_options`: those
    of `export`."""
    get_profile(profile)  # an unknown name is refused before any work
    backend, _ = choose_backend(backend, prototxt)
    h5 = export(src, out_dir, per_layer=per_layer, debug=debug, **export_options).h5
    work = tempfile.mkdtemp(prefix=".tf2caffe-convert-", dir=str(out_dir))
    try:
        imported = import_([h5], out_dir, prototxt=prototxt, profile=profile, tolerance=tolerance,
                           per_layer=per_layer, backend=backend, verify=verify,
                           report=os.path.join(work, "report.json"), debug=debug, quiet=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    converted = ConvertReport(h5, imported.status, tolerance)
    if imported.report is None:
        converted.status = imported.status or 2
        return converted
    converted.result = next(iter(imported.report.results.values()))  # the only file
    if converted.result.error:
        converted.status = imported.status or 2
        return converted
    if converted.result.verified_with == "pycaffe":  # the native backend measured OpenCV already
        from . import opencv_check
        converted.opencv = opencv_check.check_result(converted.result)
        converted.opencv_failures = [(name, errors["max_rel"]) for name, errors in converted.opencv.items()
                                     if not within(errors["max_rel"], tolerance, errors.get("float64"))]
    converted.status = 1 if converted.opencv_failures or converted.result.verified is False else 0
    return converted


def check(src, *, profile: str = DEFAULT_PROFILE, debug: bool = False, **export_options) -> CheckReport:
    """Every layer of SRC that cannot be converted, all at once; writes nothing."""
    from . import intermediate
    from .caffe import emit

    target = get_profile(profile)  # before any work: an unknown name is refused at once
    with tempfile.TemporaryDirectory(prefix="tf2caffe-check-") as folder:
        try:
            model = intermediate.read(export(src, folder, per_layer=False, debug=debug, **export_options).h5)
        except UnsupportedError as refused:
            if refused.partial_model is None:
                raise
            model = refused.partial_model
            problems = refused.problems + emit.unsupported_layers(model, target)
        else:
            try:
                problems = emit.unsupported_layers(model, target)
            finally:
                model.file.close()
    return CheckReport(model.name, len(model.layers), target.name, problems)
