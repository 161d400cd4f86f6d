"""Bad input to the command line, as a user meets it.

One row of BAD_INPUTS = one bad input (a builder that makes it and returns the command line) and
the message fragments the error line must contain. For every row, through the real CLI: exactly
one line on stderr, `tf2caffe: error: ...`, naming the file and the layer/field at fault; a
non-zero exit; no traceback; and the output folder exactly as it was (it holds an earlier
conversion of the same model, which must survive byte for byte, and nothing new: no partial
output, no scratch folder).

Permission cases: the tests run as root (CI does too), and root ignores file modes, so those rows
run the CLI as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv): modes then apply to
it, while it keeps the rights the Caffe chroot needs (a non-root uid cannot even reach the venv
and the Caffe root under /root). Read-only and full file systems are real mounts in a private
mount namespace (unshare -m): a read-only bind mount, a 64 KiB tmpfs.
"""
from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import h5py
import numpy as np
import pytest

import intermediate_models
from intermediate_models import MLP_PROTOTXT
from tf2caffe import intermediate, runtimes
from tf2caffe.caffe.caffemodel import MAX_CAFFEMODEL_BYTES
from tf2caffe.intermediate import Layer, Model

# `tf2caffe import` with the default backend: pycaffe, in the Caffe chroot.
pytestmark = pytest.mark.chroot

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EARLIER = b"an earlier conversion\n"
# The earlier conversion of model.h5 / model.keras that every failed run must leave alone.
EARLIER_OUTPUT = ("model.caffemodel", "model.h5", "model.prototxt")
IS_ROOT = os.geteuid() == 0

# TensorFlow's start-up notice, printed whatever TF_CPP_MIN_LOG_LEVEL says.


