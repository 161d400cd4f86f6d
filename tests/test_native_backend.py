"""The native backend (no Caffe): the same weights, blob by blob, as the pycaffe backend; files
that real Caffe and OpenCV load and run exactly; chosen by default when there is no Caffe.

VGG-19 (tflearn, seeded, 112x112, generated prototxt) and four keras.applications models of
tests/test_zoo.py go through `tf2caffe import` once per backend (one process each); then one
Caffe subprocess loads both .caffemodel files of every model, compares every parameter blob byte
for byte, and runs the native one on TensorFlow's reference input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import intermediate_models
from test_zoo import conditioned_zoo_model
from tf2caffe import intermediate, runtimes
from tf2caffe.caffe.layout import hwcn_to_nchw_blocks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("native", "pycaffe")
# Of the zoo, the networks that hold between them every kind of parameter blob the writers lay
# out: convolutions (grouped, depthwise, separable, asymmetric kernels), inner products,
# BatchNorm with and without a Scale, squeeze-excitation's scales (all 40 would take long;
# DenseNet, ResNet and MobileNetV2, once here, held no other kind).
MODELS = ("vgg19", "efficientnet_b0", "inception_v3", "mobilenet", "xception")


def tf2caffe(*args, env=None, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2caffe", *map(str, args)], cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=900)


# The tests that use it (or in_caffe) are marked chroot and slow: it exports VGG-19 and the zoo and
# imports them with both backends, pycaffe in the Caffe chroot.
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{backend: {model: report entry}} for every model imported by each backend."""
    from tf2caffe.export import export
    from tf2caffe.export.keras import model_to_intermediate

    folder = tmp_path_factory.mktemp("native").resolve()  # report keys are real paths
    files = [export(PROJECT_ROOT / "architectures" / "vgg19.py", folder, input_shape=(1, 112, 112, 3),
                    per_layer=True)]
    for name in MODELS[1:]:
        files.append(folder / ("%s.h5" % name))
        intermediate.write(str(files[-1]), model_to_intermediate(conditioned_zoo_model(name), name, per_layer=True))
    entries = {}
    for backend in BACKENDS:
        out = folder / backend
        completed = tf2caffe("import", *files, "-o", out, "--backend", backend, "--per-layer",
                             "--report", out / "report.json")
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())["results"]
        entries[backend] = {Path(path).stem: entry for path, entry in report.items()}
    return folder, entries


