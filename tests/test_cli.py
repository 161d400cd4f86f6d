"""The `tf2caffe` command line: import in the Caffe chroot, convert, --check-only, the harness."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import intermediate_models
from harness import assert_exact, convert_keras_batch

from tf2caffe import cli, intermediate, runtimes

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def tf2caffe(*args, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf2caffe", *map(str, args)], cwd=str(cwd),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=600)


def test_version():
    completed = tf2caffe("--version")
    assert completed.returncode == 0 and completed.stdout.startswith("tf2caffe 0.")


def test_import_help_loads_no_framework():
    completed = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom tf2caffe import cli\ntry:\n    cli.main(['import', '--help'])\n"
         "except SystemExit:\n    pass\nassert not {'tensorflow', 'keras', 'cv2', 'h5py'} & set(sys.modules)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert completed.returncode == 0, completed.stderr
    assert "--prototxt" in completed.stdout and "--debug" in completed.stdout


def test_help_lists_every_profile_with_its_description():
    from tf2caffe.caffe.profiles import PROFILES
    for command in ("import", "convert"):
        text = "".join(tf2caffe(command, "--help").stdout.split())  # argparse wraps at spaces and hyphens
        assert "--profile{%s}" % ",".join(PROFILES) in text
        for name, profile in PROFILES.items():
            assert "%s=%s" % (name, "".join(profile.description.split())) in text


@pytest.mark.parametrize("command", ["import", "convert", "check-only"])
def test_an_unknown_profile_is_one_line_before_any_work(tmp_path, command):
    # The source does not exist: refusing it would be work, and a different message.
    argv = ["import", tmp_path / "m.h5"] if command == "import" else ["convert", tmp_path / "m.keras"]
    argv += ["-o", tmp_path / "out", "--profile", "caffe2"] + (["--check-only"] if command == "check-only" else [])
    completed = tf2caffe(*argv)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == "tf2caffe: error: unknown target profile 'caffe2' (known: bvlc, opencv, ssd)\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("call", ["check", "convert", "import_"])
def test_the_api_refuses_an_unknown_profile_before_any_work(tmp_path, call):
    import tf2caffe
    from tf2caffe.errors import ConversionError
    args = ([str(tmp_path / "m.h5")], str(tmp_path / "out")) if call == "import_" else \
        (str(tmp_path / "m.keras"),) + ((str(tmp_path / "out"),) if call == "convert" else ())
    with pytest.raises(ConversionError, match="unknown target profile 'caffe2'"):
        getattr(tf2caffe, call)(*args, profile="caffe2")
    assert not (tmp_path / "out").exists()


@pytest.mark.chroot
def test_import_runs_in_the_chroot_and_every_runtime_agrees(tmp_path):
    files = [intermediate_models.write(intermediate_models.mlp(name, seed=seed), tmp_path)
             for seed, name in enumerate(["first", "second"])]
    report = tmp_path / "out" / "report.json"
    # Relative paths: the chroot sees the same working directory.
    completed = tf2caffe("import", "first.h5", "second.h5", "-o", "out", "--report", "out/report.json",
                         "--per-layer", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert "verified: max relative error" in completed.stdout
    results = json.loads(report.read_text())["results"]
    assert sorted(results) == ["first.h5", "second.h5"]
    for entry in results.values():
        assert entry["verified"]
        # Verified in every runtime here (the source-built Caffe's when it is built), OpenCV too.
        assert {"pycaffe-bullseye", "OpenCV"} <= set(entry["runtimes"])
        for runtime in entry["runtimes"].values():
            for errors in runtime["compared"].values():
                assert errors["max_rel"] <= 1e-6
            assert runtime["per_layer"] and max(runtime["per_layer"].values()) <= 1e-6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "first.caffemodel", "first.prototxt", "report.json", "second.caffemodel", "second.prototxt"]
    assert len(files) == 2


def small_cnn(seed=0):
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_harness_converts_a_batch_exactly(tmp_path):
    results = convert_keras_batch({"cnn_a": small_cnn(0), "cnn_b": small_cnn(1)}, tmp_path)
    for result in results.values():
        assert_exact(result)
        assert "Convolution" in result.caffe_types and "InnerProduct" in result.caffe_types
        assert result.per_layer and result.prototxt.startswith('name: "')


@pytest.mark.chroot
def test_convert_writes_the_model_and_a_short_report(tmp_path):
    small_cnn().save(str(tmp_path / "cnn.keras"))
    completed = tf2caffe("convert", tmp_path / "cnn.keras", "-o", tmp_path / "out")
    assert completed.returncode == 0, completed.stderr
    writer = runtimes.available_caffes()[0].name  # the Caffe this run prefers (TF2CAFFE_CAFFE)
    assert "max relative error: %s" % writer in completed.stdout and "OpenCV" in completed.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cnn.caffemodel", "cnn.h5", "cnn.prototxt", "cnn.reference.npy", "cnn.reference.tiff", "cnn.report.html",
        "cnn.report.json"]


@pytest.mark.chroot
def test_convert_deployed_takes_raw_bgr_pixels_in_opencv(tmp_path):
    """`convert --bgr --mean --scale`: OpenCV's blobFromImage of a BGR image, without any
    preprocessing, through the net gives the model's output on the preprocessed RGB image."""
    import cv2
    import numpy as np
    mean_bgr, scale = np.array([104.0, 117.0, 123.0]), 0.017
    model = small_cnn()
    model.save(str(tmp_path / "cnn.keras"))
    completed = tf2caffe("convert", tmp_path / "cnn.keras", "-o", tmp_path / "out", "--bgr",
                         "--mean", ",".join(map(str, mean_bgr)), "--scale", str(scale), "--fold-bn")
    assert completed.returncode == 0, completed.stderr
    image_bgr = np.random.default_rng(3).uniform(0, 255, (12, 12, 3)).astype(np.float32)
    expected = model.predict(((image_bgr[..., ::-1] - mean_bgr[::-1]) * scale)[None], verbose=0)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "out" / "cnn.prototxt"), str(tmp_path / "out" / "cnn.caffemodel"))
    net.setInput(cv2.dnn.blobFromImage(image_bgr))
    output = net.forward().reshape(expected.shape)
    assert np.max(np.abs(output - expected)) / np.max(np.abs(expected)) <= 1e-4


