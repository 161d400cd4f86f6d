"""The import report: the numbers of one `tf2caffe import` run, per intermediate file.

Specified in docs/report-format.md (versioned). This is the one module that knows its JSON keys:
the import stage builds `FileResult`s and `write`s them (`--report R.json`), `tf2caffe convert`
and the OpenCV check `read` them back. Runs on both sides (Python 3.9 in the Caffe chroot).
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, TextIO, Tuple

from .atomic import atomic_file
from .errors import ConversionError
from .measure import FLOAT32_NOISE_MULTIPLE, LAYER_TOLERANCE, within

FORMAT_NAME = "tf2caffe-import-report"
FORMAT_VERSION = 3  # 2: `runtimes`; 3: `deployed`/`fused` per runtime, `source`, `profile`, `deployment`, `layer_table`,
# `deploy_options`


def layer_error(max_abs: float, max_rel: float) -> Dict[str, float]:
    """One compared layer's errors, as the report holds them."""
    return {"max_abs": max_abs, "max_rel": max_rel}


def runtime_errors(compared: Dict[str, Dict[str, float]], per_layer: Dict[str, float],
                   float64: Optional[Dict[str, Dict[str, float]]] = None,
                   deployed: Optional[Dict[str, Dict[str, float]]] = None,
                   fused: Optional[List[List[str]]] = None) -> Dict[str, Dict]:
    """What one runtime measured of a converted file: its compared layers' `layer_error`s, its
    mapped layers' relative errors ({} without per-layer activations) and, where the export
    computed the float64 truth, {layer: {"caffe", "tensorflow"}}: this runtime's and TensorFlow
    float32's relative errors against it (verify.float64_errors; {} without). A runtime whose
    run with every compared blob fetched is not the run a user makes (OpenCV: fetching a blob
    turns its layer fusion off) also measured the net as deployed: `deployed`, the model
    outputs' `layer_error`s with its default settings, and `fused`, the groups of Caffe layers
    it fused there."""
    return {"compared": compared, "per_layer": per_layer, "float64": float64 or {},
            "deployed": deployed or {}, "fused": fused or []}


def passes(errors: Dict[str, Dict], layer: str, tolerance: float, kind: str = "compared") -> bool:
    """One runtime's verdict on one compared layer (measure.within, with the float64 truth);
    `kind` "deployed": on one output as deployed, within `tolerance` of TensorFlow's float32
    output or, where the float64 truth judged the run with fusion off, no further from it than
    FLOAT32_NOISE_MULTIPLE times that run (the truth was measured on that run only)."""
    error = errors[kind][layer]["max_rel"]
    truth = errors.get("float64", {}).get(layer)
    if kind == "compared":
        return within(error, tolerance, truth)
    fusion_off = errors["compared"].get(layer)
    return error <= tolerance or bool(truth and fusion_off and passes(errors, layer, tolerance) and
                                      error <= FLOAT32_NOISE_MULTIPLE * fusion_off["max_rel"])


def runtime_passes(errors: Dict[str, Dict], tolerance: float) -> bool:
    """Every compared layer, and every output as deployed, of one runtime within `tolerance`."""
    return all(passes(errors, layer, tolerance, kind) for kind in ("compared", "deployed")
               for layer in errors.get(kind, {}))


def fused_with(errors: Dict[str, Dict], blob: str) -> List[str]:
    """The Caffe layers a runtime fused together with the one writing `blob` ([] if none)."""
    return next((group for group in errors.get("fused", []) if blob in group), [])


