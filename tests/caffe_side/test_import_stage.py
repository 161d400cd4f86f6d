"""The import stage in pycaffe (inside the Caffe chroot): pipeline, hand-written prototxts, errors.

Each error must be one line naming the file/layer, exit non-zero, leave no .caffemodel (nor any
temporary file) and not clobber an earlier output.
"""
import json

import h5py
import numpy as np
import pytest

from tf2caffe import import_stage

import intermediate_models
from intermediate_models import MLP_PROTOTXT


def run(*argv):
    try:
        status = import_stage.main([str(arg) for arg in argv])
    except SystemExit as exit:
        status = exit.code
    return status


@pytest.fixture
def mlp_file(tmp_path):
    return intermediate_models.write(intermediate_models.mlp(), tmp_path)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def one_error_line(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tf2caffe: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def test_generated_net_converts_and_verifies(mlp_file, out, capsys):
    report = out / "report.json"
    assert run(mlp_file, "-o", out, "--report", report, "--per-layer") == 0
    assert sorted(p.name for p in out.iterdir()) == ["mlp.caffemodel", "mlp.prototxt", "report.json"]
    entry = json.loads(report.read_text())["results"][mlp_file]
    assert entry["error"] is None and entry["verified"]
    assert entry["layers"] == {"tensorflow": 5, "caffe": 5,
                               "caffe_types": ["Input", "InnerProduct", "ReLU", "InnerProduct", "Softmax"]}
    assert sorted(entry["compared"]) == ["dense_2", "dense_2/softmax"]
    assert all(errors["max_rel"] < 1e-6 for errors in entry["compared"].values())
    assert sorted(entry["per_layer"]) == ["dense_1", "dense_1/relu", "dense_2", "dense_2/softmax"]
    assert entry["first_over_layer_tolerance"] is None
    assert entry["accuracy"]["agreement"] == 1.0
    assert entry["accuracy"]["caffe"] == entry["accuracy"]["tensorflow"]
    assert "verified: max relative error" in capsys.readouterr().out


def test_handwritten_prototxt_gets_the_input_shape_and_in_place_layers_are_mapped(mlp_file, out, tmp_path):
    prototxt = tmp_path / "mlp.prototxt"
    prototxt.write_text(MLP_PROTOTXT)
    report = out / "report.json"
    assert run(mlp_file, "-o", out, "--prototxt", prototxt, "--report", report, "--per-layer") == 0
    written = (out / "mlp.prototxt").read_text()
    assert "dim: 1\n      dim: 6" in written  # batch 1, features from the HDF5 file (not 99)
    entry = json.loads(report.read_text())["results"][mlp_file]
    # fc1's blob is overwritten in place by relu1: only the ReLU's output can be compared.
    assert sorted(entry["per_layer"]) == ["dense_1/relu", "dense_2", "dense_2/softmax"]
    assert entry["targets"]["dense_1/relu"]["blob"] == "fc1"
    assert max(entry["per_layer"].values()) < 1e-6


def test_legacy_input_dim_is_patched(mlp_file, out, tmp_path):
    prototxt = tmp_path / "legacy.prototxt"
    body = MLP_PROTOTXT.split("\n", 2)[2].replace('bottom: "data"', 'bottom: "data_in"')
    prototxt.write_text('name: "mlp"\ninput: "data_in"\ninput_dim: 1\ninput_dim: 99\ninput_dim: 1\ninput_dim: 1\n'
                        + body)
    assert run(mlp_file, "-o", out, "--prototxt", prototxt) == 0
    assert "input_dim: 1\ninput_dim: 6\n" in (out / "mlp.prototxt").read_text()


def test_missing_hdf5_file(out, tmp_path, capsys):
    assert run(tmp_path / "absent.h5", "-o", out) == 2
    one_error_line(capsys, "absent.h5: no such file")
    assert list(out.iterdir()) == []


def test_truncated_hdf5_file(mlp_file, out, capsys):
    data = open(mlp_file, "rb").read()
    with open(mlp_file, "wb") as f:
        f.write(data[:len(data) // 3])
    assert run(mlp_file, "-o", out) == 2
    one_error_line(capsys, mlp_file, "truncated or corrupt")
    assert list(out.iterdir()) == []


def test_missing_prototxt(mlp_file, out, tmp_path, capsys):
    assert run(mlp_file, "-o", out, "--prototxt", tmp_path / "absent.prototxt") == 2
    one_error_line(capsys, "absent.prototxt: no such prototxt file")


def handwritten_error(mlp_file, out, tmp_path, capsys, text, *fragments):
    prototxt = tmp_path / "hand.prototxt"
    prototxt.write_text(text)
    out.mkdir()
    (out / "mlp.caffemodel").write_bytes(b"earlier output")
    assert run(mlp_file, "-o", out, "--prototxt", prototxt) == 2
    line = one_error_line(capsys, *fragments)
    assert sorted(p.name for p in out.iterdir()) == ["mlp.caffemodel"]
    assert (out / "mlp.caffemodel").read_bytes() == b"earlier output"
    return line


def test_layer_of_the_hdf5_file_missing_from_the_prototxt(mlp_file, out, tmp_path, capsys):
    text = MLP_PROTOTXT.replace('name: "fc2"', 'name: "classifier"')
    handwritten_error(mlp_file, out, tmp_path, capsys, text, "hand.prototxt", "fc2")


def test_weight_shape_that_does_not_match_the_prototxt(mlp_file, out, tmp_path, capsys):
    text = MLP_PROTOTXT.replace("num_output: 5", "num_output: 7")
    handwritten_error(mlp_file, out, tmp_path, capsys, text,
                      "fc1: weight shape (5, 6) in the HDF5 file vs (7, 6) in hand.prototxt")


def test_blob_count_that_does_not_match_the_prototxt(mlp_file, out, tmp_path, capsys):
    text = MLP_PROTOTXT.replace("num_output: 3 }", "num_output: 3 bias_term: false }")
    handwritten_error(mlp_file, out, tmp_path, capsys, text,
                      "fc2", "2 weight blob(s) in the HDF5 file vs 1 in hand.prototxt")


def test_prototxt_layer_that_no_hdf5_layer_fills(mlp_file, out, tmp_path, capsys):
    text = MLP_PROTOTXT + ('layer { name: "aux" type: "InnerProduct" bottom: "fc1" top: "aux" '
                           'inner_product_param { num_output: 2 } }\n')
    handwritten_error(mlp_file, out, tmp_path, capsys, text, "'aux'", "no layer of", "fills")


def test_prototxt_that_does_not_parse(mlp_file, out, tmp_path, capsys):
    handwritten_error(mlp_file, out, tmp_path, capsys, MLP_PROTOTXT.replace("top: \"fc2\"", "top: fc2 {"),
                      "hand.prototxt", "not a valid Caffe prototxt")


def test_unknown_layer_type(mlp_file, out, tmp_path, capsys):
    handwritten_error(mlp_file, out, tmp_path, capsys, MLP_PROTOTXT.replace('"ReLU"', '"Mish"'),
                      "hand.prototxt", "layer 'relu1'", "'Mish'")


def test_bottom_that_nothing_produces(mlp_file, out, tmp_path, capsys):
    handwritten_error(mlp_file, out, tmp_path, capsys, MLP_PROTOTXT.replace('bottom: "fc2"', 'bottom: "fc3"'),
                      "hand.prototxt", "layer 'prob'", "'fc3'")


def test_degenerate_reference_is_refused(mlp_file, out, capsys):
    with h5py.File(mlp_file, "r+") as f:
        f["reference/activations/dense_2"][...] = 0.5
    assert run(mlp_file, "-o", out) == 2
    one_error_line(capsys, mlp_file, "'dense_2'", "degenerate")
    assert list(out.iterdir()) == []


def test_verification_failure_exits_1_and_keeps_the_files(mlp_file, out, capsys):
    with h5py.File(mlp_file, "r+") as f:
        logits = f["reference/activations/dense_2"]
        logits[...] = logits[()] * 1.01
    assert run(mlp_file, "-o", out, "--per-layer") == 1
    captured = capsys.readouterr()
    assert "verification failed" in captured.err and "'dense_2'" in captured.err
    assert "first layer over 1e-05: dense_2" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["mlp.caffemodel", "mlp.prototxt"]


def test_a_batch_goes_on_after_a_bad_file(mlp_file, out, tmp_path, capsys):
    second = intermediate_models.write(intermediate_models.mlp("second", seed=1), tmp_path)
    report = out / "report.json"
    assert run(tmp_path / "absent.h5", mlp_file, second, "-o", out, "--report", report) == 2
    results = json.loads(report.read_text())["results"]
    assert "no such file" in results[str(tmp_path / "absent.h5")]["error"]
    assert results[mlp_file]["verified"] and results[second]["verified"]
    assert sorted(p.name for p in out.iterdir()) == [
        "mlp.caffemodel", "mlp.prototxt", "report.json", "second.caffemodel", "second.prototxt"]
    assert capsys.readouterr().err.count("tf2caffe: error:") == 1


def test_reference_batch_differs_from_the_net_batch(tmp_path, out):
    model = intermediate_models.mlp(batch=3)
    model.layers[0].output_shape = [1, 6]
    path = intermediate_models.write(model, tmp_path)
    assert run(path, "-o", out) == 0
    assert "dim: 1\n      dim: 6" in (out / "mlp.prototxt").read_text()


def test_caffemodel_holds_the_weights_in_caffe_layout(mlp_file, out):
    import caffe
    assert run(mlp_file, "-o", out) == 0
    net = caffe.Net(str(out / "mlp.prototxt"), caffe.TEST, weights=str(out / "mlp.caffemodel"))
    model = intermediate_models.mlp()
    np.testing.assert_array_equal(net.params["fc1"][0].data, model.layer("dense_1").arrays["kernel"].T)
    np.testing.assert_array_equal(net.params["fc2"][1].data, model.layer("dense_2").arrays["bias"])


def test_malformed_config_value_is_one_line_naming_the_layer(mlp_file, out, capsys):
    with h5py.File(mlp_file, "r+") as f:
        f["layers/dense_2%2Fsoftmax"].attrs["config"] = json.dumps({"function": "softmax", "axis": "x"})
    assert run(mlp_file, "-o", out) == 2
    one_error_line(capsys, "dense_2/softmax", "malformed config")
    assert not out.exists() or not list(out.glob("*.caffemodel"))


def test_no_verify_converts_a_degenerate_reference(tmp_path, out):
    model = intermediate_models.mlp()
    constant = np.ones_like(model.reference_activations["dense_2"])
    model.reference_activations["dense_2"] = constant
    model.reference_activations["dense_2/softmax"] = constant / 3
    path = intermediate_models.write(model, tmp_path)
    assert run(path, "-o", out) == 2  # refused when verifying
    assert run(path, "-o", out, "--no-verify") == 0
    assert (out / "mlp.caffemodel").exists()