def with_flavour_activations(*activations):
    """small_cnn with ReLU6 and/or Swish (layer types of the opencv profile) after its convolution."""
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    for activation in activations:
        x = keras.layers.Activation(activation)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def source_caffe_built():
    return runtimes.RUNTIMES["source"].available()


@pytest.mark.chroot
@pytest.mark.skipif(not source_caffe_built(), reason="the source-built Caffe is not built (make env CAFFE=source)")
def test_convert_opencv_profile_relu6_verifies_in_the_source_caffe_and_opencv(tmp_path):
    with_flavour_activations("relu6").save(str(tmp_path / "relu6.keras"))
    completed = tf2caffe("convert", tmp_path / "relu6.keras", "-o", tmp_path / "out", "--profile", "opencv")
    assert completed.returncode == 0, completed.stderr
    assert "(written by pycaffe-source (it has every layer type of the net))" in completed.stdout
    errors = completed.stdout.split("max relative error: ", 1)[1].split(" (compared")[0]
    assert [part.split()[0] for part in errors.split(", ")] == ["pycaffe-source", "OpenCV"]
    assert "ReLU6" in (tmp_path / "out" / "relu6.prototxt").read_text()


@pytest.mark.chroot
@pytest.mark.skipif(not source_caffe_built(), reason="the source-built Caffe is not built (make env CAFFE=source)")
def test_api_convert_reports_every_runtime_it_verified_in(tmp_path):
    import tf2caffe
    with_flavour_activations("relu6").save(str(tmp_path / "relu6.keras"))
    converted = tf2caffe.convert(str(tmp_path / "relu6.keras"), str(tmp_path / "out"), profile="opencv")
    assert converted.status == 0 and converted.opencv_only is None
    assert converted.result.verified_with == "pycaffe-source"
    assert list(converted.runtimes()) == ["pycaffe-source", "OpenCV"]
    for errors in converted.runtimes().values():
        assert max(errors.values()) <= 1e-5, converted.runtimes()


