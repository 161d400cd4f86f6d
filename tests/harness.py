"""Convert small Keras models end to end and measure them in pycaffe and OpenCV.

    results = convert_keras_batch({"conv_same": model_a, "conv_valid": model_b}, tmp_path)
    for result in results.values():
        assert_exact(result)

Each model is exported in-process, all of them are imported by ONE `tf2caffe import` (one Caffe
subprocess: starting the chroot and pycaffe costs about a second), then each `.caffemodel` is run
through OpenCV's independent Caffe reader. `convert_h5_batch` does the import and OpenCV steps for
intermediates already written (graph-level exports). TensorFlow-side only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tf2caffe import intermediate, opencv_check
from tf2caffe.report import FileResult
from tf2caffe.caffe import verify
from tf2caffe.measure import within

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `make test-fast` sets native: the conversions then run without the Caffe chroot (written
# natively, measured in OpenCV only); unset, `tf2caffe import` chooses (pycaffe where it exists).
TEST_BACKEND = os.environ.get("TF2CAFFE_TEST_BACKEND")


class Result:
    """One converted model: errors per compared layer (pycaffe, OpenCV), per mapped layer
    (pycaffe), the prototxt and the Caffe layer types it uses; `error` when it did not convert."""

    def __init__(self, name: str, h5: Path):
        self.name = name
        self.h5 = h5
        self.error: Optional[str] = None
        self.pycaffe: Dict[str, float] = {}
        self.opencv: Dict[str, float] = {}
        self.per_layer: Dict[str, float] = {}
        # runtime -> layer -> {"caffe", "tensorflow"}: errors against the float64 truth, where
        # the export computed one
        self.float64: Dict[str, Dict[str, Dict[str, float]]] = {"pycaffe": {}, "OpenCV": {}}
        self.layer_order: List[str] = []
        self.prototxt = ""
        self.caffe_types: List[str] = []
        self.accuracy: Optional[Dict[str, float]] = None
        self.files: Dict[str, str] = {}
        self.report: Dict = {}

    def __repr__(self):
        return "Result(%r, pycaffe=%r, opencv=%r, error=%r)" % (
            self.name, self.pycaffe, self.opencv, self.error)


def import_files(h5_files: List[Path], out_dir: Path, per_layer: bool = True,
                 profile: str = "bvlc", extra: List[str] = ()) -> subprocess.CompletedProcess:
    """Run `tf2caffe import` (the real CLI, in a subprocess) on all files with a JSON report at
    out_dir/report.json."""
    command = [sys.executable, "-m", "tf2caffe", "import", *map(str, h5_files), "-o", str(out_dir),
               "--profile", profile, "--report", str(out_dir / "report.json"), *extra]
    if TEST_BACKEND:
        command += ["--backend", TEST_BACKEND]
    if per_layer:
        command.append("--per-layer")
    return subprocess.run(command, cwd=str(PROJECT_ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def convert_keras_batch(models: Dict[str, object], tmp_dir, per_layer: bool = True,
                        profile: str = "bvlc", seed: int = 0) -> Dict[str, Result]:
    """Export, import (one Caffe subprocess for all) and check in OpenCV each named Keras model."""
    from tf2caffe.export.keras import model_to_intermediate  # imports TensorFlow

    return convert_intermediate_batch(
        {name: model_to_intermediate(keras_model, name, per_layer=per_layer, seed=seed)
         for name, keras_model in models.items()}, tmp_dir, per_layer, profile)


def convert_intermediate_batch(models: Dict[str, intermediate.Model], tmp_dir, per_layer: bool = True,
                               profile: str = "bvlc") -> Dict[str, Result]:
    """Like `convert_keras_batch` for intermediate models built by hand (layers no Keras layer
    exports): write each, import all in one Caffe subprocess, then OpenCV."""
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
    tmp_dir/report.json, then check each in OpenCV."""
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
    result.pycaffe = {name: errors["max_rel"] for name, errors in entry["compared"].items()}
    result.per_layer = dict(entry["per_layer"])
    result.float64["pycaffe"] = dict(entry.get("float64") or {})
    result.caffe_types = list(entry["layers"]["caffe_types"])
    result.accuracy = entry.get("accuracy")
    result.files = dict(entry["files"])
    result.prototxt = Path(result.files["prototxt"]).read_text()
    try:
        opencv = opencv_check.check_result(FileResult.from_json(entry))
    except Exception as error:  # OpenCV refusing the model is a test failure, not a crash
        result.error = "OpenCV: %s: %s" % (type(error).__name__, " ".join(str(error).split()))
        return
    result.opencv = {name: errors["max_rel"] for name, errors in opencv.items()}
    result.float64["OpenCV"] = {name: errors["float64"] for name, errors in opencv.items() if "float64" in errors}


def assert_exact(result: Result, tol: float = 1e-4, layer_tol: float = 1e-5) -> None:
    """The model converted, and every compared layer (pycaffe and OpenCV) and every mapped layer
    (pycaffe) is within tolerance (judged against the float64 truth where the export computed
    one: measure.within); the message names the first layer that diverges."""
    assert result.error is None, "%s: %s" % (result.name, result.error)
    assert result.pycaffe, "%s: nothing was compared in pycaffe" % result.name
    assert result.opencv, "%s: nothing was compared in OpenCV" % result.name
    diverging = verify.first_over(result.per_layer, result.layer_order, layer_tol, result.float64["pycaffe"])
    assert diverging is None, "%s: layer '%s' diverges in pycaffe: relative error %.3g > %g (%s)" % (
        result.name, diverging, result.per_layer[diverging], layer_tol, _table(result.per_layer))
    for backend, errors in (("pycaffe", result.pycaffe), ("OpenCV", result.opencv)):
        for name, value in errors.items():
            float64 = result.float64[backend].get(name)
            assert within(value, tol, float64), "%s: %s relative error %.3g > %g on layer '%s'%s (per layer: %s)" % (
                result.name, backend, value, tol, name,
                " (against the float64 truth: %(caffe).3g, TensorFlow float32 %(tensorflow).3g)" % float64
                if float64 else "", _table(result.per_layer))


def _table(errors: Dict[str, float]) -> str:
    return ", ".join("%s=%.2g" % item for item in errors.items())