class Workspace:
    """A test's folder: the bad input goes to model.h5 (or hand.prototxt, model.keras), the
    output folder `out` holds the earlier conversion."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.h5 = tmp / "model.h5"
        self.keras = tmp / "model.keras"
        self.hand = tmp / "hand.prototxt"
        self.out = tmp / "out"
        self.out.mkdir()
        for name in EARLIER_OUTPUT:
            (self.out / name).write_bytes(EARLIER)

    def fields(self):
        return {"h5": self.h5, "keras": self.keras, "hand": self.hand, "out": self.out, "tmp": self.tmp}

    def write(self, model: Optional[Model] = None) -> Path:
        intermediate.write(str(self.h5), model or intermediate_models.mlp(name="model"))
        return self.h5

    def import_args(self, *extra) -> List[str]:
        return ["import", str(self.h5), "-o", str(self.out), *map(str, extra)]


# ---------------------------------------------------------------- input builders

Builder = Callable[[Workspace], List[str]]


def plain(ws: Workspace) -> List[str]:
    ws.write()
    return ws.import_args()


def edited(edit: Callable[[h5py.File], None]) -> Builder:
    """The model written, then changed in place with h5py."""
    def build(ws):
        ws.write()
        with h5py.File(str(ws.h5), "r+") as f:
            edit(f)
        return ws.import_args()
    return build


def raw(data: Callable[[Workspace], bytes]) -> Builder:
    """model.h5 holding these bytes."""
    def build(ws):
        ws.h5.write_bytes(data(ws))
        return ws.import_args()
    return build


def input_is_a_directory(ws: Workspace) -> List[str]:
    ws.h5.mkdir()
    return ws.import_args()


def input_unreadable(ws: Workspace) -> List[str]:
    ws.write().chmod(0)
    return ws.import_args()


def truncated(ws: Workspace) -> bytes:
    data = ws.write().read_bytes()
    return data[:len(data) // 2]


def flipped_byte(offset: int, xor: int) -> Callable[[Workspace], bytes]:
    def data(ws):
        content = bytearray(ws.write().read_bytes())
        content[offset] ^= xor
        return bytes(content)
    return data


def not_ours(ws: Workspace) -> List[str]:
    with h5py.File(str(ws.h5), "w") as f:
        f.create_dataset("dense/kernel", data=np.ones((3, 4), np.float32))
    return ws.import_args()


def set_attr(path: str, key: str, value) -> Callable[[h5py.File], None]:
    def edit(f):
        f[path].attrs[key] = value
    return edit


def delete(path: str) -> Callable[[h5py.File], None]:
    def edit(f):
        del f[path]
    return edit


def replace(path: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    """Replace a dataset by value(its data), keeping its attributes."""
    def edit(f):
        old = f[path]
        data, attrs = old[()], dict(old.attrs)
        del f[path]
        new = f.create_dataset(path, data=value(data))
        new.attrs.update(attrs)
    return edit


def poke(path: str, index, value: float) -> Callable[[h5py.File], None]:
    def edit(f):
        f[path][index] = value
    return edit


def with_prototxt(text: Callable[[], str]) -> Builder:
    def build(ws):
        ws.write()
        ws.hand.write_text(text())
        return ws.import_args("--prototxt", ws.hand)
    return build


def prototxt_path(make: Callable[[Path], None]) -> Builder:
    """--prototxt naming something that is not a readable file."""
    def build(ws):
        ws.write()
        make(ws.hand)
        return ws.import_args("--prototxt", ws.hand)
    return build


def unreadable(path: Path) -> None:
    path.write_text(MLP_PROTOTXT)
    path.chmod(0)


def output_is_a_file(ws: Workspace) -> List[str]:
    ws.write()
    return ["import", str(ws.h5), "-o", str(ws.out / "model.caffemodel")]


def output_not_writable(ws: Workspace) -> List[str]:
    ws.write()
    ws.out.chmod(0o555)
    return ws.import_args()


def report_not_writable(ws: Workspace) -> List[str]:
    ws.write()
    locked = ws.tmp / "locked"
    locked.mkdir(mode=0o555)
    return ws.import_args("--report", locked / "report.json")


def wide_mlp(ws: Workspace) -> List[str]:
    """A model whose .caffemodel (~170 KB) does not fit on the 64 KiB file system."""
    ws.write(intermediate_models.mlp(name="model", features=64, hidden=512, classes=10))
    return ws.import_args()


def too_big_for_caffe(ws: Workspace) -> List[str]:
    """A dense layer whose kernel is a > 2 GiB HDF5 dataset of fill values: no chunk is ever
    written, so the file takes kilobytes on disk."""
    features, units = 2 ** 15, 2 ** 14 + 1
    assert 4 * features * units > MAX_CAFFEMODEL_BYTES
    rng = np.random.RandomState(0)
    x = rng.randn(1, features).astype(np.float32)
    bias = rng.randn(units).astype(np.float32)
    model = Model("model", [
        Layer("input", "input", [], {"shape": [None, features]}, [1, features]),
        Layer("fc", "dense", ["input"], {"units": units}, [1, units],
              {"kernel": np.zeros((1, 1), np.float32), "bias": bias},
              {"kernel": "fc/kernel:0", "bias": "fc/bias:0"}),
    ], ["fc"], {}, {"input": x}, {"fc": bias[None, :]})
    ws.write(model)
    with h5py.File(str(ws.h5), "r+") as f:
        group = f["layers/fc"]
        del group["kernel"]
        kernel = group.create_dataset("kernel", shape=(features, units), dtype=np.float32,
                                      chunks=(1024, 1024), compression="gzip", fillvalue=0.0)
        kernel.attrs["tf_name"] = "fc/kernel:0"
    assert ws.h5.stat().st_size < 2 ** 20
    return ws.import_args()


# The export side: Keras files. Building one with a Lambda layer needs Keras (in a child
# process, so this module does not import TensorFlow).
LAMBDA_MODEL = """
import keras, sys
inputs = keras.Input((4,))
hidden = keras.layers.Dense(3, name="fc")(inputs)
outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(hidden)
keras.Model(inputs, outputs).save(sys.argv[1])
"""


def keras_with_lambda(ws: Workspace) -> List[str]:
    subprocess.run([sys.executable, "-c", LAMBDA_MODEL, str(ws.keras)], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ["export", str(ws.keras), "-o", str(ws.out)]


def corrupt_keras_zip(ws: Workspace) -> List[str]:
    import zipfile
    with zipfile.ZipFile(str(ws.keras), "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional", "config": {}}')
        archive.writestr("model.weights.h5", b"\0" * 4096)
    data = ws.keras.read_bytes()
    ws.keras.write_bytes(data[:len(data) - 40])  # the central directory's end is cut off
    return ["export", str(ws.keras), "-o", str(ws.out)]


def export_to_a_file(ws: Workspace) -> List[str]:
    return ["export", "architectures/digits.py", "-o", str(ws.out / "model.caffemodel")]


def export_not_writable(ws: Workspace) -> List[str]:
    ws.out.chmod(0o555)
    return ["export", "architectures/digits.py", "-o", str(ws.out)]


# An architecture module whose own code fails: the function named is replaced by one that
# raises in a helper it calls; its error line names the module's function, not the helper.
ARCHITECTURE = """import tflearn

