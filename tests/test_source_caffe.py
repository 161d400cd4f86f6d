"""The second real Caffe, built from the PyPI sdist (tf2caffe/source_caffe.py): no chroot, its own venv.

Slow the first time on a machine: building it compiles Caffe (minutes, see the README); later
runs reuse the cached venv.  Runs tests/source_caffe_smoke.py in that venv's python; each layer
type of the target profiles is tested in it by tests/test_layer_types.py.
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tf2caffe import source_caffe

SMOKE = Path(__file__).resolve().parent / "source_caffe_smoke.py"
TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke():
    python = source_caffe.source_caffe_python()
    completed = subprocess.run([str(python), str(SMOKE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, env=dict(os.environ, GLOG_minloglevel="2"))
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_conv_relu_fc_matches_numpy(smoke):
    assert smoke["conv_relu_fc"] <= TOLERANCE


def test_layer_types_recorded_at_build_time(smoke):
    assert source_caffe.source_caffe_layer_types() == smoke["layer_types"]
    # What this fork adds over BVLC 1.0 for detection models and mobile nets ...
    assert {"ReLU6", "Permute", "Normalize", "PriorBox", "DetectionOutput", "Upsample"} <= set(smoke["layer_types"])
    assert "Interp" not in smoke["layer_types"]  # ... but its resize layer is BilinearInterpolate


def test_second_call_is_cached():
    source_caffe.ensure_source_caffe()
    start = time.monotonic()
    venv = source_caffe.ensure_source_caffe()
    assert time.monotonic() - start < 0.1
    assert source_caffe.built_source_caffe_python() == venv / "bin" / "python"
