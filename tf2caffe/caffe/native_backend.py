"""Save a converted net without Caffe: the prototxt text and a `.caffemodel` written directly.

For users who only hand the two files to another toolchain; without Caffe, the result is
checked with OpenCV's Caffe reader instead of pycaffe. `Native` is the import stage's native
backend (see backends.py); `save` writes both files from Python.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..atomic import atomic_file
from ..errors import ConversionError
from ..intermediate import Model
from . import verify
from .backends import PROTOTXT_NEEDS_PYCAFFE, NetDescription, Progress, generated_inputs
from .caffemodel import write_caffemodel
from .deploy import DeployOptions
from .emit import Blob
from .netspec import NetSpec


def save(net: NetSpec, prototxt_path, caffemodel_path) -> None:
    """Write both files, each atomically; nothing is written if the model is too big for Caffe."""
    text = net.to_prototxt()
    # The weights first: they are what can fail (size limit, a bad blob, a full disk), and then
    # no prototxt is left describing weights that were never written.
    write_caffemodel(caffemodel_path, net.name, net.layers)
    with atomic_file(prototxt_path) as out:
        out.write(text.encode("utf-8"))


class Native:
    """The generated prototxt, the .caffemodel streamed blob by blob, verified in OpenCV 4.x."""

    name = "native"
    verifier = "OpenCV"

    def describe(self, *, model: Model, net_spec: NetSpec, blobs: Dict[str, Blob], h5_path: str,
                 prototxt: Optional[str], prototxt_out: str) -> NetDescription:
        if prototxt:
            raise ConversionError(PROTOTXT_NEEDS_PYCAFFE % prototxt)
        return NetDescription(net_spec.to_prototxt(),
                              [(layer.name, list(layer.tops)) for layer in net_spec.layers],
                              [layer.type for layer in net_spec.layers], generated_inputs(model, blobs),
                              verify.generated_targets)

    def write(self, *, net_spec: NetSpec, prototxt_file: str, caffemodel_file: str, h5_path: str,
              prototxt_shown: str, caffemodel_shown: str, progress: Progress) -> None:
        progress.stage("writing weights")
        write_caffemodel(caffemodel_file, net_spec.name, net_spec.layers, progress.each,
                         shown_path=caffemodel_shown)

    def run(self, *, written: None, prototxt: str, caffemodel: str, feeds: Dict[str, np.ndarray],
            targets: Dict[str, verify.Target]) -> Dict[str, np.ndarray]:
        # The files as written, read back by an independent implementation of Caffe.
        from .. import opencv_check
        try:
            net = opencv_check.load(prototxt, caffemodel)
        except ImportError:
            raise ConversionError("%s: the native backend verifies with OpenCV 4.x "
                                  "(opencv-python-headless<5), which is not installed: pip install 'tf2caffe[opencv]', "
                                  "or pass --no-verify to skip verification" % caffemodel) from None
        return opencv_check.run(net, feeds, targets, prototxt)

    def deployed(self, *, model: Model, inputs: Dict[str, str], outputs: Dict[str, verify.Target], prototxt: str,
                 caffemodel: str, deployment: DeployOptions) -> Tuple[Dict[str, Dict[str, float]], List[List[str]]]:
        from .. import opencv_check
        return opencv_check.deployed(model, inputs, outputs, prototxt, caffemodel, deployment)
