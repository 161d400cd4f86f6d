"""Bad input to the command line, as a user meets it: each is one line on stderr naming the
file/layer, a non-zero exit, no traceback, no .caffemodel left and no earlier output clobbered."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import intermediate_models
from intermediate_models import MLP_PROTOTXT

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EARLIER = b"an earlier conversion"


def tf2caffe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2caffe", *map(str, args)], cwd=str(PROJECT_ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)


# TensorFlow's start-up notice, printed whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} .*\] oneDNN custom operations)")


def assert_one_line_error(completed, *fragments) -> str:
    assert completed.returncode != 0, completed.stdout
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip() and not TENSORFLOW_BANNER.match(line)]
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("tf2caffe: error: "), completed.stderr
    for fragment in fragments:
        assert fragment in lines[0], completed.stderr
    return lines[0]


@pytest.fixture
def out(tmp_path):
    """An output folder holding an earlier conversion that a failed one must not touch."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mlp.caffemodel").write_bytes(EARLIER)
    return folder


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["mlp.caffemodel"]
    assert (out / "mlp.caffemodel").read_bytes() == EARLIER


@pytest.fixture
def mlp_file(tmp_path):
    return intermediate_models.write(intermediate_models.mlp(), tmp_path)


def prototxt(tmp_path, text) -> Path:
    path = tmp_path / "hand.prototxt"
    path.write_text(text)
    return path


def test_missing_hdf5_file(tmp_path, out):
    completed = tf2caffe("import", tmp_path / "mlp.h5", "-o", out)
    assert_one_line_error(completed, "mlp.h5: no such file")
    assert_untouched(out)


def test_truncated_hdf5_file(mlp_file, out):
    data = Path(mlp_file).read_bytes()
    Path(mlp_file).write_bytes(data[:len(data) // 2])
    assert_one_line_error(tf2caffe("import", mlp_file, "-o", out), mlp_file, "truncated or corrupt")
    assert_untouched(out)


def test_layer_missing_from_the_hdf5_file(mlp_file, out, tmp_path):
    hand = prototxt(tmp_path, MLP_PROTOTXT + 'layer { name: "fc3" type: "InnerProduct" bottom: "fc2" '
                    'top: "fc3" inner_product_param { num_output: 2 } }\n')
    completed = tf2caffe("import", mlp_file, "-o", out, "--prototxt", hand)
    assert_one_line_error(completed, "hand.prototxt", "'fc3'", mlp_file)
    assert_untouched(out)


def test_layer_missing_from_the_prototxt(mlp_file, out, tmp_path):
    hand = prototxt(tmp_path, MLP_PROTOTXT.replace('name: "fc2"', 'name: "logits"'))
    completed = tf2caffe("import", mlp_file, "-o", out, "--prototxt", hand)
    assert_one_line_error(completed, "hand.prototxt", "fc2")
    assert_untouched(out)


def test_shape_that_does_not_match_the_prototxt(mlp_file, out, tmp_path):
    hand = prototxt(tmp_path, MLP_PROTOTXT.replace("num_output: 3", "num_output: 10"))
    completed = tf2caffe("import", mlp_file, "-o", out, "--prototxt", hand)
    assert_one_line_error(completed, "fc2: weight shape (3, 5) in the HDF5 file vs (10, 5) in hand.prototxt")
    assert_untouched(out)


def test_missing_prototxt(mlp_file, out, tmp_path):
    completed = tf2caffe("import", mlp_file, "-o", out, "--prototxt", tmp_path / "vgg19.prototxt")
    assert_one_line_error(completed, "vgg19.prototxt: no such prototxt file")
    assert_untouched(out)


def test_caffe_abort_becomes_one_line(mlp_file, out, tmp_path):
    # Passes every check made in Python; Caffe itself CHECK-fails (axis 3 of a 2-D blob) and
    # aborts the process with a glog dump.
    hand = prototxt(tmp_path, MLP_PROTOTXT.replace("num_output: 3 }", "num_output: 3 axis: 3 }"))
    completed = tf2caffe("import", mlp_file, "-o", out, "--prototxt", hand)
    line = assert_one_line_error(completed, mlp_file, "Caffe refused the net: Check failed:")
    assert "axis" in line
    assert_untouched(out)


def test_non_existent_checkpoint(tmp_path, out):
    completed = tf2caffe("export", "architectures/digits.py", "-o", out,
                         "--checkpoint", tmp_path / "nowhere" / "digits.tfl")
    assert_one_line_error(completed, "digits.tfl")
    assert_untouched(out)


def test_non_existent_source(tmp_path, out):
    completed = tf2caffe("export", tmp_path / "model.keras", "-o", out)
    assert_one_line_error(completed, "model.keras")
    assert_untouched(out)
