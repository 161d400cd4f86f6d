"""The Python API: what the `tf2caffe` command does, as functions that return report objects.

    import tf2caffe
    tf2caffe.export("model.keras", "out")          # -> ExportReport(h5="out/model.h5")
    tf2caffe.import_(["out/model.h5"], "out")      # -> ImportReport(status, backend, report)
    tf2caffe.convert("model.keras", "out")         # -> ConvertReport: export + import
    tf2caffe.check("model.keras")                  # -> CheckReport: every layer that cannot convert

Problems the user can act on raise ConversionError (one line naming the file/layer). TensorFlow
is imported only by the functions that read a TensorFlow model; the import stage runs in a
Caffe environment (pycaffe backend, `caffe_runner`) or in this process (native backend), and
each net is then verified in every other runtime that can run it (`runtimes`).
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
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from . import progress
from . import report as import_report
from .caffe.deploy import DeployOptions
from .caffe.profiles import DEFAULT_PROFILE, get_profile
from .errors import ConversionError, UnsupportedError
from .import_options import DEFAULT_TOLERANCE, ImportOptions

if TYPE_CHECKING:
    from . import runtimes


@dataclass
class ExportReport:
    h5: str  # the intermediate file written


@dataclass
class ImportReport:
    status: int  # 0 all verified, 1 some verification failed (files written), 2 some file did not convert
    backend: str
    report: Optional[import_report.Report] = None  # None: the import stage wrote no report
    writer: str = ""  # the runtime that wrote the files ("pycaffe-bullseye", "native"), and why
    opencv_only: Dict[str, str] = field(default_factory=dict)  # file verified in OpenCV alone -> why


@dataclass
class ConvertReport:
    h5: str
    status: int  # as ImportReport's
    tolerance: float
    result: Optional[import_report.FileResult] = None  # None: the import stage wrote no report
    writer: str = ""  # as ImportReport's
    opencv_only: Optional[str] = None  # why it was verified in OpenCV alone, if it was
    report: Optional[str] = None  # the JSON report written (report.py's structure)
    html: Optional[str] = None  # the page written beside it (report_html.py)

    def runtimes(self) -> Dict[str, Dict[str, float]]:
        """runtime -> {compared layer: relative error}, for every runtime the model was verified in."""
        if self.result is None:
            return {}
        return {name: import_report.max_rel(errors["compared"]) for name, errors in self.result.runtimes.items()}


@dataclass
class CheckReport:
    model: str
    layers: int
    profile: str
    problems: List[str]  # one line per layer that cannot be converted; empty: all can


# ---------------------------------------------------------------- export

def export(src, out_dir, *, checkpoint=None, input_shape: Optional[Sequence[int]] = None,
           per_layer: bool = False, seed: int = 0, inputs=None, outputs=None, signature=None,
           reference_input=None, ssd_config=None, debug: bool = False) -> ExportReport:
    """TensorFlow model SRC -> `out_dir/<stem>.h5`, the intermediate with TensorFlow's reference
    outputs. `debug=False` keeps TensorFlow's start-up chatter off stderr."""
    if not debug:
        quiet_tensorflow()
    from .export import export as export_intermediate
    path = export_intermediate(src, out_dir, checkpoint=checkpoint, input_shape=input_shape,
                               per_layer=per_layer, seed=seed, inputs=inputs, outputs=outputs,
                               signature=signature, reference_input=reference_input, ssd_config=ssd_config)
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

def refuse_what_cannot_work(backend: Optional[str], prototxt: Optional[str], deploy: Optional[DeployOptions]) -> None:
    """Refuse, before any work starts, what the native backend cannot do, pycaffe without a
    Caffe, and deployment options on a hand-written prototxt."""
    from . import runtimes
    if deploy is not None:
        deploy.check_prototxt(prototxt)
    if prototxt and (backend == "native" or (backend is None and not runtimes.available_caffes())):
        from .caffe.backends import PROTOTXT_NEEDS_PYCAFFE
        raise ConversionError(PROTOTXT_NEEDS_PYCAFFE % prototxt)
    runtimes.choose_writer(backend, None)


