"""The HDF5 intermediate: round trip and every reader error, as one-line IntermediateErrors.

Runs in both environments (TensorFlow side: h5py 3 / numpy 2; Caffe chroot: h5py 2.10 / numpy
1.19), so files written by one h5py are read by the same code the other side runs.
"""
import h5py
import numpy as np
import pytest

from tf2caffe import intermediate
from tf2caffe.errors import ConversionError
from tf2caffe.intermediate import IntermediateError

import intermediate_models


@pytest.fixture
def written(tmp_path):
    model = intermediate_models.mlp()
    return model, intermediate_models.write(model, tmp_path)


def read_error(path) -> str:
    with pytest.raises(IntermediateError) as caught:
        intermediate.read(path)
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, ConversionError)
    return message


def test_round_trip_keeps_layers_arrays_and_reference(written):
    original, path = written
    model = intermediate.read(path)
    try:
        assert model.name == "mlp"
        assert [layer.name for layer in model.layers] == [layer.name for layer in original.layers]
        assert model.outputs == ["dense_2/softmax"]
        assert model.inputs == ["input"]
        assert model.compared_layers() == ["dense_2", "dense_2/softmax"]
        assert model.attrs["format_version"] == intermediate.FORMAT_VERSION
        assert model.attrs["input_layout"] == "NHWC"
        for before, after in zip(original.layers, model.layers):
            assert (after.type, after.inputs, after.config, after.output_shape, after.caffe_name) == (
                before.type, before.inputs, before.config, before.output_shape, before.caffe_name)
            assert sorted(after.arrays) == sorted(before.arrays)
            for role in before.arrays:
                np.testing.assert_array_equal(after.array(role), before.arrays[role])
                assert after.array(role).dtype == np.float32
        assert model.layer("dense_1").tf_names["kernel"] == "dense_1/kernel:0"
        np.testing.assert_array_equal(model.reference_inputs["input"][()], original.reference_inputs["input"])
        for name, value in original.reference_activations.items():
            np.testing.assert_array_equal(model.activation(name), value)
        np.testing.assert_array_equal(model.labels, original.labels)
        assert model.labels.dtype == np.int64
    finally:
        model.file.close()


def test_write_is_atomic_and_leaves_no_temporary_file(written, tmp_path):
    _, path = written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.h5"]


def test_missing_file(tmp_path):
    message = read_error(str(tmp_path / "absent.h5"))
    assert "absent.h5: no such file" in message


def test_truncated_file(written):
    _, path = written
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    message = read_error(path)
    assert path in message and "truncated or corrupt" in message


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hello\n")
    assert "not a readable HDF5 file" in read_error(str(path))


def test_hdf5_file_that_is_not_ours(tmp_path):
    path = str(tmp_path / "keras_weights.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    assert "not a tf2caffe intermediate" in read_error(path)


@pytest.mark.parametrize("dataset, message", [
    ("layers/dense_1/kernel", "layer 'dense_1': missing array 'kernel'"),
    ("reference/inputs/input", "no reference input for input layer 'input'"),
    ("reference/activations/dense_2", "no reference activation for compared layer 'dense_2'"),
])
def test_missing_dataset(written, dataset, message):
    _, path = written
    with h5py.File(path, "r+") as f:
        del f[dataset]
    assert message in read_error(path)


@pytest.mark.parametrize("group, attribute, value, message", [
    ("/", "format_version", intermediate.FORMAT_VERSION + 1,
     "format version 3 is newer than this tf2caffe reads (2); upgrade tf2caffe"),
    ("layers/dense_1%2Frelu", "type", "gelu_tanh", "layer 'dense_1/relu': unknown layer type 'gelu_tanh'"),
    ("layers/dense_1", "config", "{}", "layer 'dense_1': config lacks 'units'"),
    ("layers/dense_1", "inputs", '["dense_2"]', "layer 'dense_1' takes input 'dense_2', which is not an earlier layer"),
])
def test_bad_attribute(written, group, attribute, value, message):
    _, path = written
    with h5py.File(path, "r+") as f:
        f[group].attrs[attribute] = value
    assert message in read_error(path)


def test_wrong_dtype(written):
    _, path = written
    with h5py.File(path, "r+") as f:
        del f["layers/dense_1/bias"]
        f["layers/dense_1"].create_dataset("bias", data=np.arange(5, dtype=np.int32))
    message = read_error(path)
    assert "layer 'dense_1'" in message and "'bias' is not floating point" in message


def test_array_with_nan_is_refused_when_used(written):
    _, path = written
    with h5py.File(path, "r+") as f:
        f["layers/dense_2/kernel"][0, 0] = np.nan
    model = intermediate.read(path)
    try:
        with pytest.raises(IntermediateError) as caught:
            model.layer("dense_2").array("kernel")
        assert "NaN or Inf" in str(caught.value) and "dense_2/kernel:0" in str(caught.value)
    finally:
        model.file.close()