DEFAULT_INPUT_SHAPE = (1, 4, 4, 1)


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    return tflearn.fully_connected(net, 2)
"""
FAILING_FUNCTION = """

def {function}(*args):
    return helper()


def helper():
    raise ValueError("no {function} here")
"""
# tflearn itself refusing what build() asks of it.
CONV_ON_A_VECTOR = ARCHITECTURE.replace("fully_connected(net, 2)", "conv_2d(tflearn.flatten(net), 2, 3)")


def architecture(text: str) -> Builder:
    def build(ws: Workspace) -> List[str]:
        (ws.tmp / "bad.py").write_text(text)
        return ["export", str(ws.tmp / "bad.py"), "-o", str(ws.out)]
    return build


def architecture_failing_in(function: str) -> Builder:
    return architecture(ARCHITECTURE + FAILING_FUNCTION.format(function=function))


# ---------------------------------------------------------------- how the CLI runs

def tf2caffe(argv: Sequence[str], wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*wrapper, sys.executable, "-m", "tf2caffe", *argv], cwd=str(PROJECT_ROOT),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)


Runner = Callable[[Sequence[str], Workspace], Tuple[subprocess.CompletedProcess, Path]]


def as_user(argv, ws):
    """Root without the capabilities that bypass file modes (a plain user's view of them)."""
    wrapper = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if IS_ROOT else []
    return tf2caffe(argv, wrapper), ws.out


def read_only_output(argv, ws):
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return tf2caffe(argv, ["unshare", "-m", "sh", "-c", script, "sh", str(ws.out)]), ws.out


def full_output(argv, ws):
    """`out` on a 64 KiB tmpfs (holding a copy of the earlier conversion); afterwards its
    content is copied to `after` for the checks, as the tmpfs vanishes with the namespace."""
    after = ws.tmp / "after"
    after.mkdir()
    script = "\n".join([
        'out=$1 after=$2; shift 2',
        'cp -a "$out/." "$after/"',
        'mount -t tmpfs -o size=64k tmpfs "$out"',
        'cp -a "$after/." "$out/" && rm -rf "$after"/* "$after"/.[!.]*',
        '"$@"; status=$?',
        'cp -a "$out/." "$after/"',
        'exit $status'])
    return tf2caffe(argv, ["unshare", "-m", "sh", "-c", script, "sh", str(ws.out), str(after)]), after


def direct(argv, ws):
    return tf2caffe(argv), ws.out


class BadInput(NamedTuple):
    id: str
    build: Builder
    fragments: Tuple[str, ...]  # str.format'ted with Workspace.fields()
    run: Runner = direct


def row(name, build, *fragments, run=direct) -> BadInput:
    return BadInput(name, build, fragments, run)


def extra_fc3():
    return MLP_PROTOTXT + ('layer { name: "fc3" type: "InnerProduct" bottom: "fc2" top: "fc3" '
                           'inner_product_param { num_output: 2 } }\n')


# The flipped bit below crashes HDF5 1.10, bullseye's; the source-built Caffe's venv reads with a
# newer HDF5 (h5py's wheel), which reports the corruption instead.
HDF5_CRASH = ("{h5}: corrupt HDF5 file: reading it crashed the HDF5 library (SIGSEGV)"
              if [caffe.name for caffe in runtimes.available_caffes()][:1] == ["pycaffe-bullseye"]
              else "{h5}: unreadable intermediate (OSError: ")

BAD_INPUTS = [
    # --- the intermediate file
    row("missing_file", lambda ws: ws.import_args(), "{h5}: no such file"),
    row("input_is_a_directory", input_is_a_directory, "{h5}: is a directory, not an HDF5 file"),
    row("input_unreadable", input_unreadable, "{h5}: not readable (permission denied)", run=as_user),
    row("truncated_hdf5", raw(truncated), "{h5}: not a readable HDF5 file (truncated or corrupt?)"),
    row("not_hdf5_at_all", raw(lambda ws: b"name: 'a prototxt, not HDF5'\n" * 20),
        "{h5}: not a readable HDF5 file"),
    # One flipped bit in the mlp file's metadata that makes HDF5 1.10 dereference garbage (found by
    # tests/test_intermediate_fuzz.py, which prints every crashing corruption it makes).
    row("hdf5_that_crashes_hdf5", raw(flipped_byte(2893, 0x02)), HDF5_CRASH),
    row("hdf5_not_ours", not_ours, "{h5}: not a tf2caffe intermediate (no format attribute"),
    row("newer_format_version", edited(set_attr("/", "format_version", 3)),
        "{h5}: format version 3 is newer than this tf2caffe reads (2); upgrade tf2caffe"),
    row("missing_kernel_dataset", edited(delete("layers/dense_1/kernel")),
        "{h5}: layer 'dense_1': missing array 'kernel'"),
    row("missing_layer_group", edited(delete("layers/dense_2")),
        "{h5}: layer 'dense_2' is listed but has no group /layers/dense_2"),
    row("missing_reference_activation", edited(delete("reference/activations/dense_2")),
        "{h5}: no reference activation for compared layer 'dense_2'"),
    row("int_kernel", edited(replace("layers/dense_1/kernel", lambda k: (k * 10).astype(np.int32))),
        "{h5}: layer 'dense_1': array 'kernel' is not floating point"),
    # Shapes are checked with support, before anything is written, not by the writer.
    row("kernel_of_the_wrong_shape", edited(replace("layers/dense_1/kernel", lambda k: k[:, :4])),
        "{h5}: 1 unsupported layer(s): 'dense_1' (dense): array 'kernel' has shape [6, 4]; its config "
        "and input imply [6, 5]"),
    row("nan_kernel", edited(poke("layers/dense_2/kernel", (1, 2), np.nan)),
        "{h5}: layer 'dense_2': array 'kernel' (dense_2/kernel:0) contains NaN or Inf"),
    row("inf_bias", edited(poke("layers/dense_1/bias", 3, np.inf)),
        "{h5}: layer 'dense_1': array 'bias' (dense_1/bias:0) contains NaN or Inf"),
    row("nan_reference_activation", edited(poke("reference/activations/dense_2", (0, 1), np.nan)),
        "{h5}: reference activation 'dense_2' contains NaN or Inf"),
    row("config_not_json", edited(set_attr("layers/dense_1", "config", "{units: 5")),
        "{h5}: layer 'dense_1': attribute 'config' is not valid JSON"),
    row("unknown_layer_type", edited(set_attr("layers/dense_1%2Frelu", "type", "lambda")),
        "{h5}: layer 'dense_1/relu': unknown layer type 'lambda'"),
    row("unsupported_layer", edited(set_attr("layers/dense_1%2Frelu", "config", '{"function": "log_softmax"}')),
        "{h5}: 1 unsupported layer(s): 'dense_1/relu' (activation): activation 'log_softmax' has no exact "
        "Caffe equivalent"),
    row("too_big_for_caffe", too_big_for_caffe,
        "{h5}: the .caffemodel would be over 2147680260 bytes (2.00 GiB; layer 'fc' alone 2.00 GiB); Caffe "
        "reads at most %d bytes" % MAX_CAFFEMODEL_BYTES),
    # --- the hand-written prototxt
    row("prototxt_missing", prototxt_path(lambda path: None), "{hand}: no such prototxt file"),
    row("prototxt_is_a_directory", prototxt_path(Path.mkdir), "{hand}: cannot read the prototxt: Is a directory"),
    row("prototxt_unreadable", prototxt_path(unreadable), "{hand}: cannot read the prototxt: Permission denied",
        run=as_user),
    row("prototxt_does_not_parse", with_prototxt(lambda: MLP_PROTOTXT.replace("top: \"fc2\"", "top: fc2 }")),
        "{hand}: not a valid Caffe prototxt: 5:61 :", "Expected string but found: 'fc2'"),
    row("prototxt_layer_missing_from_hdf5", with_prototxt(extra_fc3),
        "{hand}: layer(s) 'fc3' have parameters that no layer of {h5} fills"),
    row("hdf5_layer_missing_from_prototxt",
        with_prototxt(lambda: MLP_PROTOTXT.replace('name: "fc2"', 'name: "logits"')),
        "{hand}: 1 layer(s) with weights in {h5} have no layer of that name in the prototxt: fc2"),
    row("prototxt_shape_mismatch", with_prototxt(lambda: MLP_PROTOTXT.replace("num_output: 3", "num_output: 10")),
        "{h5}: fc2: weight shape (3, 5) in the HDF5 file vs (10, 5) in hand.prototxt"),
    row("prototxt_caffe_aborts", with_prototxt(lambda: MLP_PROTOTXT.replace("num_output: 3 }", "num_output: 3 axis: 3 }")),
        "{h5}: Caffe refused the net: Check failed:", "axis"),
    # --- the output folder
    row("output_is_a_file", output_is_a_file, "{out}/model.caffemodel: cannot create the output folder"),
    row("output_not_writable", output_not_writable, "{out}: cannot write in the output folder: Permission denied",
        run=as_user),
    row("output_read_only", plain, "{out}: cannot write in the output folder: Read-only file system",
        run=read_only_output),
    row("output_disk_full", wide_mlp, "{out}/model.caffemodel: cannot write",
        "No space left on device", run=full_output),
    row("report_not_writable", report_not_writable, "{tmp}/locked/report.json: cannot write the report: "
        "permission denied", run=as_user),
    # --- the export side
    row("keras_lambda_layer", keras_with_lambda, "{keras}: 1 unsupported layer(s): 'double' (Lambda)", "never runs"),
    row("keras_corrupt_zip", corrupt_keras_zip, "{keras}: not a valid .keras file"),
    row("export_output_is_a_file", export_to_a_file, "{out}/model.caffemodel: output folder exists and is not a directory"),
    row("export_output_not_writable", export_not_writable, "{out}/digits.h5: cannot write: Permission denied",
        run=as_user),
    row("architecture_build_fails", architecture_failing_in("build"),
        "{tmp}/bad.py: build() failed: ValueError: no build here"),
    row("architecture_train_fails", architecture_failing_in("train"),
        "{tmp}/bad.py: train() failed: ValueError: no train here"),
    row("architecture_reference_data_fails", architecture_failing_in("reference_data"),
        "{tmp}/bad.py: reference_data() failed: ValueError: no reference_data here"),
    row("architecture_tflearn_refuses", architecture(CONV_ON_A_VECTOR),
        "{tmp}/bad.py: build() failed: AssertionError: Incoming Tensor shape must be 4-D"),
    row("export_missing_checkpoint",
        lambda ws: ["export", "architectures/digits.py", "-o", str(ws.out), "--checkpoint", str(ws.tmp / "none" / "digits.tfl")],
        "digits.tfl"),
]


def one_error_line(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode != 0, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("tf2caffe: error: "), completed.stderr
    return lines[0]


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(EARLIER_OUTPUT)
    for name in EARLIER_OUTPUT:
        assert (folder / name).read_bytes() == EARLIER, name


# Mounting needs root (which CI is); the other rows run as any user.
NEEDS_ROOT = pytest.mark.skipif(not IS_ROOT, reason="mounts a file system: needs root")


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=[NEEDS_ROOT] if case.run in (read_only_output, full_output) else [])
    for case in BAD_INPUTS])