def import_(files: Sequence[str], out_dir: str, *, prototxt: Optional[str] = None, profile: str = DEFAULT_PROFILE,
            tolerance: float = DEFAULT_TOLERANCE, per_layer: bool = False, backend: Optional[str] = None,
            verify: bool = True, report: Optional[str] = None, debug: bool = False,
            quiet: bool = False, deploy: Optional[DeployOptions] = None) -> ImportReport:
    """Intermediate files -> `out_dir/<stem>.prototxt` and `.caffemodel`, each written by pycaffe
    in the first Caffe here that has all its layer types, else natively (`runtimes.writers`;
    `backend` forces one), and verified against TensorFlow's reference outputs in every runtime
    here that can run it. Prints (unless `quiet`) the writers and the import stage's report per
    file, and writes the JSON report to `report`. `deploy`: the deployment options
    (tf2caffe/caffe/deploy.py; default: zero padding folded, nothing else)."""
    from . import runtimes

    get_profile(profile)  # a bad name is refused before anything runs
    refuse_what_cannot_work(backend, prototxt, deploy)
    groups = runtimes.writers([str(path) for path in files], backend, profile, prototxt)
    work = tempfile.mkdtemp(prefix="tf2caffe-import-")
    imported = ImportReport(0, ",".join(sorted({choice.backend for choice, _ in groups})),
                            writer="; ".join(choice.describe() for choice, _ in groups))
    results: Dict[str, import_report.FileResult] = {}
    try:
        for index, (choice, group) in enumerate(groups):
            if choice.reason and not quiet:
                print("backend: %s%s" % (choice.describe(), "" if len(groups) == 1 else ": " + ", ".join(group)),
                      flush=True)
            # One writer: the import stage keeps the report current file by file (an interrupted
            # run leaves what was done); several: merged below.
            group_report = report if report and len(groups) == 1 else os.path.join(work, "report-%d.json" % index)
            options = ImportOptions(choice.backend, prototxt=prototxt, profile=profile, tolerance=tolerance,
                                    report=group_report, per_layer=per_layer, verify=verify, debug=debug,
                                    progress=sys.stderr.isatty(),
                                    runtime=choice.caffe.name if choice.caffe else None,
                                    deploy=deploy or DeployOptions())
            try:
                status = run_import_stage(group, str(out_dir), options, choice, quiet)
            except KeyboardInterrupt as interrupt:
                written = _written(results)  # by the writers before this one
                if not written:
                    raise
                said = interrupt.args[0] if interrupt.args else "interrupted; no output was written"
                raise KeyboardInterrupt("interrupted; wrote the output of %s; then %s" % (
                    ", ".join(written), said.replace("interrupted; ", "", 1))) from None
            imported.status = max(imported.status, status)
            if os.path.exists(group_report):
                results.update(import_report.read(group_report).results)
        if results:
            imported.report = import_report.Report(tolerance, results)
            try:
                verify_elsewhere(imported, tolerance, quiet)
            except KeyboardInterrupt:
                written = _written(results)
                if not written:
                    raise
                raise KeyboardInterrupt("interrupted; wrote the output of %s, not verified in every runtime" % (
                    ", ".join(written))) from None
            if report:
                import_report.write(report, imported.report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return imported


def _written(results: Dict[str, import_report.FileResult]) -> List[str]:
    return [path for path, result in results.items() if not result.error]


def run_import_stage(files: List[str], out_dir: str, options: ImportOptions, choice: "runtimes.Choice",
                     quiet: bool) -> int:
    if choice.caffe is None:
        return import_here(files, out_dir, options, quiet)
    from .caffe_runner import run_import_stage as run_in_caffe
    return run_in_caffe(files, out_dir, options, choice.caffe, stdout=subprocess.DEVNULL if quiet else None)


def verify_elsewhere(imported: ImportReport, tolerance: float, quiet: bool) -> None:
    """Measure every converted file in each other runtime here that has all its layer types (one
    process per Caffe), into `imported.report`; a runtime over `tolerance` makes the status 1."""
    from . import runtimes
    from .caffe_runner import measure_in
    from .opencv_check import check_result

    results = [result for result in imported.report.results.values() if not result.error and result.verified_with]
    for runtime in runtimes.available_runtimes():
        wanted = [result for result in results
                  if runtime.name not in result.runtimes and runtime.runs(result.caffe_types)]
        if not wanted:
            continue
        try:
            if runtime.is_caffe:  # one process for all files
                progress.note("verifying in %s: %d file%s" % (runtime.name, len(wanted), "" if len(wanted) == 1 else "s"))
                measured = measure_in(runtime, import_report.Report(tolerance, {result.file: result
                                                                                for result in wanted}))
            else:
                measured = {result.file: check_result(result)
                            for result in progress.each(wanted, "verifying in %s" % runtime.name, "file")}
        except ConversionError as error:
            error.args = ("%s (the files were written)" % error,)
            raise
        for result in wanted:
            result.add_runtime(runtime.name, measured[result.file], tolerance)
    for result in results:
        if list(result.runtimes) == [runtimes.RUNTIMES[runtimes.OPENCV].name]:
            imported.opencv_only[result.file] = runtimes.why_opencv_only(result.caffe_types)
        if not quiet:
            import_report.print_runtimes(result, tolerance, imported.opencv_only.get(result.file))
        for runtime, layer, error, run_in_words in result.failures(tolerance):
            if runtime != result.verified_with:  # whose failures the import stage reported itself
                sys.stderr.write("tf2caffe: verification failed: %s: layer '%s' has relative error %.3g in %s > "
                                 "tolerance %g (the files were written)\n" % (
                                     result.file, layer, error, run_in_words, tolerance))
        if result.verified is False:
            imported.status = max(imported.status, 1)


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
            debug: bool = False, per_layer: bool = True, report: Optional[str] = None,
            deploy: Optional[DeployOptions] = None, **export_options) -> ConvertReport:
    """export + import (verified in every runtime here that can run the net) of one model, and
    its report: `report` (default `out_dir/<stem>.report.json`, report.py's structure) and the
    page beside it (`.report.html`, report_html.py), with the reference input the page's
    snippets read. `per_layer=False` records no per-layer activations (very large models).
    `deploy`: as for `import_`; `export_options`: those of `export`."""

    target = get_profile(profile)
    refuse_what_cannot_work(backend, prototxt, deploy)  # before exporting
    try:
        h5 = export(src, out_dir, per_layer=per_layer, debug=debug, **export_options).h5
    except UnsupportedError as refused:
        if refused.partial_model is None:
            raise
        # The import side's refusals of the rest too: every layer at once, as `check` lists them.
        raise UnsupportedError(every_problem(refused, target), failures=refused.failures) from refused
    report = report or os.path.join(str(out_dir), os.path.splitext(os.path.basename(h5))[0] + ".report.json")
    imported = import_([h5], out_dir, prototxt=prototxt, profile=profile, tolerance=tolerance,
                       per_layer=per_layer, backend=backend, verify=verify, debug=debug, quiet=True,
                       report=report, deploy=deploy)
    converted = ConvertReport(h5, imported.status, tolerance, writer=imported.writer,
                              opencv_only=imported.opencv_only.get(h5))
    if imported.report is None:
        converted.status = imported.status or 2
        return converted
    converted.result = next(iter(imported.report.results.values()))  # the only file
    if converted.result.error:
        converted.status = imported.status or 2
        return converted
    converted.report, converted.html = report, os.path.splitext(report)[0] + ".html"
    write_html_report(converted.html, imported.report, converted.result)
    return converted