@pytest.mark.chroot
def test_convert_with_a_type_no_caffe_has_verifies_in_opencv_only_and_says_so(tmp_path):
    with_flavour_activations("relu6", "swish").save(str(tmp_path / "both.keras"))
    completed = tf2caffe("convert", tmp_path / "both.keras", "-o", tmp_path / "out", "--profile", "opencv")
    assert completed.returncode == 0, completed.stderr
    assert "(written by native (no Caffe here has " in completed.stdout
    errors = completed.stdout.split("max relative error: ", 1)[1].split(" (compared")[0]
    assert errors.split()[0] == "OpenCV" and "," not in errors
    # bullseye's Caffe has Swish but not ReLU6, the source-built one ReLU6 but not Swish.
    lacking = "; ".join("%s lacks %s" % (runtime.name, {"pycaffe-bullseye": "ReLU6", "pycaffe-source": "Swish"}[
        runtime.name]) for runtime in runtimes.available_caffes())  # in the order this run prefers
    said = "verified in OpenCV only: no Caffe here has " + (
        "all its layer types: " + lacking if source_caffe_built() else "ReLU6")
    assert said in completed.stdout


@pytest.mark.chroot
def test_convert_verifies_a_user_reference_input_too(tmp_path):
    import numpy as np
    small_cnn().save(str(tmp_path / "cnn.keras"))
    user = np.random.default_rng(7).uniform(0, 255, (3, 12, 12, 3)).astype(np.float32)
    np.save(str(tmp_path / "x.npy"), user)
    completed = tf2caffe("convert", tmp_path / "cnn.keras", "-o", tmp_path / "out",
                         "--reference-input", tmp_path / "x.npy")
    assert completed.returncode == 0, completed.stderr
    model = intermediate.read(str(tmp_path / "out" / "cnn.h5"))
    batch = model.reference_input(model.inputs[0])
    assert batch.shape == (4, 12, 12, 3) and np.array_equal(batch[1:], user)


def test_reference_input_of_the_wrong_shape_is_one_line(tmp_path):
    import numpy as np
    small_cnn().save(str(tmp_path / "cnn.keras"))
    np.save(str(tmp_path / "x.npy"), np.zeros((2, 11, 12, 3), np.float32))
    completed = tf2caffe("export", tmp_path / "cnn.keras", "-o", tmp_path / "out",
                         "--reference-input", tmp_path / "x.npy")
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0
    assert "--reference-input has shape [2, 11, 12, 3]" in completed.stderr


def check_only(src, out, capsys):
    """`tf2caffe convert SRC -o OUT --check-only` in this process (TensorFlow is loaded already)."""
    status = cli.main(["convert", str(src), "-o", str(out), "--check-only"])
    return status, capsys.readouterr().out