def test_bad_input(case, tmp_path):
    ws = Workspace(tmp_path)
    argv = case.build(ws)
    completed, output = case.run(argv, ws)
    line = one_error_line(completed)
    for fragment in case.fragments:
        assert fragment.format(**ws.fields()) in line, line
    assert_untouched(output)


def test_failed_import_leaves_no_new_output_folder(tmp_path):
    completed = tf2caffe(["import", str(tmp_path / "model.h5"), "-o", str(tmp_path / "new" / "out")])
    one_error_line(completed)
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    ws = Workspace(tmp_path)
    completed = tf2caffe(edited(delete("layers/dense_1/kernel"))(ws) + ["--debug"])
    assert completed.returncode != 0
    assert "Traceback (most recent call last)" in completed.stderr
    assert "IntermediateError: %s: layer 'dense_1': missing array 'kernel'" % ws.h5 in completed.stderr
    assert_untouched(ws.out)


def test_debug_shows_the_architecture_modules_traceback(tmp_path):
    ws = Workspace(tmp_path)
    completed = tf2caffe(architecture_failing_in("build")(ws) + ["--debug"])
    assert completed.returncode != 0
    assert re.search(r'bad\.py", line \d+, in helper\n.*\n(.*\n)?ValueError: no build here\n', completed.stderr)
    assert "ConversionError: %s/bad.py: build() failed: ValueError: no build here" % tmp_path in completed.stderr
    assert_untouched(ws.out)


def test_only_the_architecture_modules_own_exceptions_become_one_line(tmp_path):
    from tf2caffe.errors import ConversionError
    from tf2caffe.export.architecture_errors import architecture_errors

    module = tmp_path / "arch.py"
    module.write_text(FAILING_FUNCTION.format(function="build"))  # no tflearn: nothing to shim
    build = runpy.run_path(str(module))["build"]
    with pytest.raises(ConversionError) as caught, architecture_errors(module):
        build()
    assert str(caught.value) == "%s: build() failed: ValueError: no build here" % module
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(KeyError), architecture_errors(module):  # tf2caffe's own: unchanged
        {}["layer"]
    with pytest.raises(ConversionError, match="^already one line$"), architecture_errors(module):
        raise ConversionError("already one line")