def write_html_report(path: str, imported: import_report.Report, result: import_report.FileResult) -> None:
    """The page, and the reference input its snippets read, next to the converted files."""
    from . import intermediate, report_html
    model = intermediate.read(result.file)
    try:
        report_html.write_reference_files(result, {name: model.reference_input(name) for name in model.inputs},
                                          os.path.dirname(result.prototxt))
        report_html.write(path, imported, result, [layer.name for layer in model.layers])
    finally:
        model.file.close()


def check(src, *, profile: str = DEFAULT_PROFILE, debug: bool = False, **export_options) -> CheckReport:
    """Every layer of SRC that cannot be converted, all at once; writes nothing."""
    from . import intermediate
    from .caffe import emit

    target = get_profile(profile)
    with tempfile.TemporaryDirectory(prefix="tf2caffe-check-") as folder:
        try:
            model = intermediate.read(export(src, folder, per_layer=False, debug=debug, **export_options).h5)
        except UnsupportedError as refused:
            if refused.partial_model is None:
                raise
            model = refused.partial_model
            problems = every_problem(refused, target)
        else:
            try:
                problems = emit.unsupported_layers(model, target)
            finally:
                model.file.close()
    return CheckReport(model.name, len(model.layers), target.name, problems)


def every_problem(refused: UnsupportedError, target) -> List[str]:
    """The export's refusals, and those the import side makes of the rest (`refused.partial_model`,
    the refused layers standing in as its inputs)."""
    from .caffe import emit
    return refused.problems + emit.unsupported_layers(refused.partial_model, target)
