"""Run the one-layer nets of tests/one_layer_nets.py in the pycaffe of the python running this:
the bullseye chroot's (Python 3.9, numpy 1.19) or the source-built Caffe's venv. Started by
tests/test_layer_types.py:

    python pycaffe_one_layer.py OUTPUTS.npz CASE...

For each named case whose layer types this Caffe knows, loads the net (prototxt + a .caffemodel
from tf2caffe's own writer), feeds its inputs and saves each compared top to OUTPUTS.npz as
"case|top". Prints one JSON object: {"layer_types": [...], "ran": [cases]}. A case this Caffe
cannot run aborts the process (Caffe's CHECK failures do); the last "case NAME" line on stderr
names it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import numpy as np  # noqa: E402

import caffe  # noqa: E402
from one_layer_nets import build, compared_tops  # noqa: E402
from tf2caffe.caffe.native_backend import save  # noqa: E402


def run(name: str, folder: str):
    case = build(name)
    prototxt, caffemodel = os.path.join(folder, "net.prototxt"), os.path.join(folder, "net.caffemodel")
    save(case.net, prototxt, caffemodel)
    net = caffe.Net(prototxt, caffemodel, caffe.TEST)
    for blob, value in case.inputs.items():
        net.blobs[blob].data[...] = value
    net.forward()
    return compared_tops(case, {top: np.array(net.blobs[top].data) for top in case.expected})


def main(argv) -> None:
    out, names = argv[0], argv[1:]
    caffe.set_mode_cpu()
    known = set(caffe.layer_type_list())
    outputs, ran = {}, []
    with tempfile.TemporaryDirectory(prefix="one-layer-") as folder:
        for name in names:
            if {layer.type for layer in build(name).net.layers} <= known:
                sys.stderr.write("case %s\n" % name)  # names the case if Caffe aborts
                sys.stderr.flush()
                for top, value in run(name, folder).items():
                    outputs["%s|%s" % (name, top)] = value
                ran.append(name)
    np.savez(out, **outputs)
    json.dump({"layer_types": sorted(known), "ran": ran}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
