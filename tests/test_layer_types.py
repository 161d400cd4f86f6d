"""Every Caffe layer type of every target profile, as one-layer nets (tests/one_layer_nets.py)
against numpy, in each runtime that has the type:

- OpenCV 4.x, in this process (unmarked: `make test-fast` runs it);
- Debian bullseye's pycaffe, in the Caffe chroot (marked chroot);
- the Caffe built from source (tf2caffe/source_caffe.py), in its venv (marked slow).

Also pins the profile table itself (tf2caffe/caffe/profiles.py): the types OpenCV fails stay
failing, `ssd` is exactly `bvlc` plus SSD-Caffe's four layers, and every `ssd` type is in the
source-built Caffe. The pycaffe runtimes' outputs are compared with OpenCV's too, so a type the
two share must agree (the ssd layers: within the same tolerance as against numpy).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from one_layer_nets import CASES, TOLERANCE, build, cases_of, compared_tops
from tf2caffe import source_caffe
from tf2caffe.caffe.native_backend import save
from tf2caffe.caffe.profiles import BVLC_INFERENCE, NOT_IN_OPENCV, PROFILES, SSD_EXTRAS
from tf2caffe.measure import relative_error

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "pycaffe_one_layer.py"

PROFILE_TYPES = sorted(set().union(*(profile.layers for profile in PROFILES.values())))
PROFILE_CASES = [name for name in CASES if build(name).caffe_type in PROFILE_TYPES]
# Cases of a profile type with parameters OpenCV computes wrongly (see profiles.py): tf2caffe
# must not emit them; this pins that OpenCV still gets them wrong.
WRONG_IN_OPENCV = {"Log/scale_shift": "OpenCV's Log computes ln(x), ignoring scale and shift"}
OPENCV_CASES = [name for name in PROFILE_CASES
                if build(name).caffe_type in PROFILES["opencv"].layers and name not in WRONG_IN_OPENCV]


def opencv_outputs(name: str, folder: Path):
    """The case's compared tops as OpenCV computes them (cv2.error if it cannot)."""
    case = build(name)
    prototxt, caffemodel = str(folder / "net.prototxt"), str(folder / "net.caffemodel")
    save(case.net, prototxt, caffemodel)
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    for blob, value in case.inputs.items():
        net.setInput(value, blob)
    # OpenCV fetches by layer. It folds a Split into one blob (a single output stands for all
    # its tops), and a MAX Pooling has its argmax mask as a second output.
    outputs = list(net.forwardAndRetrieve([case.fetched])[0])
    if case.caffe_type == "Split":
        outputs *= len(case.expected)
    outputs = outputs[:len(case.expected)]
    assert len(outputs) == len(case.expected), (name, [np.shape(o) for o in outputs])
    return compared_tops(case, dict(zip(case.expected, (np.asarray(o) for o in outputs))))


def errors_against_numpy(name: str, outputs) -> dict:
    expected = build(name).expected
    return {top: relative_error(outputs[top], expected[top]) for top in expected}


# ---------------------------------------------------------------- the table itself

def test_every_profile_type_and_every_refused_type_has_a_case():
    missing = [kind for kind in PROFILE_TYPES + sorted(NOT_IN_OPENCV) if not cases_of(kind)]
    assert not missing, missing


def test_ssd_is_bvlc_plus_the_four_ssd_layers():
    assert PROFILES["ssd"].layers - PROFILES["bvlc"].layers == {"Permute", "Normalize", "PriorBox",
                                                                "DetectionOutput"} == SSD_EXTRAS
    assert PROFILES["bvlc"].layers == BVLC_INFERENCE <= PROFILES["ssd"].layers


def test_opencv_profile_holds_bvlc_and_nothing_opencv_fails():
    assert PROFILES["bvlc"].layers <= PROFILES["opencv"].layers
    assert not PROFILES["opencv"].layers & set(NOT_IN_OPENCV)