def test_convert_check_only_lists_every_unsupported_layer_and_writes_nothing(tmp_path, capsys):
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.ReLU(threshold=0.5, name="step_one")(inputs)
    x = keras.layers.Conv2D(2, 1)(x)
    x = keras.layers.ReLU(threshold=0.25, name="step_two")(x)
    keras.Model(inputs, x).save(str(tmp_path / "bad.keras"))
    status, stdout = check_only(tmp_path / "bad.keras", tmp_path / "out", capsys)
    assert status == 2
    assert "2 of 4 layers cannot be converted" in stdout
    assert "'step_one'" in stdout and "'step_two'" in stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_convert_check_only_passes_a_supported_model(tmp_path, capsys):
    small_cnn().save(str(tmp_path / "cnn.keras"))
    status, stdout = check_only(tmp_path / "cnn.keras", tmp_path / "out", capsys)
    assert status == 0
    assert "can be converted" in stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_check_only_lists_export_and_import_refusals_together(tmp_path, capsys):
    """A layer the exporter cannot map and one the import side refuses, named in one run."""
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.LayerNormalization(axis=1, name="layer_norm")(x)  # over rows: refused on export
    x = keras.layers.Conv2D(4, 1)(keras.layers.Permute((2, 1, 3), name="swap")(x))  # bvlc: refused on import
    keras.Model(inputs, x).save(str(tmp_path / "two_bad.keras"))
    status, stdout = check_only(tmp_path / "two_bad.keras", tmp_path / "out", capsys)
    assert status == 2
    assert "'layer_norm' (LayerNormalization)" in stdout
    assert "'swap' (permute)" in stdout


def test_check_only_needs_no_output_folder(tmp_path, capsys):
    small_cnn().save(str(tmp_path / "cnn.keras"))
    assert cli.main(["convert", str(tmp_path / "cnn.keras"), "--check-only"]) == 0
    assert "can be converted" in capsys.readouterr().out


def test_convert_without_output_folder_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["convert", str(tmp_path / "cnn.keras")])
    assert refused.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err


def test_plain_convert_refuses_with_every_unsupported_layer_as_check_only_does(tmp_path):
    """The export's refusal and the import side's, in the one line of a plain convert."""
    import keras
    from tf2caffe.api import convert
    from tf2caffe.errors import UnsupportedError
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.LayerNormalization(axis=1, name="layer_norm")(x)  # refused on export
    x = keras.layers.Conv2D(4, 1)(keras.layers.Permute((2, 1, 3), name="swap")(x))  # bvlc: refused on import
    keras.Model(inputs, x).save(str(tmp_path / "two_bad.keras"))
    with pytest.raises(UnsupportedError) as refused:
        convert(str(tmp_path / "two_bad.keras"), str(tmp_path / "out"), backend="native")
    assert "'layer_norm' (LayerNormalization)" in str(refused.value)
    assert "'swap' (permute)" in str(refused.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def two_input_cnn():
    import keras
    keras.utils.set_random_seed(0)
    image, mask = keras.Input((6, 6, 3), name="image"), keras.Input((6, 6, 3), name="mask")
    x = keras.layers.Add()([keras.layers.Conv2D(4, 3)(image), keras.layers.Conv2D(4, 3)(mask)])
    return keras.Model([image, mask], keras.layers.Dense(3)(keras.layers.Flatten()(x)))


def test_reference_input_npz_gives_each_input_its_arrays_and_verifies(tmp_path, capsys):
    import numpy as np
    from tf2caffe.api import convert
    two_input_cnn().save(str(tmp_path / "two.keras"))
    rng = np.random.default_rng(3)
    user = {"image": rng.uniform(0, 1, (2, 6, 6, 3)).astype(np.float32),
            "mask": rng.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)}
    np.savez(str(tmp_path / "x.npz"), **user)
    converted = convert(str(tmp_path / "two.keras"), str(tmp_path / "out"), backend="native",
                        reference_input=str(tmp_path / "x.npz"))
    assert converted.status == 0 and max(converted.runtimes()["OpenCV"].values()) <= 1e-4
    model = intermediate.read(converted.h5)
    for name, value in user.items():
        batch = model.reference_input(name)
        assert batch.shape == (3, 6, 6, 3) and np.array_equal(batch[1:], value)