@pytest.fixture(scope="module")
def in_caffe(converted):
    """Both .caffemodel files of every model loaded in real Caffe (one chroot process)."""
    folder, entries = converted
    cases = {name: {"prototxt": entry["files"]["prototxt"], "native": entry["files"]["caffemodel"],
                    "pycaffe": entries["pycaffe"][name]["files"]["caffemodel"], "entry": entry}
             for name, entry in entries["native"].items()}
    (folder / "cases.json").write_text(json.dumps(cases))
    completed = subprocess.run(
        [sys.executable, "-m", "tf2caffe.environments", "caffe-run", "--bind", str(folder), "--",
         "python3", "tests/native_in_caffe.py", str(folder / "cases.json"), str(folder / "results.json")],
        cwd=str(PROJECT_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert completed.returncode == 0, completed.stdout[-4000:]
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.chroot
def test_every_model_converts_with_both_backends(converted):
    _, entries = converted
    for backend in BACKENDS:
        assert sorted(entries[backend]) == sorted(MODELS)


@pytest.mark.slow
@pytest.mark.chroot
@pytest.mark.parametrize("name", MODELS)
def test_native_is_verified_exactly_in_opencv(converted, name):
    """Written without Caffe, verified in OpenCV and in every Caffe here: outputs within 1e-4
    everywhere, every layer within 1e-5 in each Caffe (OpenCV's Winograd 3x3 convolutions add
    about 5e-6 per layer, so only its outputs are held to the bar, as in harness.assert_exact)."""
    entry = converted[1]["native"][name]
    assert (entry["backend"], entry["verified_with"], entry["verified"]) == ("native", "OpenCV", True)
    caffes = [caffe.name for caffe in runtimes.available_caffes()]
    assert caffes and sorted(entry["runtimes"]) == sorted(caffes + ["OpenCV"]), entry["runtimes"].keys()
    for runtime, measured in entry["runtimes"].items():
        for layer, errors in measured["compared"].items():
            assert errors["max_rel"] <= 1e-4, (runtime, layer, errors)
        if runtime != "OpenCV":
            assert measured["per_layer"], "no layer was compared on its own in %s" % runtime
            over = {layer: error for layer, error in measured["per_layer"].items() if not error <= 1e-5}
            assert not over, (runtime, over)


@pytest.mark.slow
@pytest.mark.chroot
@pytest.mark.parametrize("name", MODELS)
def test_both_backends_write_the_same_prototxt(converted, name):
    native, pycaffe = (converted[1][backend][name]["files"]["prototxt"] for backend in BACKENDS)
    assert Path(native).read_text() == Path(pycaffe).read_text()


@pytest.mark.slow
@pytest.mark.chroot
@pytest.mark.parametrize("name", MODELS)
def test_native_weights_equal_pycaffes_blob_by_blob_in_caffe(in_caffe, name):
    result = in_caffe[name]
    assert result["differing"] == []
    assert result["blobs"] > 0
    if name == "vgg19":
        # 16 convolutions and 3 InnerProducts; fc6 reads 512 x 4 x 4 (tflearn pools 'same': 7 -> 4).
        fully_connected = 512 * 4 * 4 * 4096 + 4096 * 4096 + 4096 * 1000 + 4096 + 4096 + 1000
        assert (result["blobs"], result["weights"]) == (38, 20024384 + fully_connected)


@pytest.mark.slow
@pytest.mark.chroot
@pytest.mark.parametrize("name", MODELS)
def test_native_files_run_exactly_in_caffe(in_caffe, name):
    errors = in_caffe[name]["errors"]
    assert errors
    for layer, error in errors.items():
        assert error <= 1e-4, (layer, error)


def test_default_is_native_without_a_caffe_environment(tmp_path):
    """An empty cache stands for a machine without the Caffe environment: nothing is built."""
    h5 = intermediate_models.write(intermediate_models.mlp(), tmp_path)
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = dict(os.environ, TF2CAFFE_CACHE=str(cache))
    completed = tf2caffe("import", h5, "-o", tmp_path / "out", env=env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("backend: native (no Caffe environment found)\n")
    assert "verified: max relative error" in completed.stdout
    assert list(cache.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mlp.caffemodel", "mlp.prototxt"]


def test_convert_with_the_native_backend(tmp_path):
    from test_cli import small_cnn
    small_cnn().save(str(tmp_path / "cnn.keras"))
    completed = tf2caffe("convert", tmp_path / "cnn.keras", "-o", tmp_path / "out", "--backend", "native")
    assert completed.returncode == 0, completed.stderr
    assert "(written by native)" in completed.stdout
    # Written without Caffe, verified in every runtime here all the same.
    errors = completed.stdout.split("max relative error: ", 1)[1].split(" (compared")[0]
    assert [part.split()[0] for part in errors.split(", ")] == ["OpenCV"] + [
        caffe.name for caffe in runtimes.available_caffes()]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cnn.caffemodel", "cnn.h5", "cnn.prototxt", "cnn.reference.npy", "cnn.reference.tiff", "cnn.report.html",
        "cnn.report.json"]


def test_native_refuses_a_hand_written_prototxt_before_writing(tmp_path):
    h5 = intermediate_models.write(intermediate_models.mlp(), tmp_path)
    prototxt = tmp_path / "hand.prototxt"
    prototxt.write_text(intermediate_models.MLP_PROTOTXT)
    completed = tf2caffe("import", h5, "-o", tmp_path / "out", "--backend", "native", "--prototxt", prototxt)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "tf2caffe: error: %s: a hand-written prototxt needs the pycaffe backend (Caffe's own schema "
        "parses it); drop --prototxt to write the generated one" % prototxt]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.chroot
def test_no_verify_writes_the_same_files_unverified(tmp_path, converted):
    folder, entries = converted
    completed = tf2caffe("import", folder / "vgg19.h5", "-o", tmp_path, "--backend", "native", "--no-verify",
                         "--report", tmp_path / "report.json")
    assert completed.returncode == 0, completed.stderr
    assert "not verified (--no-verify)" in completed.stdout
    entry = json.loads((tmp_path / "report.json").read_text())["results"][str(folder / "vgg19.h5")]
    assert entry["verified"] is None and entry["verified_with"] is None and "verifying" not in entry["stage_seconds"]
    for kind in ("prototxt", "caffemodel"):
        assert (tmp_path / ("vgg19." + kind)).read_bytes() == Path(entries["native"]["vgg19"]["files"][kind]).read_bytes()


@pytest.mark.parametrize("shape", [(7, 7, 512, 300), (3, 3, 5, 130), (1, 1, 4096, 257), (2, 3, 1, 1), (1, 1, 3, 1000)])
def test_tiled_layout_is_numpys_transpose(shape):
    kernel = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    blocks = list(hwcn_to_nchw_blocks(kernel.reshape(-1, shape[-1]), shape[:2]))
    assert all(block.flags.c_contiguous for block in blocks)
    assert np.array_equal(np.concatenate(blocks), kernel.transpose(3, 2, 0, 1))