# ---------------------------------------------------------------- OpenCV, in process

@pytest.mark.parametrize("name", OPENCV_CASES)
def test_opencv_computes_the_type(tmp_path, name):
    errors = errors_against_numpy(name, opencv_outputs(name, tmp_path))
    assert errors and max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("name", sorted(WRONG_IN_OPENCV))
def test_opencv_still_gets_these_parameters_wrong(tmp_path, name):
    errors = errors_against_numpy(name, opencv_outputs(name, tmp_path))
    assert max(errors.values()) > 1e-2, "%s is right in OpenCV now: %s" % (WRONG_IN_OPENCV[name], errors)


@pytest.mark.parametrize("kind", sorted(NOT_IN_OPENCV))
def test_opencv_still_fails_the_types_left_out(tmp_path, kind):
    for name in cases_of(kind):
        with pytest.raises(cv2.error) as failure:
            opencv_outputs(name, tmp_path)
        not_created = "Can't create layer" in str(failure.value)
        assert not_created == (NOT_IN_OPENCV[kind] == "cannot create the layer"), str(failure.value)


# ---------------------------------------------------------------- pycaffe runtimes

def run_pycaffe(command, folder: Path) -> dict:
    """Run every profile case in a pycaffe (`command` starts its python); {"layer_types", "ran",
    "outputs": {case: {top: array}}}."""
    out = folder / "outputs.npz"
    completed = subprocess.run(list(command) + [str(RUNNER), str(out)] + PROFILE_CASES, cwd=str(HERE.parent),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               env=dict(os.environ, GLOG_minloglevel="2"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    outputs = {}
    with np.load(str(out)) as saved:
        for key in saved.files:
            name, top = key.split("|")
            outputs.setdefault(name, {})[top] = saved[key]
    result["outputs"] = outputs
    return result


def check_runtime(result: dict, name: str, runtime: str, tmp_path: Path) -> None:
    """The case ran, matches numpy, and agrees with OpenCV where OpenCV computes the type."""
    if build(name).caffe_type not in result["layer_types"]:
        pytest.skip("%s has no %s layer" % (runtime, build(name).caffe_type))
    assert name in result["ran"], result["ran"]
    errors = errors_against_numpy(name, result["outputs"][name])
    assert max(errors.values()) <= TOLERANCE, errors
    if name in OPENCV_CASES:
        opencv = opencv_outputs(name, tmp_path)
        apart = {top: relative_error(value, opencv[top]) for top, value in result["outputs"][name].items()}
        assert max(apart.values()) <= TOLERANCE, "%s and OpenCV disagree: %s" % (runtime, apart)


@pytest.fixture(scope="module")
def bullseye(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bullseye")
    command = [sys.executable, "-m", "tf2caffe.environments", "caffe-run", "--bind", str(folder), "--", "python3"]
    return run_pycaffe(command, folder)


@pytest.fixture(scope="module")
def source_built(tmp_path_factory):
    return run_pycaffe([str(source_caffe.source_caffe_python())], tmp_path_factory.mktemp("source"))


@pytest.mark.chroot
def test_bullseye_pycaffe_has_every_bvlc_type(bullseye):
    assert PROFILES["bvlc"].layers <= set(bullseye["layer_types"])


@pytest.mark.chroot
@pytest.mark.parametrize("name", PROFILE_CASES)
def test_bullseye_pycaffe_computes_the_type(bullseye, name, tmp_path):
    check_runtime(bullseye, name, "bullseye's pycaffe", tmp_path)


@pytest.mark.slow
def test_source_caffe_has_every_ssd_type(source_built):
    assert PROFILES["ssd"].layers <= set(source_caffe.source_caffe_layer_types()) == set(source_built["layer_types"])


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILE_CASES)
def test_source_caffe_computes_the_type(source_built, name, tmp_path):
    check_runtime(source_built, name, "the source-built Caffe", tmp_path)