def max_rel(errors: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """layer -> its relative error, from `layer_error`s."""
    return {name: value["max_rel"] for name, value in errors.items()}


def worst(errors: Dict[str, Dict[str, float]]) -> Tuple[Optional[str], float]:
    """(layer, max relative error) over compared layers' `layer_error`s."""
    relative = max_rel(errors)
    if not relative:
        return None, 0.0
    name = max(relative, key=relative.get)
    return name, relative[name]


def accuracy(count: int, caffe: float, tensorflow: float, agreement: float) -> Dict[str, float]:
    """Top-1 accuracy of both runtimes on the labelled reference inputs, and how often they agree."""
    return {"count": count, "caffe": caffe, "tensorflow": tensorflow, "agreement": agreement}


def input_entry(tf_layer: str, blob: str, shape: List[int], dtype: str, channel_order: Optional[str],
                value_range, preprocessing_inside: List[Dict], left_to_user: str) -> Dict:
    """One input of the net as a user feeds it (caffe/deployed_net.py)."""
    return {"tf_layer": tf_layer, "blob": blob, "shape": list(shape), "dtype": dtype,
            "channel_order": channel_order, "value_range": value_range,
            "preprocessing_inside": preprocessing_inside, "left_to_user": left_to_user}


def output_entry(tf_name: str, tf_layer: str, blob: str, shape: List[int], holds: str,
                 logits_blob: Optional[str]) -> Dict:
    """One output: its TensorFlow name, the Caffe blob holding it, what it holds."""
    return {"tf_name": tf_name, "tf_layer": tf_layer, "blob": blob, "shape": list(shape), "holds": holds,
            "logits_blob": logits_blob}


def layer_row(tf_layer: str, tf_type: str, tf_shape: List[int], caffe_layers: List[str], caffe_types: List[str],
              blob: Optional[str], blob_shape: Optional[List[int]]) -> Dict:
    """One TensorFlow layer and the Caffe layers emitted for it."""
    return {"tf_layer": tf_layer, "tf_type": tf_type, "tf_shape": list(tf_shape), "caffe_layers": caffe_layers,
            "caffe_types": caffe_types, "blob": blob, "blob_shape": blob_shape}


def source_entry(path: str, framework: str, framework_version: str) -> Dict:
    return {"path": path, "framework": framework, "version": framework_version}


@dataclass
class FileResult:
    """One intermediate file's outcome. A file that did not convert has only `file` and `error`."""
    file: str
    error: Optional[str] = None
    model: str = ""
    backend: str = ""
    # The runtime that wrote and first measured it (runtimes.py names: "pycaffe-bullseye",
    # "pycaffe-source", "OpenCV"); None: not verified (--no-verify)
    verified_with: Optional[str] = None
    tensorflow_layers: int = 0
    caffe_layers: int = 0
    caffe_types: List[str] = field(default_factory=list)  # one per Caffe layer
    inputs: Dict[str, str] = field(default_factory=dict)  # TF input layer -> Caffe input blob
    prototxt: str = ""
    caffemodel: str = ""
    compared: Dict[str, Dict[str, float]] = field(default_factory=dict)  # layer -> layer_error
    per_layer: Dict[str, float] = field(default_factory=dict)  # mapped layer -> relative error
    first_over_layer_tolerance: Optional[str] = None
    accuracy: Optional[Dict[str, float]] = None
    targets: Dict[str, Dict] = field(default_factory=dict)  # verify.Target.to_json per layer
    # runtime -> runtime_errors, for every runtime the net was measured in (verified_with first:
    # its numbers are also `compared` and `per_layer`)
    runtimes: Dict[str, Dict] = field(default_factory=dict)
    verified: Optional[bool] = None  # every compared layer within tolerance in every runtime
    worst_layer: Optional[str] = None
    worst_max_rel: Optional[float] = None
    seconds: Optional[float] = None
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    # caffe.deploy.DeployOptions.to_json plus "applied": what its passes changed, a line each
    deploy_options: Dict = field(default_factory=dict)
    source: Dict = field(default_factory=dict)  # source_entry
    profile: str = ""
    # {"inputs": [input_entry], "outputs": [output_entry]}
    deployment: Dict[str, List[Dict]] = field(default_factory=dict)
    layer_table: List[Dict] = field(default_factory=list)  # layer_row per TensorFlow layer

    def to_json(self) -> Dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file, "model": self.model, "error": None, "backend": self.backend,
            "verified_with": self.verified_with,
            "layers": {"tensorflow": self.tensorflow_layers, "caffe": self.caffe_layers,
                       "caffe_types": self.caffe_types},
            "inputs": self.inputs, "files": {"prototxt": self.prototxt, "caffemodel": self.caffemodel},
            "compared": self.compared, "per_layer": self.per_layer,
            "first_over_layer_tolerance": self.first_over_layer_tolerance, "accuracy": self.accuracy,
            "targets": self.targets, "runtimes": self.runtimes, "verified": self.verified,
            "worst": None if self.worst_max_rel is None else {"layer": self.worst_layer,
                                                               "max_rel": self.worst_max_rel},
            "seconds": self.seconds, "stage_seconds": self.stage_seconds, "source": self.source,
            "profile": self.profile, "deployment": self.deployment, "layer_table": self.layer_table,
            "deploy_options": self.deploy_options}

    def add_runtime(self, name: str, errors: Dict[str, Dict], tolerance: float) -> None:
        """Another runtime's `runtime_errors`; `verified` stays true only if it is within `tolerance`."""
        self.runtimes[name] = errors
        self.verified = bool(self.verified) and runtime_passes(errors, tolerance)

    def failures(self, tolerance: float) -> List[Tuple[str, str, float, str]]:
        """(runtime, compared layer, relative error, the run in words) over `tolerance`, in every
        runtime, as deployed too (`as_deployed`)."""
        failed = []
        for runtime, errors in self.runtimes.items():
            for kind in ("compared", "deployed"):
                for layer, error in max_rel(errors.get(kind, {})).items():
                    if not passes(errors, layer, tolerance, kind):
                        failed.append((runtime, layer, error,
                                       runtime if kind == "compared" else self.as_deployed(runtime, layer)))
        return failed

    def as_deployed(self, runtime: str, layer: str) -> str:
        """How a failure as deployed names its runtime: with the Caffe layers it fused at that
        output, and the output's error with fusion off (where every layer is fetched)."""
        errors = self.runtimes[runtime]
        group = fused_with(errors, self.targets.get(layer, {}).get("blob", layer))
        off = errors["compared"].get(layer)
        return "%s as deployed (default settings%s%s)" % (
            runtime, "; it fuses %s" % " + ".join(group) if group else "",
            "; %.3g with its layer fusion off" % off["max_rel"] if off else "")

    def max_errors(self) -> Dict[str, Tuple[str, float]]:
        """runtime -> (its compared layer with the largest relative error, that error)."""
        return {name: worst(errors["compared"]) for name, errors in self.runtimes.items()}

    @classmethod
    def from_json(cls, data: Dict) -> "FileResult":
        if data.get("error") is not None:
            return cls(data["file"], data["error"])
        layers, files, worst_entry = data["layers"], data["files"], data.get("worst") or {}
        return cls(
            file=data["file"], model=data["model"], backend=data["backend"],
            verified_with=data["verified_with"], tensorflow_layers=layers["tensorflow"],
            caffe_layers=layers["caffe"], caffe_types=list(layers["caffe_types"]), inputs=dict(data["inputs"]),
            prototxt=files["prototxt"], caffemodel=files["caffemodel"], compared=dict(data["compared"]),
            per_layer=dict(data["per_layer"]), first_over_layer_tolerance=data["first_over_layer_tolerance"],
            accuracy=data["accuracy"], targets=dict(data["targets"]), verified=data["verified"],
            # version 1 measured in one runtime only
            runtimes=dict(data["runtimes"]) if "runtimes" in data else (
                {data["verified_with"]: runtime_errors(dict(data["compared"]), dict(data["per_layer"]))}
                if data["verified_with"] else {}),
            worst_layer=worst_entry.get("layer"), worst_max_rel=worst_entry.get("max_rel"),
            seconds=data.get("seconds"), stage_seconds=dict(data.get("stage_seconds") or {}),
            # version 3 added these
            source=dict(data.get("source") or {}), profile=data.get("profile", ""),
            deployment=dict(data.get("deployment") or {}), layer_table=list(data.get("layer_table") or []),
            deploy_options=dict(data.get("deploy_options") or {}))


