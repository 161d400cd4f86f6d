"""Property: however an intermediate file is corrupted, reading it where the import stage reads it
(Caffe chroot: h5py 2.10, HDF5 1.10) ends in a clean read or the project's IntermediateError.

Hypothesis makes the corruptions here, on the TensorFlow side (the chroot has no hypothesis):
byte flips, truncations, attribute edits and deletions, dataset deletions and replacements,
1 to 6 of them per file. All files are then read in ONE chroot process, each in a forked child
(tests/read_each_in_a_child.py), so that a crash of HDF5's C library is seen as the child's death
by a signal rather than taking the batch down. `pytest -s` prints the counts and the recipe of
every crash (each one must have become the reader's "crashed the HDF5 library" error).

A read still going after a few seconds is stopped and counted as "slow", not failed: HDF5 1.10
trusts the stored length of a string attribute in the global heap, and a flipped byte there makes
it allocate gigabytes for seconds before the read ends (cleanly or in an IntermediateError).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import List

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import intermediate_models
from tf2caffe import environments

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CRASHED = "crashed the HDF5 library"
CASES = int(os.environ.get("TF2CAFFE_FUZZ_CASES", "1000"))

ATTRIBUTE_KEYS = ["format", "format_version", "model_name", "outputs", "layer_order", "name", "type",
                  "inputs", "config", "output_shape", "caffe_name", "tf_name"]
ATTRIBUTE_VALUES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12),  # what h5py can store
    st.binary(max_size=12).map(np.bytes_),  # a fixed-length string: any bytes
    st.integers(-2 ** 40, 2 ** 40),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.sampled_from(['[]', '{}', '["input"]', '["nowhere"]', '[1, 2]', '{"units": -1}', '"softmax"',
                     'null', '{"function": "softmax", "axis": 7}', '[4, 0]', '[-1, 3]', 'conv2d',
                     'input', 'dense', 'activation', 'tf2caffe-intermediate']),
    st.lists(st.integers(-3, 3), min_size=0, max_size=3).map(lambda items: np.array(items, dtype=np.int64)))
REPLACEMENTS = ["int", "scalar", "empty", "nan", "inf", "reshaped", "text", "group", "huge"]


def objects(path: str) -> List[str]:
    found = []
    with h5py.File(path, "r") as f:
        f.visit(found.append)
    return found


def edit_with_h5py(path: str, operation) -> None:
    kind, name = operation[0], operation[1]
    with h5py.File(path, "r+") as f:
        if name not in f and name != "/":
            return  # deleted by an earlier operation
        if kind == "set_attr":
            f[name].attrs[operation[2]] = operation[3]
        elif kind == "del_attr":
            if operation[2] in f[name].attrs:
                del f[name].attrs[operation[2]]
        elif kind == "delete" and name != "/":
            del f[name]
        elif kind == "replace" and isinstance(f[name], h5py.Dataset):
            replace_dataset(f, name, operation[2])


def replace_dataset(f: h5py.File, name: str, how: str) -> None:
    shape, attrs = f[name].shape, dict(f[name].attrs)
    del f[name]
    if how == "group":
        f.create_group(name)
        return
    if how == "huge":  # declared huge, never written: fill values
        new = f.create_dataset(name, shape=(1024, 1024), dtype=np.float32, chunks=(256, 256))
    else:
        size = int(np.prod(shape))
        value = {"int": lambda: np.arange(size, dtype=np.int32).reshape(shape),
                 "scalar": lambda: np.float32(1.5),
                 "empty": lambda: np.zeros((0,), np.float32),
                 "nan": lambda: np.full(shape, np.nan, np.float32),
                 "inf": lambda: np.full(shape, -np.inf, np.float32),
                 "reshaped": lambda: np.ones(max(1, size - 1), np.float32),
                 "text": lambda: np.bytes_(b"not numbers")}[how]()
        new = f.create_dataset(name, data=value)
    new.attrs.update(attrs)


def corrupt(base: bytes, path: Path, h5_operations, byte_operations) -> None:
    path.write_bytes(base)
    for operation in h5_operations:
        edit_with_h5py(str(path), operation)
    data = bytearray(path.read_bytes())
    for kind, where, value in byte_operations:
        position = int(where * len(data)) % max(1, len(data))
        if kind == "flip" and data:
            data[position] ^= value
        else:
            del data[position:]
    path.write_bytes(bytes(data))


def corruptions(names: List[str]):
    name = st.sampled_from(["/"] + names)
    h5_operation = st.one_of(
        st.tuples(st.just("set_attr"), name, st.sampled_from(ATTRIBUTE_KEYS), ATTRIBUTE_VALUES),
        st.tuples(st.just("del_attr"), name, st.sampled_from(ATTRIBUTE_KEYS)),
        st.tuples(st.just("delete"), name),
        st.tuples(st.just("replace"), name, st.sampled_from(REPLACEMENTS)))
    fraction = st.floats(0, 1, exclude_max=True)
    byte_operation = st.one_of(
        st.tuples(st.just("flip"), fraction, st.integers(1, 255)),
        st.tuples(st.just("truncate"), fraction, st.just(0)))
    return st.tuples(st.lists(h5_operation, max_size=3), st.lists(byte_operation, max_size=3)).filter(
        lambda operations: operations[0] or operations[1])


def read_in_the_chroot(paths: List[Path]) -> dict:
    command = environments.caffe_command(
        ["python3", "tests/read_each_in_a_child.py", *map(str, paths)],
        [str(paths[0].parent)], str(PROJECT_ROOT))
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


@pytest.mark.chroot
def test_corrupt_intermediate_files_end_in_a_clean_read_or_the_projects_error(tmp_path):
    base_path = intermediate_models.write(intermediate_models.mlp(name="model"), tmp_path)
    base = Path(base_path).read_bytes()
    folder = (tmp_path / "corrupt").resolve()
    folder.mkdir()
    recipes = {}

    @settings(max_examples=CASES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(corruptions(objects(base_path)))
    def make(operations):
        path = folder / ("case%04d.h5" % len(recipes))
        corrupt(base, path, *operations)
        recipes[str(path)] = operations

    started = time.monotonic()
    make()
    generated = time.monotonic()
    results = read_in_the_chroot(sorted(Path(path) for path in recipes))
    counts = {}
    for result in results.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    crashes = {path: result["detail"] for path, result in results.items() if CRASHED in result["detail"]}
    print("\n%d corrupt files (made in %.1f s, read in %.1f s): %s; HDF5 crashes turned into errors: %d" % (
        len(results), generated - started, time.monotonic() - generated, counts, len(crashes)))
    for path, result in sorted(results.items()):
        if path in crashes or result["outcome"] == "slow":
            print("  %r -> %s" % (recipes[path], result["detail"]))
    bugs = {path: result for path, result in results.items() if result["outcome"] in ("other", "crash")}
    assert not bugs, "\n".join("%r -> %s: %s" % (recipes[path], result["outcome"], result["detail"])
                               for path, result in sorted(bugs.items()))
    for path, result in results.items():
        if result["outcome"] == "error":
            message = result["detail"]
            assert path in message and "\n" not in message, (recipes[path], message)