@pytest.mark.parametrize("arrays, message", [
    ({"image": (1, 6, 6, 3), "masks": (1, 6, 6, 3)},
     "--reference-input has an array 'masks', but the model has no such input (its inputs: image, mask)"),
    ({"image": (1, 6, 6, 3)}, "--reference-input has no array for input(s) 'mask' (it has 'image')"),
    ({"image": (1, 6, 6, 3), "mask": (1, 5, 6, 3)},
     "--reference-input['mask'] has shape [1, 5, 6, 3]; the model's input 'mask' is [None, 6, 6, 3]"),
    ({"image": (1, 6, 6, 3), "mask": (2, 6, 6, 3)},
     "--reference-input has different batch sizes per input: 'image' 1, 'mask' 2"),
    (None, "2 inputs (image, mask): --reference-input X.npy is for a single input; give an .npz"),
])
def test_reference_input_of_wrong_names_or_shapes_is_one_line(tmp_path, capsys, arrays, message):
    import numpy as np
    two_input_cnn().save(str(tmp_path / "two.keras"))
    if arrays is None:
        path = tmp_path / "x.npy"
        np.save(str(path), np.zeros((1, 6, 6, 3), np.float32))
    else:
        path = tmp_path / "x.npz"
        np.savez(str(path), **{name: np.zeros(shape, np.float32) for name, shape in arrays.items()})
    with pytest.raises(SystemExit) as refused:
        cli.main(["export", str(tmp_path / "two.keras"), "-o", str(tmp_path / "out"), "--reference-input", str(path)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_degenerate_reference_advice_works(tmp_path):
    """A net whose output is 0 for every seeded input (a ReLU behind a large negative bias): the
    refusal's two suggestions, --reference-input with inputs that reach it and --no-verify, both
    convert it."""
    import keras
    import numpy as np
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, activation="relu", name="dense")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.ones((4, 3), np.float32) * [[1, 2, 3]], np.full(3, -50, np.float32)])
    model.save(str(tmp_path / "dead.keras"))
    refused = tf2caffe("convert", tmp_path / "dead.keras", "-o", tmp_path / "a", "--backend", "native")
    assert refused.returncode == 2 and "degenerate" in refused.stderr
    assert "--reference-input X.npy or X.npz" in refused.stderr and "--no-verify" in refused.stderr
    np.save(str(tmp_path / "x.npy"), np.full((2, 4), 20, np.float32))
    verified = tf2caffe("convert", tmp_path / "dead.keras", "-o", tmp_path / "b", "--backend", "native",
                        "--reference-input", tmp_path / "x.npy")
    assert verified.returncode == 0, verified.stderr
    assert "max relative error: OpenCV" in verified.stdout
    unverified = tf2caffe("convert", tmp_path / "dead.keras", "-o", tmp_path / "c", "--backend", "native",
                          "--no-verify")
    assert unverified.returncode == 0, unverified.stderr
    assert (tmp_path / "c" / "dead.caffemodel").exists()


@pytest.mark.parametrize("check", [True, False], ids=["check-only", "convert"])
def test_a_lambda_is_refused_with_the_other_unsupported_layers(tmp_path, capsys, check):
    import keras
    inputs = keras.Input((6, 4))
    x = keras.layers.LSTM(3, return_sequences=True, name="recurrent")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2, name="double")(x)
    keras.Model(inputs, x).save(str(tmp_path / "code.keras"))
    with pytest.raises(SystemExit) as refused:
        cli.main(["convert", str(tmp_path / "code.keras")] + (["--check-only"] if check else ["-o", str(tmp_path / "o")]))
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'double' (Lambda)" in err and "'recurrent' (LSTM)" in err, err


@pytest.mark.chroot
@pytest.mark.slow
def test_the_readmes_python_api_example_runs(tmp_path, monkeypatch):
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split("<!-- api-example:start -->")[1].split("<!-- api-example:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    (tmp_path / "architectures").symlink_to(PROJECT_ROOT / "architectures")
    small_cnn().save(str(tmp_path / "model.keras"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["converted"].status == 0
    assert (tmp_path / "build" / "digits" / "digits.caffemodel").exists()
