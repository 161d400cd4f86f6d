"""Run inside the Caffe chroot by tests/test_native_backend.py: CASES.json -> RESULTS.json.

For each case (a generated prototxt, the native and the pycaffe .caffemodel, and the native
import's report entry): load both weight files in real Caffe, compare every parameter blob byte
for byte, then run TensorFlow's reference input through the native one and measure the compared
layers against TensorFlow's reference.
"""
from __future__ import annotations

import json
import sys

import caffe

from tf2caffe import intermediate
from tf2caffe.caffe import pycaffe_backend, verify
from tf2caffe.caffe.emit import Blob, nchw
from tf2caffe.measure import relative_error


def differing_blobs(native, pycaffe):
    """Every (layer, blob index) whose shape or bytes differ, and parameters only one net has."""
    found = sorted(set(native.params) ^ set(pycaffe.params))
    for name in pycaffe.params:
        if name not in native.params:
            continue
        ours, theirs = native.params[name], pycaffe.params[name]
        if len(ours) != len(theirs):
            found.append("%s: %d blobs vs %d" % (name, len(ours), len(theirs)))
            continue
        for index, (mine, other) in enumerate(zip(ours, theirs)):
            if mine.data.shape != other.data.shape or mine.data.tobytes() != other.data.tobytes():
                found.append("%s[%d]" % (name, index))
    return found


def errors_in_caffe(net, entry):
    model = intermediate.read(entry["file"])
    try:
        feeds = {}
        for tf_name, blob in entry["inputs"].items():
            value = model.reference_input(tf_name)
            feeds[blob] = Blob(blob, nchw(value.shape)).to_caffe(value)
        pycaffe_backend.forward(net, feeds)
        targets = verify.targets_from_json({name: entry["targets"][name] for name in entry["compared"]})
        return {name: relative_error(net.blobs[target.blob.name].data,
                                            verify.in_caffe_layout(target, model.activation(name), entry["file"]))
                for name, target in targets.items()}
    finally:
        model.file.close()


def main(cases_path, results_path):
    caffe.set_mode_cpu()
    with open(cases_path) as f:
        cases = json.load(f)
    results = {}
    for name, case in cases.items():
        native = caffe.Net(case["prototxt"], caffe.TEST, weights=case["native"])
        pycaffe = caffe.Net(case["prototxt"], caffe.TEST, weights=case["pycaffe"])
        results[name] = {
            "blobs": sum(len(blobs) for blobs in pycaffe.params.values()),
            "weights": int(sum(blob.data.size for blobs in pycaffe.params.values() for blob in blobs)),
            "differing": differing_blobs(native, pycaffe),
            "errors": errors_in_caffe(native, case["entry"]),
        }
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
