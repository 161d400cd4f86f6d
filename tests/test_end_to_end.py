"""Whole models through the command line, as a user runs them: `tf2caffe export`, then
`tf2caffe import`, which verifies in every runtime here (OpenCV: an independent second reader).

- VGG-19 (tflearn, seeded random weights) at 112x112 into the hand-written
  architectures/vgg19.prototxt (fc6's input size follows from the input shape);
- the digits CNN (tflearn, trained at export time) into a generated prototxt, with labels.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

# VGG-19 and a trained CNN through export and the Caffe chroot.
pytestmark = [pytest.mark.chroot, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
LAYER_TOLERANCE = 1e-5


def tf2caffe(*args):
    completed = subprocess.run([sys.executable, "-m", "tf2caffe", *map(str, args)], cwd=str(PROJECT_ROOT),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               timeout=1200)
    assert completed.returncode == 0, "tf2caffe %s failed:\n%s\n%s" % (
        " ".join(map(str, args)), completed.stdout[-3000:], completed.stderr[-3000:])
    return completed


def convert(name, out, export_args=(), import_args=()):
    """Export and import architectures/<name>.py; returns the report entry and OpenCV's errors."""
    tf2caffe("export", "architectures/%s.py" % name, "-o", out, "--per-layer", *export_args)
    h5 = out / ("%s.h5" % name)
    assert h5.exists()
    report = out / "report.json"
    tf2caffe("import", h5, "-o", out, "--report", report, "--per-layer", *import_args)
    entry = json.loads(report.read_text())["results"][str(h5)]
    return entry, entry["runtimes"]["OpenCV"]["compared"]


def assert_verified(entry, opencv):
    assert entry["error"] is None and entry["verified"]
    assert entry["compared"] and set(opencv) == set(entry["compared"])
    for runtime, measured in entry["runtimes"].items():
        for name, errors in measured["compared"].items():
            assert errors["max_rel"] <= TOLERANCE, "%s: %s %r" % (runtime, name, errors)
    assert entry["per_layer"], "no layer was mapped"
    assert entry["first_over_layer_tolerance"] is None, entry["per_layer"]
    for kind in ("prototxt", "caffemodel"):
        assert Path(entry["files"][kind]).stat().st_size > 0


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("end_to_end")


def test_vgg19_into_the_hand_written_prototxt(out):
    folder = out / "vgg19"
    entry, opencv = convert("vgg19", folder, ["--input-shape", "1,112,112,3"],
                            ["--prototxt", PROJECT_ROOT / "architectures" / "vgg19.prototxt"])
    assert_verified(entry, opencv)
    assert entry["layers"]["caffe_types"].count("Convolution") == 16
    assert entry["layers"]["caffe_types"].count("InnerProduct") == 3
    assert "fc8" in [target["caffe_layer"] for target in entry["targets"].values()]
    # Every conv and fc layer of VGG-19 is compared on its own (through its ReLU's blob or its top).
    assert len(entry["per_layer"]) >= 19
    written = (folder / "vgg19.prototxt").read_text()
    assert "dim: 112" in written and "dim: 224" not in written


def test_trained_digits_model_keeps_its_accuracy(out):
    folder = out / "digits"
    entry, opencv = convert("digits", folder)
    assert_verified(entry, opencv)
    accuracy = entry["accuracy"]
    assert accuracy["count"] == 360
    assert accuracy["caffe"] == accuracy["tensorflow"] and accuracy["agreement"] == 1.0
    assert accuracy["tensorflow"] > 0.9  # it was trained: a broken export would show here
