"""Convert small Keras models end to end and measure them in every runtime here.

    results = convert_keras_batch({"conv_same": model_a, "conv_valid": model_b}, tmp_path)
    for result in results.values():
        assert_exact(result)

Each model is exported in-process, all of them are imported by ONE `tf2caffe import` (one Caffe
subprocess: starting the chroot and pycaffe costs about a second), which verifies each in every
runtime here that has its layer types (tf2caffe/runtimes.py: both Caffes, OpenCV's independent
reader). `convert_h5_batch` does the import for intermediates already written (graph-level
exports). TensorFlow-side only.

TF2CAFFE_CAFFE chooses the Caffe that writes the nets, as it does for `tf2caffe`: bullseye (the
default), source (`make test` runs the handler and zoo tests so too), or none (`make test-fast`:
written natively, measured in OpenCV only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tf2caffe import intermediate, report, runtimes
from tf2caffe.caffe import verify
from tf2caffe.measure import within

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The Caffe the run asks to write with; None: tf2caffe's default.
CAFFE = os.environ.get(runtimes.CAFFE_ENV) or None
CAFFE_NAMES = {runtime.name for runtime in runtimes.RUNTIMES.values() if runtime.is_caffe}


class Result:
    """One converted model: per runtime it was verified in, the errors per compared layer and per
    mapped layer; the prototxt and the Caffe layer types it uses; `error` when it did not convert."""

    def __init__(self, name: str, h5: Path):
        self.name = name
        self.h5 = h5
        self.error: Optional[str] = None
        self.verified_with: Optional[str] = None  # the runtime that wrote it
        self.runtimes: Dict[str, Dict[str, float]] = {}  # runtime -> compared layer -> relative error
        self.per_layer_in: Dict[str, Dict[str, float]] = {}  # runtime -> mapped layer -> relative error
        self.per_layer: Dict[str, float] = {}  # the writer's
        # runtime -> output -> relative error as a user runs the net (OpenCV: default settings,
        # fusion on, only the outputs asked for); runtime -> the layers it fused
        self.deployed: Dict[str, Dict[str, float]] = {}
        self.fused: Dict[str, List[List[str]]] = {}
        # runtime -> layer -> {"caffe", "tensorflow"}: errors against the float64 truth, where the
        # export computed one
        self.float64: Dict[str, Dict[str, Dict[str, float]]] = {}
        self.layer_order: List[str] = []
        self.prototxt = ""
        self.caffe_types: List[str] = []
        self.accuracy: Optional[Dict[str, float]] = None
        self.files: Dict[str, str] = {}
        self.report: Dict = {}

    def __repr__(self):
        return "Result(%r, runtimes=%r, error=%r)" % (self.name, self.runtimes, self.error)


def import_files(h5_files: List[Path], out_dir: Path, per_layer: bool = True,
                 profile: str = "bvlc", extra: List[str] = ()) -> subprocess.CompletedProcess:
    """Run `tf2caffe import` (the real CLI, in a subprocess) on all files with a JSON report at
    out_dir/report.json."""
    command = [sys.executable, "-m", "tf2caffe", "import", *map(str, h5_files), "-o", str(out_dir),
               "--profile", profile, "--report", str(out_dir / "report.json"), *extra]
    if per_layer:
        command.append("--per-layer")
    return subprocess.run(command, cwd=str(PROJECT_ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def convert_keras_batch(models: Dict[str, object], tmp_dir, per_layer: bool = True,
                        profile: str = "bvlc", seed: int = 0) -> Dict[str, Result]:
    """Export and import (one Caffe subprocess for all, verified in every runtime) each named Keras model."""
    from tf2caffe.export.keras import model_to_intermediate  # imports TensorFlow

    return convert_intermediate_batch(
        {name: model_to_intermediate(keras_model, name, per_layer=per_layer, seed=seed)
         for name, keras_model in models.items()}, tmp_dir, per_layer, profile)


def convert_intermediate_batch(models: Dict[str, intermediate.Model], tmp_dir, per_layer: bool = True,
                               profile: str = "bvlc") -> Dict[str, Result]:
    """Like `convert_keras_batch` for intermediate models built by hand (layers no Keras layer
    exports): write each, import all in one Caffe subprocess."""
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, model in models.items():
        files[name] = tmp_dir / ("%s.h5" % name)
        intermediate.write(str(files[name]), model)
    return convert_h5_batch(files, tmp_dir, per_layer, profile)


def convert_h5_batch(files: Dict[str, Path], tmp_dir, per_layer: bool = True,
                     profile: str = "bvlc", extra: List[str] = ()) -> Dict[str, Result]:
    """Import each named, already written `.h5` (with per-layer activations if `per_layer`) in
    ONE Caffe subprocess (`extra`: more import options, e.g. --prototxt), report at
    tmp_dir/report.json."""
    tmp_dir = Path(tmp_dir).resolve()  # report keys are the paths the chroot sees: real ones
    tmp_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in files.items():
        result = results[name] = Result(name, Path(path).resolve())
        model = intermediate.read(str(result.h5))
        result.layer_order = [layer.name for layer in model.layers]
        model.file.close()
    completed = import_files([result.h5 for result in results.values()], tmp_dir, per_layer, profile,
                             extra)
    entries = _read_report(tmp_dir / "report.json")
    for result in results.values():
        entry = entries.get(str(result.h5))
        if entry is None:
            result.error = "no report from tf2caffe import (exit %d): %s" % (
                completed.returncode, completed.stderr.strip() or completed.stdout.strip())
            continue
        _fill(result, entry)
    return results


def _read_report(path: Path) -> Dict[str, Dict]:
    if not path.exists():
        return {}
    return json.loads(path.read_text())["results"]


def _fill(result: Result, entry: Dict) -> None:
    result.report = entry
    result.error = entry.get("error")
    if result.error:
        return
    result.verified_with = entry["verified_with"]
    result.runtimes = {runtime: {name: errors["max_rel"] for name, errors in measured["compared"].items()}
                       for runtime, measured in entry["runtimes"].items()}
    result.per_layer_in = {runtime: dict(measured["per_layer"]) for runtime, measured in entry["runtimes"].items()}
    result.per_layer = dict(entry["per_layer"])
    result.deployed = {runtime: {name: errors["max_rel"] for name, errors in measured["deployed"].items()}
                       for runtime, measured in entry["runtimes"].items() if measured["deployed"]}
    result.fused = {runtime: measured["fused"] for runtime, measured in entry["runtimes"].items()}
    result.float64 = {runtime: dict(measured.get("float64") or {}) for runtime, measured in entry["runtimes"].items()}
    result.caffe_types = list(entry["layers"]["caffe_types"])
    result.accuracy = entry.get("accuracy")
    result.files = dict(entry["files"])
    result.prototxt = Path(result.files["prototxt"]).read_text()


def assert_exact(result: Result, tol: float = 1e-4, layer_tol: float = 1e-5) -> None:
    """The model converted, was written by the Caffe this run asks for (when it has the model's
    layer types) and verified in every runtime here that can run it, OpenCV included; in each,
    every compared layer is within `tol`, OpenCV's outputs as deployed (default settings: layer
    fusion on) too, and in each Caffe (and the writer's runtime) every
    mapped layer within `layer_tol` (judged against the float64 truth where the export computed
    one: measure.within); the message names the first layer that diverges."""
    assert result.error is None, "%s: %s" % (result.name, result.error)
    can_run = [runtime.name for runtime in runtimes.available_runtimes() if runtime.runs(result.caffe_types)]
    assert "OpenCV" in can_run and sorted(result.runtimes) == sorted(can_run), (
        "%s: verified in %s, not in every runtime that can run it: %s" % (result.name, list(result.runtimes), can_run))
    if CAFFE != runtimes.NO_CAFFE:
        wanted = runtimes.caffe_order()[0]
        if wanted.runs(result.caffe_types):
            assert result.verified_with == wanted.name, "%s: written by %s, not %s" % (
                result.name, result.verified_with, wanted.name)
    assert "OpenCV" in result.deployed, "%s: OpenCV did not run the net as deployed" % result.name
    for runtime, errors in result.deployed.items():
        for name, value in errors.items():
            assert report.passes(result.report["runtimes"][runtime], name, tol, "deployed"), (
                "%s: %s as deployed (default settings) has relative error %.3g > %g on output '%s' "
                "(fused: %s; with fusion off: %s)" % (result.name, runtime, value, tol, name, result.fused[runtime],
                                                      result.runtimes[runtime].get(name)))
    for runtime, errors in result.runtimes.items():
        # Layer by layer in every Caffe and in the writer's runtime (OpenCV, for the native writer):
        # OpenCV's Winograd convolutions add about 5e-6 each, so deep nets pass its logits only.
        per_layer = result.per_layer_in[runtime] if runtime in CAFFE_NAMES or runtime == result.verified_with else {}
        float64 = result.float64.get(runtime, {})
        diverging = verify.first_over(per_layer, result.layer_order, layer_tol, float64)
        assert diverging is None, "%s: layer '%s' diverges in %s: relative error %.3g > %g (%s)" % (
            result.name, diverging, runtime, per_layer[diverging], layer_tol, _table(per_layer))
        for name, value in errors.items():
            truth = float64.get(name)
            assert within(value, tol, truth), "%s: %s relative error %.3g > %g on layer '%s'%s (per layer: %s)" % (
                result.name, runtime, value, tol, name,
                " (against the float64 truth: %(caffe).3g, TensorFlow float32 %(tensorflow).3g)" % truth
                if truth else "", _table(per_layer))


def _table(errors: Dict[str, float]) -> str:
    return ", ".join("%s=%.2g" % item for item in errors.items())