@dataclass
class Report:
    """A whole report: the compared layers' tolerance, and a result per file (in input order)."""
    tolerance: float
    results: Dict[str, FileResult]

    def to_json(self) -> Dict:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tolerance": self.tolerance,
                "results": {path: result.to_json() for path, result in self.results.items()}}

    @classmethod
    def from_json(cls, data: Dict, where: str) -> "Report":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ConversionError("%s: not a tf2caffe import report" % where)
        version = data.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise ConversionError("%s: report format version %s is newer than this tf2caffe reads (%d)" % (
                where, version, FORMAT_VERSION))
        return cls(data["tolerance"], {path: FileResult.from_json(entry)
                                       for path, entry in data["results"].items()})


def write(path: str, report: Report) -> None:
    with atomic_file(path, failure="cannot write the report", mode="w") as f:
        json.dump(report.to_json(), f, indent=1, sort_keys=True)


def read(path: str) -> Report:
    with open(path) as f:
        return Report.from_json(json.load(f), path)


def print_file_result(result: FileResult, tolerance: float, out: Optional[TextIO] = None) -> None:
    """The import stage's lines for one converted file."""
    out = out or sys.stdout
    types = Counter(result.caffe_types)
    out.write("%s -> %s, %s\n" % (result.file, result.prototxt, result.caffemodel))
    out.write("  layers: %d TensorFlow -> %d Caffe (%s)\n" % (
        result.tensorflow_layers, result.caffe_layers,
        ", ".join("%s %d" % item for item in sorted(types.items()))))
    if result.verified is None:
        out.write("  not verified (--no-verify)\n")
        out.flush()
        return
    float64 = result.runtimes.get(result.verified_with, {}).get("float64", {})
    truth = " %24s" % "vs float64: Caffe, TF" if float64 else ""
    out.write("  %-32s %12s %12s%s (%s)\n" % ("compared layer", "max abs", "max rel", truth, result.verified_with))
    for name, errors in result.compared.items():
        out.write("  %-32s %12.3g %12.3g%s\n" % (name, errors["max_abs"], errors["max_rel"],
                                                _float64_columns(float64.get(name))))
    if result.per_layer:
        out.write("  %-32s %12s%s\n" % ("mapped layer (%s)" % result.verified_with, "max rel", truth))
        for name, error in result.per_layer.items():
            out.write("  %-32s %12.3g%s\n" % (name, error, _float64_columns(float64.get(name))))
        out.write("  first layer over %g: %s\n" % (LAYER_TOLERANCE, result.first_over_layer_tolerance or "none"))
    if result.accuracy:
        out.write("  top-1 accuracy on %d labelled inputs: Caffe %.4f, TensorFlow %.4f, agreement %.4f\n" % (
            result.accuracy["count"], result.accuracy["caffe"], result.accuracy["tensorflow"],
            result.accuracy["agreement"]))
    out.write("  %s: max relative error %.3g (%s), tolerance %g\n" % (
        "verified" if result.verified else "VERIFICATION FAILED", result.worst_max_rel, result.worst_layer,
        tolerance))
    out.flush()


def _float64_columns(errors: Optional[Dict[str, float]]) -> str:
    return " %11.3g, %10.3g" % (errors["caffe"], errors["tensorflow"]) if errors else ""


def print_runtimes(result: FileResult, tolerance: float, opencv_only: Optional[str] = None,
                   out: Optional[TextIO] = None) -> None:
    """After the import stage's lines: every runtime the file was verified in, with its largest
    error; or why OpenCV alone."""
    out = out or sys.stdout
    errors = ", ".join("%s %.3g" % (runtime, error) for runtime, (_, error) in result.max_errors().items())
    if opencv_only:
        out.write("%s: verified in OpenCV only: %s; max relative error %s (tolerance %g)\n" % (
            result.file, opencv_only, "%.3g" % result.max_errors()["OpenCV"][1], tolerance))
    else:
        out.write("%s: verified in %s (tolerance %g)\n" % (result.file, errors, tolerance))
    out.flush()
