"""Save a converted net without Caffe: the prototxt text and a `.caffemodel` written directly.

For users who only hand the two files to another toolchain; without Caffe, the result is
checked with OpenCV's Caffe reader instead of pycaffe.
"""
from __future__ import annotations

from .caffemodel import atomic_file, write_caffemodel
from .netspec import NetSpec


def save(net: NetSpec, prototxt_path, caffemodel_path) -> None:
    """Write both files, each atomically; nothing is written if the model is too big for Caffe."""
    text = net.to_prototxt()
    # The weights first: they are what can fail (size limit, a bad blob, a full disk), and then
    # no prototxt is left describing weights that were never written.
    write_caffemodel(caffemodel_path, net.name, net.layers)
    with atomic_file(prototxt_path) as out:
        out.write(text.encode("utf-8"))
